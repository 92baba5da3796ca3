"""How the phantom's tissues look: CT in Hounsfield units or T2-weighted-like MR in arbitrary units.

Image formation, in order: per-tissue mean plus texture (fine grain, blotches, fibres along z), partial-volume
blur (Gaussian, wider along thick slices), then noise (Gaussian for CT; for MR a smooth multiplicative bias
field, Rician noise and an arbitrary global scale). Every per-case choice comes from the given generator.
"""
from __future__ import annotations

import numpy as np
from scipy import ndimage

from dataset_conversion.phantom_shapes import Coords, smooth_random_field
from dataset_conversion.phantom_tissues import MAX_LESIONS, Tissue

CT_MIN_HU, CT_MAX_HU = -1024.0, 3071.0

# Per tissue: (native HU, enhancement HU, fine, blotchy, fibre texture amplitudes in HU). The mean is native
# + enhancement x the case's contrast phase (0 = no contrast, 1 = strong portal-venous enhancement).
_CT_NATIVE_ENHANCEMENT_TEXTURE = {
    Tissue.AIR: (-1000, 0, 0, 0, 0), Tissue.FAT_SUBCUTANEOUS: (-105, 0, 3, 6, 0),
    Tissue.MUSCLE: (48, 10, 4, 0, 12), Tissue.FAT_VISCERAL: (-92, 0, 4, 18, 0),
    Tissue.BOWEL_WALL: (35, 40, 6, 10, 0), Tissue.BOWEL_CONTENT: (20, 0, 10, 35, 0),
    Tissue.BOWEL_GAS: (-950, 0, 10, 30, 0), Tissue.LIVER: (55, 60, 7, 5, 0),
    Tissue.GALLBLADDER: (10, 0, 3, 2, 0), Tissue.VEIN: (40, 110, 5, 4, 0),
    Tissue.SPLEEN: (50, 70, 8, 8, 0), Tissue.KIDNEY_CORTEX: (35, 170, 8, 4, 0),
    Tissue.KIDNEY_MEDULLA: (33, 90, 8, 8, 0), Tissue.KIDNEY_SINUS: (-70, 0, 6, 25, 0),
    Tissue.STOMACH_WALL: (45, 60, 6, 6, 0), Tissue.STOMACH_CONTENT: (15, 0, 6, 25, 0),
    Tissue.STOMACH_GAS: (-980, 0, 5, 5, 0), Tissue.BLADDER_WALL: (40, 20, 6, 4, 0),
    Tissue.URINE: (8, 0, 3, 2, 0), Tissue.ARTERY: (120, 200, 6, 4, 0),
    Tissue.PORTAL_VESSEL: (60, 140, 6, 4, 0), Tissue.BONE_CORTEX: (900, 0, 60, 30, 0),
    Tissue.BONE_MARROW: (250, 0, 40, 30, 0), Tissue.DISC: (85, 0, 8, 4, 0), Tissue.CSF: (15, 0, 4, 2, 0),
}

# Per tissue: (mean, fine, blotchy, fibre texture amplitudes), arbitrary units. T2-weighted-like contrast:
# fluid and fat bright, flowing blood and cortical bone dark, spleen brighter than liver.
_MR_MEAN_TEXTURE = {
    Tissue.AIR: (0, 0, 0, 0), Tissue.FAT_SUBCUTANEOUS: (800, 15, 40, 0), Tissue.MUSCLE: (130, 8, 6, 15),
    Tissue.FAT_VISCERAL: (700, 15, 80, 0), Tissue.BOWEL_WALL: (250, 12, 30, 0),
    Tissue.BOWEL_CONTENT: (550, 30, 150, 0), Tissue.BOWEL_GAS: (10, 2, 5, 0), Tissue.LIVER: (220, 12, 8, 0),
    Tissue.GALLBLADDER: (1100, 15, 10, 0), Tissue.VEIN: (60, 8, 5, 0), Tissue.SPLEEN: (420, 15, 15, 0),
    Tissue.KIDNEY_CORTEX: (480, 15, 10, 0), Tissue.KIDNEY_MEDULLA: (620, 20, 15, 0),
    Tissue.KIDNEY_SINUS: (700, 15, 60, 0), Tissue.STOMACH_WALL: (200, 10, 10, 0),
    Tissue.STOMACH_CONTENT: (950, 30, 100, 0), Tissue.STOMACH_GAS: (10, 2, 2, 0),
    Tissue.BLADDER_WALL: (180, 10, 8, 0), Tissue.URINE: (1200, 20, 10, 0), Tissue.ARTERY: (40, 6, 4, 0),
    Tissue.PORTAL_VESSEL: (70, 8, 5, 0), Tissue.BONE_CORTEX: (20, 5, 3, 0), Tissue.BONE_MARROW: (450, 30, 40, 0),
    Tissue.DISC: (550, 20, 15, 0), Tissue.CSF: (1150, 20, 10, 0),
}

_LESION_TISSUES = [Tissue(Tissue.LESION_0 + i) for i in range(MAX_LESIONS)]


def _lookup_tables(looks: dict[Tissue, tuple[float, ...]]) -> np.ndarray:
    """(4, number of tissues) float32 table of mean, fine, blotchy and fibre amplitude."""
    table = np.zeros((4, len(Tissue)), np.float32)
    for tissue, values in looks.items():
        table[:, int(tissue)] = values
    return table


def _ct_looks(rng: np.random.Generator) -> np.ndarray:
    """The case's CT tissue table: contrast phase, per-tissue offsets, bone density and lesion contrasts."""
    phase = rng.uniform(0.35, 1.0)
    looks = {}
    for tissue, (native, enhancement, fine, blotchy, fibre) in _CT_NATIVE_ENHANCEMENT_TEXTURE.items():
        offset = 0.0 if tissue == Tissue.AIR else rng.normal(0.0, 6.0)
        looks[tissue] = (native + enhancement * phase + offset, fine, blotchy, fibre)
    # The spleen is mottled early after contrast injection; the mottling fades towards the portal phase.
    mean, fine, _, fibre = looks[Tissue.SPLEEN]
    looks[Tissue.SPLEEN] = (mean, fine, 25.0 * (1.0 - phase), fibre)
    bone_density = rng.uniform(0.75, 1.25)
    for tissue in (Tissue.BONE_CORTEX, Tissue.BONE_MARROW):
        mean, *texture = looks[tissue]
        looks[tissue] = (mean * bone_density, *texture)
    liver_hu = looks[Tissue.LIVER][0]
    for tissue in _LESION_TISSUES:
        hypodense = rng.uniform() < 0.6
        contrast_hu = -rng.uniform(25.0, 70.0) if hypodense else rng.uniform(30.0, 70.0)
        looks[tissue] = (liver_hu + contrast_hu, 10.0, 12.0, 0.0)
    return _lookup_tables(looks)


def _mr_looks(rng: np.random.Generator) -> np.ndarray:
    """The case's MR tissue table: every tissue's signal scaled by its own log-normal factor; lesions are
    brighter than liver (fluid-like lesions very much so)."""
    looks = {t: (mean * rng.lognormal(0.0, 0.08),) + tuple(texture)
             for t, (mean, *texture) in _MR_MEAN_TEXTURE.items()}
    liver = looks[Tissue.LIVER][0]
    for tissue in _LESION_TISSUES:
        fluid_like = rng.uniform() < 0.6
        factor = rng.uniform(3.0, 4.5) if fluid_like else rng.uniform(1.3, 1.9)
        looks[tissue] = (liver * factor, 20.0, 20.0, 0.0)
    return _lookup_tables(looks)


def _unit_std(field: np.ndarray) -> np.ndarray:
    return field / max(float(field.std()), 1e-6)


def _textured_image(tissue: np.ndarray, table: np.ndarray, axes_mm: Coords, spacing_zyx_mm,
                    rng: np.random.Generator) -> np.ndarray:
    """Noise-free image: tissue mean plus each texture field weighted by the tissue's amplitude."""
    spacing = np.asarray(spacing_zyx_mm)
    fine = _unit_std(ndimage.gaussian_filter(rng.standard_normal(tissue.shape, np.float32), 1.0 / spacing))
    blotchy = smooth_random_field(axes_mm, rng, 12.0)
    fibre_sigma_mm = np.array([4.0, 0.7, 0.7])
    fibre = _unit_std(ndimage.gaussian_filter(rng.standard_normal(tissue.shape, np.float32),
                                              fibre_sigma_mm / spacing))
    image = table[0][tissue]
    for amplitudes, field in zip(table[1:], (fine, blotchy, fibre)):
        image += amplitudes[tissue] * field
    return image


def _partial_volume_blur(image: np.ndarray, spacing_zyx_mm, rng: np.random.Generator) -> np.ndarray:
    """Gaussian blur of the point-spread function; along z at least a third of the slice thickness."""
    spacing = np.asarray(spacing_zyx_mm)
    sigma_mm = np.full(3, rng.uniform(0.5, 1.0))
    sigma_mm[0] = max(sigma_mm[0], spacing[0] / 3)
    return ndimage.gaussian_filter(image, sigma_mm / spacing)


def render_ct(tissue: np.ndarray, axes_mm: Coords, spacing_zyx_mm, rng: np.random.Generator) -> np.ndarray:
    """CT image in HU: whole numbers (as stored by scanners) in [-1024, 3071], float32."""
    table = _ct_looks(rng)
    image = _partial_volume_blur(_textured_image(tissue, table, axes_mm, spacing_zyx_mm, rng), spacing_zyx_mm, rng)
    noise_hu = rng.uniform(6.0, 18.0)
    # Reconstruction kernels correlate CT noise in-plane; a slight blur mimics that.
    noise = _unit_std(ndimage.gaussian_filter(rng.standard_normal(tissue.shape, np.float32), (0.0, 0.6, 0.6)))
    image += noise_hu * noise
    return np.clip(np.rint(image), CT_MIN_HU, CT_MAX_HU).astype(np.float32)


def render_mr(tissue: np.ndarray, axes_mm: Coords, spacing_zyx_mm, rng: np.random.Generator) -> np.ndarray:
    """MR image in arbitrary non-negative units: bias field, Rician noise, random global scale; float32."""
    table = _mr_looks(rng)
    image = _partial_volume_blur(_textured_image(tissue, table, axes_mm, spacing_zyx_mm, rng), spacing_zyx_mm, rng)
    np.maximum(image, 0.0, out=image)
    image *= np.exp(rng.uniform(0.15, 0.35) * smooth_random_field(axes_mm, rng, 220.0))
    noise_sigma = rng.uniform(5.0, 15.0)
    real = image + noise_sigma * rng.standard_normal(image.shape, np.float32)
    imaginary = noise_sigma * rng.standard_normal(image.shape, np.float32)
    magnitude = np.sqrt(real * real + imaginary * imaginary)
    return (magnitude * rng.uniform(0.4, 2.5)).astype(np.float32)
