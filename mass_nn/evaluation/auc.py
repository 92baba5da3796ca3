"""Area under the ROC curve: binary (rank statistic, ties counted half), one-vs-rest for multi-class and
per-column for multi-label, each macro-averaged over the classes that have both positives and negatives."""
from __future__ import annotations

import numpy as np
from scipy.stats import rankdata


def binary_auc(scores, positives) -> float:
    """AUC of `scores` for the boolean `positives`; NaN when one of the two groups is empty."""
    scores = np.asarray(scores, dtype=np.float64).ravel()
    positives = np.asarray(positives).astype(bool).ravel()
    if scores.shape != positives.shape:
        raise ValueError(f"scores {scores.shape} and targets {positives.shape} differ in length")
    n_pos, n_neg = int(positives.sum()), int((~positives).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = rankdata(scores)  # average ranks: a tie between a positive and a negative counts one half
    return float((ranks[positives].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def classification_auc(probabilities, targets, kind: str, class_names: list[str]) -> dict[str, float]:
    """Per-class AUC and their mean ("mean_auc").

    multiclass: probabilities [N, C], targets [N] class indices (one-vs-rest per class; with two classes the
    mean is the AUC of the positive class, as usual for binary tasks). multilabel: probabilities and targets [N, C].
    """
    probabilities = np.asarray(probabilities, dtype=np.float64)
    targets = np.asarray(targets)
    if probabilities.ndim != 2 or probabilities.shape[1] != len(class_names):
        raise ValueError(f"probabilities {probabilities.shape} do not have one column per class {class_names}")
    if kind == "multiclass":
        truth = targets.reshape(-1)[:, None] == np.arange(len(class_names))[None]
    elif kind == "multilabel":
        truth = targets.reshape(probabilities.shape) > 0.5
    else:
        raise ValueError(f"kind {kind!r}: expected 'multiclass' or 'multilabel'")
    per_class = {name: binary_auc(probabilities[:, i], truth[:, i]) for i, name in enumerate(class_names)}
    if kind == "multiclass" and len(class_names) == 2:
        mean = per_class[class_names[1]]
    else:
        finite = [v for v in per_class.values() if np.isfinite(v)]
        mean = float(np.mean(finite)) if finite else float("nan")
    return {**{f"auc_{name}": value for name, value in per_class.items()}, "mean_auc": mean}
