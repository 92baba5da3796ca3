"""progress.png: training and validation curves and the learning rate, redrawn after every epoch."""
from __future__ import annotations

from pathlib import Path

from mass_nn.io.figures import pyplot, save_figure


def _series(records: list[dict], key: str) -> tuple[list[int], list[float]]:
    points = [(r["epoch"], r[key]) for r in records if isinstance(r.get(key), (int, float))]
    return [p[0] for p in points], [p[1] for p in points]


def write_progress_plot(records: list[dict], path: Path, title: str = "") -> None:
    """Three panels: losses (train_* and val_loss), validation scores (val_* other than loss), learning rate."""
    plt = pyplot()

    keys = sorted({k for r in records for k, v in r.items() if isinstance(v, (int, float))})
    loss_keys = [k for k in keys if k.startswith("train_") and "loss" in k] + [k for k in keys if k == "val_loss"]
    score_keys = [k for k in keys if k.startswith("val_") and k != "val_loss"]
    figure, axes = plt.subplots(1, 3, figsize=(15, 4))
    for key in loss_keys:
        axes[0].plot(*_series(records, key), label=key, marker=".")
    axes[0].set_title("loss")
    for key in score_keys:
        axes[1].plot(*_series(records, key), label=key, marker=".")
    axes[1].set_title("validation")
    if not score_keys:  # say so rather than leave an empty frame that reads like a plotting failure
        axes[1].text(0.5, 0.5, "no validation scores in this run", ha="center", va="center",
                     transform=axes[1].transAxes, color="gray")
    axes[2].plot(*_series(records, "lr"), color="tab:green", marker=".")
    axes[2].set_title("learning rate (end of epoch)")
    for axis in axes:
        axis.set_xlabel("epoch")
        if axis.get_legend_handles_labels()[0]:
            axis.legend(fontsize=8)
        axis.grid(alpha=0.3)
    if title:
        figure.suptitle(title)
    save_figure(figure, path, dpi=80)
