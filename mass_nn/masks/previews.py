"""Preview PNG per case: slices along the mask axis with coloured mask overlays (seed slices when the generator
has them, as in the MASS supplement's Figure 3), and the distribution of mask sizes."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from mass_nn.io.figures import pyplot, save_figure
from mass_nn.masks.mask_bank import MaskBank

MAX_OVERLAYS_PER_SLICE = 80
SLICES_SHOWN = 3


def preview_slices(bank: MaskBank, axis: int, interval: int) -> list[int]:
    """Up to SLICES_SHOWN slice indices: the most used seed slices, else evenly spaced seed positions."""
    seeds = [e.seed_slice for e in bank.entries if e.seed_slice is not None and e.axis == axis]
    if seeds:
        values, counts = np.unique(seeds, return_counts=True)
        return sorted(int(v) for v in values[np.argsort(-counts)][:SLICES_SHOWN])
    length = bank.shape[axis]
    return sorted({int(round(v)) for v in np.linspace(0, length - 1, SLICES_SHOWN + 2)[1:-1]})


def slice_overlay(bank: MaskBank, axis: int, index: int, rgb: np.ndarray, seed: int = 0) -> np.ndarray:
    """`rgb` (h, w, 3) float in [0, 1] with the masks crossing slice `index` painted in random colours,
    largest first so small masks stay visible."""
    rng = np.random.default_rng(seed)
    crossing = [i for i, e in enumerate(bank.entries) if e.box[axis][0] <= index < e.box[axis][1]]
    crossing = sorted(crossing, key=lambda i: -bank.entries[i].voxels)[:MAX_OVERLAYS_PER_SLICE]
    out = rgb.copy()
    for i in crossing:
        box, crop = bank.read_crop(i)
        local = np.take(crop, index - box[axis][0], axis=axis)
        region = out[tuple(slice(a, b) for k, (a, b) in enumerate(box) if k != axis)]
        colour = rng.uniform(0.2, 1.0, size=3)
        region[local] = 0.55 * region[local] + 0.45 * colour
    return out


def write_preview(bank: MaskBank, windowed: np.ndarray, axis: int, interval: int, path: Path) -> None:
    """Write the preview PNG of one case; `windowed` is the uint8 (3, z, y, x) image the masks were made from."""
    plt = pyplot()

    slices = preview_slices(bank, axis, interval)
    fig, axes = plt.subplots(1, len(slices) + 1, figsize=(4 * (len(slices) + 1), 4.2))
    for ax, index in zip(axes, slices):
        rgb = np.moveaxis(np.take(windowed, index, axis=axis + 1), 0, -1).astype(np.float32) / 255.0
        ax.imshow(slice_overlay(bank, axis, index, rgb, seed=index))
        ax.set_title(f"axis {axis}, slice {index}")
        ax.axis("off")
    volumes = np.array([e.voxels for e in bank.entries], dtype=float)
    hist_ax = axes[-1]
    if volumes.size:
        hist_ax.hist(np.log10(volumes), bins=30, color="tab:blue")
    hist_ax.set_xlabel("log10(mask voxels)")
    hist_ax.set_ylabel("masks")
    hist_ax.set_title(f"{len(bank)} masks, median {int(np.median(volumes)) if volumes.size else 0} voxels")
    fig.suptitle(f"{bank.case_id} — {bank.generator}")
    save_figure(fig, path, dpi=72)
