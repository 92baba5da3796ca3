"""Reference / query / prediction panels: one axial slice each, labels as coloured overlays, for a glance at
what a few-shot model did (the paper's qualitative figures)."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from mass_nn.io.figures import pyplot, save_figure
from mass_nn.io.image_io import read_image


def _most_labelled_slice(label_map: np.ndarray) -> int:
    """The axial (first-axis) slice with the most labelled voxels (the middle one when there are none)."""
    counts = (label_map > 0).reshape(label_map.shape[0], -1).sum(axis=1)
    return int(counts.argmax()) if counts.any() else label_map.shape[0] // 2


def _overlay(image_slice: np.ndarray, label_slice: np.ndarray, num_colours: int) -> np.ndarray:
    import matplotlib
    low, high = np.percentile(image_slice, [1, 99])
    grey = np.clip((image_slice - low) / max(high - low, 1e-6), 0, 1)
    rgb = np.repeat(grey[..., None], 3, axis=-1)
    colours = matplotlib.colormaps["tab20"](np.arange(max(num_colours, 1)) % 20)[:, :3]
    for value in np.unique(label_slice[label_slice > 0]):
        mask = label_slice == value
        rgb[mask] = 0.45 * rgb[mask] + 0.55 * colours[(int(value) - 1) % len(colours)]
    return rgb


def write_segmentation_figure(panels: list[tuple[str, Path, Path]], path: Path, title: str = "",
                              columns: int | None = None) -> None:
    """Panels (title, image file, label file) in rows of `columns` (default: one row) written as a PNG. A panel
    shows the axial slice with the most labelled voxels; panels of the same image file (a query's ground truth
    and its predictions) all show the slice chosen for the first of them."""
    plt = pyplot()
    columns = min(columns or len(panels), len(panels))
    rows = -(-len(panels) // columns)
    # constrained layout keeps every row's titles clear of the row above (tight layout does not, with axes off)
    figure, axes = plt.subplots(rows, columns, figsize=(3.2 * columns, 3.4 * rows), squeeze=False,
                                layout="constrained")
    for axis in axes.flat[len(panels):]:
        axis.axis("off")
    query_slice: dict[str, int] = {}
    for axis, (panel_title, image_path, label_path) in zip(axes.flat, panels):
        image, _ = read_image(image_path)
        labels, _ = read_image(label_path, dtype=np.int16)
        key = str(image_path)
        index = query_slice.setdefault(key, _most_labelled_slice(labels))
        axis.imshow(_overlay(image[index], labels[index], int(labels.max())), origin="lower")
        axis.set_title(panel_title, fontsize=9)
        axis.axis("off")
    if title:
        figure.suptitle(title, fontsize=10)
    save_figure(figure, path, dpi=110)
