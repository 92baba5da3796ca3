"""Validation during pretraining, run with the EMA weights on rank 0.

- InContextValidation (with --val-dataset): in-context Dice on a labelled dataset with fixed references. Per
  label, one or more reference cases of the train split are cropped to the patch around that label; every val
  case is cropped around its labelled region and segmented for all labels in one pass per reference choice.
  This is a patch-level proxy of the full sliding-window protocol of mass_predict, cheap enough to run every
  epoch.
- AutoMaskValidation: the training loss on fixed batches from the held-out (val split) cases of the pool and
  their auto masks, plus the hard Dice of those masks (the pretext Dice).
- PretrainingValidation: both, whichever apply, in one record.
"""
from __future__ import annotations

import numpy as np
import torch

from mass_nn.datasets.preprocessed_sources import resolve_source
from mass_nn.errors import MassError
from mass_nn.inference.reference_calibration import calibrate_thresholds
from mass_nn.io.artifact_layout import CaseOutput
from mass_nn.io.dataset_json import load_dataset_json
from mass_nn.networks.in_context.task_ops import concat_task_embeddings
from mass_nn.paths import MassPaths
from mass_nn.planning.plans import Plans
from mass_nn.planning.plans_compatibility import pooled_model_differences
from mass_nn.preprocessing.blosc2_storage import open_array
from mass_nn.preprocessing.case_properties import load_properties
from mass_nn.preprocessing.crop_pad import centered_start, crop_or_pad
from mass_nn.training.data.pretraining_loader import batch_to_device, make_pretraining_loader

MAX_QUERY_CASES = 8


def hard_dice(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Dice of (sigmoid(logits) > 0.5) against a binary target, per channel [B, K] (NaN where both are empty)."""
    prediction = logits > 0
    target = target > 0.5
    dims = tuple(range(2, logits.ndim))
    intersection = (prediction & target).sum(dims).double()
    total = prediction.sum(dims).double() + target.sum(dims).double()
    return torch.where(total > 0, 2 * intersection / total.clamp(min=1), torch.full_like(total, float("nan")))


class AutoMaskValidation:
    """Loss and mask Dice on fixed held-out batches (drawn once, with a seed apart from training's)."""

    metric_key, metric_mode = "val_loss", "min"

    def __init__(self, cases, sampler_settings, batch_size: int, num_batches: int, seed: int, loss):
        self.cases, self.settings, self.batch_size = cases, sampler_settings, batch_size
        self.num_batches, self.seed, self.loss = num_batches, seed + 1_000_003, loss
        self._batches: list[dict] | None = None

    def _fixed_batches(self) -> list[dict]:
        if self._batches is None:
            loader = make_pretraining_loader(self.cases, self.settings, self.batch_size, seed=self.seed, num_workers=0)
            try:
                self._batches = [next(loader) for _ in range(self.num_batches)]
            finally:
                loader.close()
        return self._batches

    @torch.no_grad()
    def run(self, network: torch.nn.Module, device: torch.device) -> dict[str, float]:
        network.eval()
        losses, dices = [], []
        for batch in self._fixed_batches():
            t = batch_to_device(batch, device)
            logits = network(t["query_image"], t["reference_image"], t["reference_masks"]).float()
            losses.append(float(self.loss(logits, t["query_masks"], t["task_weights"])[0]))
            dice = hard_dice(logits, t["query_masks"])
            valid = (t["task_weights"] > 0) & (t["query_masks"].flatten(2).amax(2) > 0)
            dices.extend(dice[valid].tolist())
        mask_dice = float(np.nanmean(dices)) if dices else float("nan")
        return {"val_loss": float(np.mean(losses)), "val_mask_dice": mask_dice}


def _label_crop(data_folder, case_id: str, label: int | None, patch) -> tuple[np.ndarray, np.ndarray]:
    """(image crop, label-map crop) of `patch` centred on label `label`'s box (all labels when None)."""
    props = load_properties(CaseOutput(data_folder, case_id).properties)
    boxes = [b for key, b in props.label_bboxes_zyx.items() if label is None or key == str(label)]
    if not boxes:
        raise ValueError(f"{case_id} has no label {label}")
    lo = np.min([[axis[0] for axis in b] for b in boxes], axis=0)
    hi = np.max([[axis[1] for axis in b] for b in boxes], axis=0)
    start = centered_start((lo + hi) / 2.0, patch)
    files = CaseOutput(data_folder, case_id)
    image = crop_or_pad(open_array(files.data), start, patch)
    seg = crop_or_pad(open_array(files.seg), start, patch)[0]
    return image.astype(np.float32), seg


class InContextValidation:
    """In-context Dice per label of one labelled dataset, over fixed reference choices (module docstring)."""

    metric_key, metric_mode = "val_dice", "max"

    def __init__(self, references: dict[str, list[tuple[np.ndarray, np.ndarray]]],
                 queries: list[tuple[np.ndarray, np.ndarray]], label_values: dict[str, int], name: str = ""):
        self.references, self.queries, self.label_values, self.name = references, queries, label_values, name

    @classmethod
    def from_dataset(cls, dataset: str, paths: MassPaths, plans: Plans, plans_name: str, configuration: str,
                     pool_layouts: list[list[dict]] | None = None, reference_choices: int = 1,
                     seed: int = 0) -> "InContextValidation":
        """Fixed references and queries of `dataset`, whose target spacing and channel count must equal `plans'`
        and whose channel layout must be one of `pool_layouts` (the run's sources; default: `plans`' own).

        Per label, `reference_choices` train cases containing it (the first one when 1, else a seeded draw)
        serve as references; the queries are the val split's labelled cases; both are cropped to `plans`' patch.
        A dataset without val cases is refused: its test cases must stay unseen until the final evaluation.
        """
        source = resolve_source(dataset, paths, plans_name, configuration)
        differences = pooled_model_differences(plans, configuration, pool_layouts or [], source.plans, configuration)
        if differences:
            raise MassError(f"--val-dataset {dataset}: its plans do not match the pretraining data (pretraining "
                            f"data vs val dataset):\n  " + "\n  ".join(differences))
        labels = {n: v for n, v in (load_dataset_json(paths.preprocessed / source.dataset_name).labels or {}).items()
                  if v != 0}
        # crops at the patch the network trains on (its positional maps' size): a val dataset planned with a
        # larger patch, as the planner does for taller volumes than the pool's, would give references the
        # network refuses
        patch = plans.configuration(configuration).patch_size_zyx
        rng = np.random.default_rng(seed)
        references = {}

        def properties(case_id: str):
            return load_properties(CaseOutput(source.data_folder, case_id).properties)

        for name, value in labels.items():
            holders = [c for c in source.cases("train") if properties(c).label_voxel_counts.get(str(value), 0) > 0]
            if reference_choices > 1:
                holders = sorted(rng.choice(holders, size=min(reference_choices, len(holders)), replace=False))
            chosen = [_label_crop(source.data_folder, c, value, patch) for c in holders[:reference_choices]]
            if chosen:
                references[name] = [(image, (seg == value).astype(np.float32)) for image, seg in chosen]
        query_ids = [c for c in source.cases("val") if properties(c).label_bboxes_zyx][:MAX_QUERY_CASES]
        if not references or not query_ids:
            raise MassError(f"--val-dataset {dataset}: needs labels in its train split (references) and in its "
                            f"val split (queries; the test split is never used for validation); found "
                            f"{len(references)} label(s), {len(query_ids)} val case(s) with labels. Give the "
                            f"dataset val cases in {source.data_folder.parent / 'splits.json'}")
        queries = [_label_crop(source.data_folder, c, None, patch) for c in query_ids]
        return cls(references, queries, {n: labels[n] for n in references}, name=source.dataset_name)

    @torch.no_grad()
    def run(self, network: torch.nn.Module, device: torch.device) -> dict[str, float]:
        """`val_dice[_<label>]` at the fixed threshold 0.5, `val_calibrated_dice[_<label>]` at each label's
        threshold read off its reference (mass_nn.inference.reference_calibration)."""
        network.eval()
        names = list(self.references)
        fixed: dict[str, list[float]] = {n: [] for n in names}
        calibrated: dict[str, list[float]] = {n: [] for n in names}
        for choice in range(max(len(r) for r in self.references.values())):
            picked = [self.references[n][min(choice, len(self.references[n]) - 1)] for n in names]
            embedding = concat_task_embeddings([
                network.encode_task(torch.from_numpy(img)[None].to(device),
                                    torch.from_numpy(mask)[None, None].to(device)) for img, mask in picked])
            thresholds = calibrate_thresholds(network, embedding, [[crop] for crop in picked], device)
            for image, seg in self.queries:
                probabilities = torch.sigmoid(network.segment(torch.from_numpy(image)[None].to(device), embedding)
                                              .float())
                target = torch.stack([torch.from_numpy(seg == self.label_values[n]) for n in names])[None].to(device)
                cut = torch.tensor(thresholds, device=device).view(1, -1, *([1] * (probabilities.ndim - 2)))
                for store, prediction in ((fixed, probabilities >= 0.5), (calibrated, probabilities >= cut)):
                    dice = hard_dice(torch.where(prediction, 1.0, -1.0), target.float())[0]
                    for name, value, present in zip(names, dice.tolist(), target.flatten(2).any(2)[0].tolist()):
                        if present:
                            store[name].append(value)
        result = {}
        for key, per_label in (("val_dice", fixed), ("val_calibrated_dice", calibrated)):
            means = {n: float(np.mean(v)) for n, v in per_label.items() if v}
            result[key] = float(np.mean(list(means.values()))) if means else float("nan")
            result.update({f"{key}_{n}": v for n, v in means.items()})
        return result


class PretrainingValidation:
    """Everything a MASS run validates: the auto-mask loss on held-out cases (when the pool has val cases) and
    in-context Dice on each `--val-dataset`. "Best" is the mean in-context Dice when there is one, else the
    lowest auto-mask loss. With several val datasets their metrics carry the dataset's name
    (`val_dice_<dataset>`, `val_dice_<dataset>_<label>`) and `val_dice` is the mean over datasets."""

    def __init__(self, auto_masks: AutoMaskValidation | None, in_context: list[InContextValidation]):
        if auto_masks is None and not in_context:
            raise ValueError("PretrainingValidation needs auto-mask or in-context validation")
        self.auto_masks, self.in_context = auto_masks, in_context
        source = in_context[0] if in_context else auto_masks
        self.metric_key, self.metric_mode = source.metric_key, source.metric_mode

    def run(self, network: torch.nn.Module, device: torch.device) -> dict[str, float]:
        result = self.auto_masks.run(network, device) if self.auto_masks is not None else {}
        if len(self.in_context) == 1:
            return {**result, **self.in_context[0].run(network, device)}
        means: dict[str, list[float]] = {"val_dice": [], "val_calibrated_dice": []}
        for validation in self.in_context:
            metrics = validation.run(network, device)
            for key, values in means.items():
                values.append(metrics[key])
                result.update({f"{key}_{validation.name}{k.removeprefix(key)}": v for k, v in metrics.items()
                               if k == key or k.startswith(key + "_")})
        for key, values in means.items():
            result[key] = float(np.nanmean(values)) if not np.all(np.isnan(values)) else float("nan")
        return result
