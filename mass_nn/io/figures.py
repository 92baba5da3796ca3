"""Writing matplotlib figures as files: the headless backend, and an atomic save that frees the figure."""
from __future__ import annotations

from pathlib import Path

from mass_nn.io.atomic import atomic_path


def pyplot():
    """matplotlib.pyplot on the non-interactive Agg backend (imported on first use: plotting is optional work)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def save_figure(figure, path: Path, dpi: int) -> None:
    """Lay out `figure` (tight, unless it was made with a layout engine of its own), write it to `path` atomically
    (the format follows the ending) and close it."""
    if figure.get_layout_engine() is None:
        figure.tight_layout()
    with atomic_path(path) as tmp:
        figure.savefig(tmp, dpi=dpi)
    pyplot().close(figure)
