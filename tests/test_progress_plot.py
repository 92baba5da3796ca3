"""progress.png is drawn from metrics records, with or without validation scores."""
from __future__ import annotations

import matplotlib.image

from mass_nn.training.progress_plot import write_progress_plot


def test_progress_plot_with_and_without_validation_scores(tmp_path):
    records = [{"epoch": e, "train_loss": 1.0 / (e + 1), "lr": 1e-3 * (1 - e / 5)} for e in range(5)]
    write_progress_plot(records, tmp_path / "train_only.png", "no validation")
    with_scores = [dict(r, val_dice=0.1 * r["epoch"]) for r in records]
    write_progress_plot(with_scores, tmp_path / "with_val.png")
    first = matplotlib.image.imread(tmp_path / "train_only.png")
    second = matplotlib.image.imread(tmp_path / "with_val.png")
    assert first.shape == second.shape and first.shape[0] > 100
    assert not (first == second).all()
