"""Which labelled cases a classification run trains on: a seeded, stratified share of the train split.

Low-label experiments ("train on 5 % of the labels") must compare like with like: the same seed gives the same
cases, every class keeps its share of the subset, and no class drops out entirely while the subset has room for it.
"""
from __future__ import annotations

import math

import numpy as np

from mass_nn.errors import MassError
from mass_nn.io.case_labels import CaseLabels


def stratum_of(labels: CaseLabels, case_id: str) -> str:
    """The stratum of a case: its class (multi-class) or its combination of positive labels (multi-label)."""
    target = labels.targets[case_id]
    if labels.kind == "multiclass":
        return labels.class_names[target]
    return "+".join(name for name, value in zip(labels.class_names, target) if value) or "none"


def _proportional_quotas(sizes: dict[str, int], total: int) -> dict[str, int]:
    """Split `total` over the strata in proportion to their sizes (largest remainder, ties by name)."""
    count = sum(sizes.values())
    exact = {key: total * size / count for key, size in sizes.items()}
    quotas = {key: int(math.floor(value)) for key, value in exact.items()}
    by_remainder = sorted(sizes, key=lambda key: (-(exact[key] - quotas[key]), key))
    for key in by_remainder[: total - sum(quotas.values())]:
        quotas[key] += 1
    return quotas


def _positive_columns(labels: CaseLabels, case_id: str) -> list[int]:
    target = labels.targets[case_id]
    if labels.kind == "multiclass":
        return [target]
    return [i for i, value in enumerate(target) if value]


def select_training_cases(case_ids: list[str], labels: CaseLabels, fraction: float, seed: int) -> list[str]:
    """A sorted subset of about `fraction` of the labelled `case_ids`, stratified by `stratum_of`.

    The same (cases, labels, fraction, seed) always gives the same subset. Every class (multi-class) or label
    column (multi-label) with a positive case keeps at least one positive case, even where that takes the subset a
    little above round(fraction * N). fraction 1 returns every case.
    """
    if not 0.0 < fraction <= 1.0:
        raise MassError(f"--train-fraction {fraction}: expected a share in (0, 1], e.g. 0.3 for 30 % of the train "
                        f"split")
    if not case_ids:
        raise MassError("no labelled cases in the train split to select from; add their rows to labels.csv")
    rng = np.random.default_rng(seed)
    strata: dict[str, list[str]] = {}
    for case_id in sorted(case_ids):
        strata.setdefault(stratum_of(labels, case_id), []).append(case_id)
    for key in sorted(strata):  # a fixed order of shuffles makes the subset a function of the seed alone
        strata[key] = [strata[key][i] for i in rng.permutation(len(strata[key]))]
    total = min(len(case_ids), max(1, round(fraction * len(case_ids))))
    quotas = _proportional_quotas({key: len(members) for key, members in strata.items()}, total)
    chosen = [case for key in sorted(strata) for case in strata[key][: quotas[key]]]
    return sorted(chosen + _cover_missing_classes(strata, labels, chosen))


def _cover_missing_classes(strata: dict[str, list[str]], labels: CaseLabels, chosen: list[str]) -> list[str]:
    """Extra cases (first in shuffled order) for every class or label column that has no positive in `chosen`."""
    covered = {column for case in chosen for column in _positive_columns(labels, case)}
    taken = set(chosen)
    remaining = [case for key in sorted(strata) for case in strata[key] if case not in taken]
    extra = []
    for column in range(len(labels.class_names)):
        if column in covered:
            continue
        candidate = next((case for case in remaining if column in _positive_columns(labels, case)), None)
        if candidate is not None:
            extra.append(candidate)
            remaining.remove(candidate)
            covered.update(_positive_columns(labels, candidate))
    return extra
