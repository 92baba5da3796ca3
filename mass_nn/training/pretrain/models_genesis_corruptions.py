"""Models Genesis corruptions (Zhou et al.): what the network must undo to restore the original volume.

Per sample, on intensities in [0, 1]: a random flip (applied to the target as well), local pixel shuffling,
a non-linear intensity map (a random monotone cubic Bezier curve, sometimes decreasing) and in- or out-painting
with uniform noise. Each corruption takes one sample (C, z, y, x) and an explicit np.random.Generator, returns a
new array and keeps the shape and the range [0, 1].

`GenesisCorruptionTransform` applies them in the loader's worker (after the spatial augmentation), drawing its
generator from the global np.random state that the loader seeds per batch, so batch i stays f(seed, i). The
preprocessed intensities are z-scored, so each patch is mapped to [0, 1] by min-max over its valid voxels, then
corrupted, and input and target are mapped back with the same two numbers: the network sees intensities on the
scale downstream training uses, and the loss is in those units.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from batchgenerators.transforms.abstract_transforms import AbstractTransform

from mass_nn import schema

REFERENCE_SHUFFLE_BLOCKS = 10_000  # the original's blocks per 160^3 patch (nnssl's patch)
REFERENCE_PATCH_VOXELS = 160 ** 3
BEZIER_SAMPLES = 1000
MIN_INTENSITY_SPAN = 1e-6  # a constant patch cannot be mapped to [0, 1]; it is only flipped


@dataclass
class GenesisCorruptionSettings:
    """Probabilities and sizes of the corruptions (reference values). `num_shuffle_blocks` is per sample."""

    num_shuffle_blocks: int = REFERENCE_SHUFFLE_BLOCKS
    flip_probability: float = 0.4  # each of up to three flips is applied while a draw stays below this
    max_flips: int = 3
    shuffle_probability: float = 0.5
    nonlinear_probability: float = 0.9
    paint_probability: float = 0.9
    inpaint_probability: float = 0.2  # of a painting: in-painting, else out-painting
    max_paint_boxes: int = 5
    extra_box_probability: float = 0.95  # after the first box, each further box while a draw stays below this

    def to_dict(self) -> dict:
        return schema.to_dict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "GenesisCorruptionSettings":
        return schema.from_dict(cls, data)


def derived_shuffle_blocks(patch_size_zyx) -> int:
    """The reference's block density (10,000 blocks per 160^3 voxels) for a patch, at least one block."""
    return max(1, round(REFERENCE_SHUFFLE_BLOCKS * int(np.prod(patch_size_zyx)) / REFERENCE_PATCH_VOXELS))


def random_flip(volumes: list[np.ndarray], settings: GenesisCorruptionSettings,
                rng: np.random.Generator) -> list[np.ndarray]:
    """The same flips of every (C, z, y, x) array: while a draw stays below flip_probability (at most max_flips
    times) one random spatial axis is flipped."""
    for _ in range(settings.max_flips):
        if rng.random() >= settings.flip_probability:
            break
        axis = 1 + int(rng.integers(0, 3))
        volumes = [np.flip(volume, axis=axis) for volume in volumes]
    return [np.ascontiguousarray(volume) for volume in volumes]


def local_pixel_shuffle(volume: np.ndarray, num_blocks: int, rng: np.random.Generator) -> np.ndarray:
    """`num_blocks` random boxes (each side 1 .. a tenth of the volume's) whose voxels are permuted inside the box
    (the same permutation for every channel). Boxes read the input; where they overlap, the later box wins."""
    shape = np.asarray(volume.shape[1:])
    largest = np.maximum(shape // 10, 1)
    sizes = rng.integers(1, largest + 1, size=(num_blocks, 3))
    starts = rng.integers(0, shape - sizes + 1)
    out = volume.copy()
    channels = volume.shape[0]
    # one loop step per box: a fully vectorised version (all boxes' voxel indices, one segmented argsort) measured
    # 4x slower at the reference's 10,000 boxes in 160^3, where sorting millions of indices and gathering them
    # from all over the volume costs more than the loop; geometry is drawn for all boxes at once
    for (z, y, x), (depth, height, width) in zip(starts, sizes):
        window = (slice(None), slice(z, z + depth), slice(y, y + height), slice(x, x + width))
        block = volume[window].reshape(channels, -1)
        out[window] = block[:, rng.permutation(block.shape[1])].reshape(channels, depth, height, width)
    return out


def bezier_intensity_map(volume: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Intensities mapped through a random cubic Bezier curve from (0, 0) to (1, 1) with two random control points
    in the unit square; the curve's x and y samples are each sorted to make it a monotone map, and with
    probability 0.5 the map is reversed (decreasing: 0 -> 1, 1 -> 0)."""
    controls = np.array([[0.0, 0.0], rng.random(2), rng.random(2), [1.0, 1.0]])
    t = np.linspace(0.0, 1.0, BEZIER_SAMPLES)[:, None]
    bernstein = np.concatenate([(1 - t) ** 3, 3 * t * (1 - t) ** 2, 3 * t ** 2 * (1 - t), t ** 3], axis=1)
    curve = bernstein @ controls
    xs, ys = np.sort(curve[:, 0]), np.sort(curve[:, 1])
    if rng.random() < 0.5:
        ys = ys[::-1]
    return np.interp(volume, xs, ys).astype(volume.dtype)


def _random_boxes(shape: np.ndarray, low_fraction: float, high_fraction: float, settings: GenesisCorruptionSettings,
                  rng: np.random.Generator) -> list[tuple[slice, ...]]:
    """One box, then more while a draw stays below extra_box_probability (max_paint_boxes in all); each side
    drawn between the two fractions of the volume's side."""
    boxes = []
    while not boxes or (len(boxes) < settings.max_paint_boxes and rng.random() < settings.extra_box_probability):
        low = np.maximum((shape * low_fraction).astype(int), 1)
        sizes = rng.integers(low, np.maximum((shape * high_fraction).astype(int), low) + 1)
        starts = rng.integers(0, shape - sizes + 1)
        boxes.append(tuple(slice(int(a), int(a + n)) for a, n in zip(starts, sizes)))
    return boxes


def inpaint(volume: np.ndarray, settings: GenesisCorruptionSettings, rng: np.random.Generator) -> np.ndarray:
    """Boxes of 1/6 to 1/3 of each side filled with U(0, 1) noise."""
    out = volume.copy()
    for box in _random_boxes(np.asarray(volume.shape[1:]), 1 / 6, 1 / 3, settings, rng):
        region = out[(slice(None), *box)]
        region[...] = rng.random(region.shape, dtype=np.float32)
    return out


def outpaint(volume: np.ndarray, settings: GenesisCorruptionSettings, rng: np.random.Generator) -> np.ndarray:
    """U(0, 1) noise everywhere except boxes of about 3/7 to 4/7 of each side, which keep the input."""
    out = rng.random(volume.shape, dtype=np.float32).astype(volume.dtype, copy=False)
    for box in _random_boxes(np.asarray(volume.shape[1:]), 3 / 7, 4 / 7, settings, rng):
        out[(slice(None), *box)] = volume[(slice(None), *box)]
    return out


def corrupt(volume: np.ndarray, settings: GenesisCorruptionSettings, rng: np.random.Generator) -> np.ndarray:
    """The corruption pipeline (no flip) of one sample (C, z, y, x) in [0, 1]: shuffle, Bezier map, painting,
    each with its probability."""
    if rng.random() < settings.shuffle_probability:
        volume = local_pixel_shuffle(volume, settings.num_shuffle_blocks, rng)
    if rng.random() < settings.nonlinear_probability:
        volume = bezier_intensity_map(volume, rng)
    if rng.random() < settings.paint_probability:
        painter = inpaint if rng.random() < settings.inpaint_probability else outpaint
        volume = painter(volume, settings, rng)
    return volume


def unit_range(image: np.ndarray, valid: np.ndarray) -> tuple[float, float] | None:
    """(low, span) of the min-max map of `image` over its valid voxels to [0, 1]; None for a constant patch."""
    inside = image[:, valid[0] > 0] if valid.any() else image.reshape(image.shape[0], -1)
    low, high = float(inside.min()), float(inside.max())
    return None if high - low < MIN_INTENSITY_SPAN else (low, high - low)


class GenesisCorruptionTransform(AbstractTransform):
    """Per sample: shared flip of image and valid mask, then `target` = the flipped image and `image` = its
    corruption (both in the input's intensity units). Reads `image` (B, C, *patch), `valid` (B, 1, *patch)."""

    def __init__(self, settings: GenesisCorruptionSettings):
        self.settings = settings

    def __call__(self, **data_dict):
        rng = np.random.default_rng(np.random.randint(0, 2 ** 31 - 1))  # seeded per batch by the loader
        images, targets, valids = [], [], []
        for image, valid in zip(data_dict["image"], data_dict["valid"]):
            image, valid = random_flip([image.astype(np.float32), valid], self.settings, rng)
            targets.append(image)
            valids.append(valid)
            mapping = unit_range(image, valid)
            if mapping is None:
                images.append(image.copy())
                continue
            low, span = mapping
            unit = np.clip((image - low) / span, 0.0, 1.0)
            images.append((corrupt(unit, self.settings, rng) * span + low).astype(np.float32))
        data_dict.update(image=np.stack(images), target=np.stack(targets), valid=np.stack(valids))
        return data_dict
