"""The few-shot protocol of the paper's Table 1 for one checkpoint and one labelled dataset: for every k and
seed, training-free in-context segmentation and finetuning (optionally also from scratch), each scored on the
test split; results as mean (std) over seeds. Every run is resumable: finished parts are read back, not redone."""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from pathlib import Path

from mass_nn.datasets.labelled_data import resolve_labelled_dataset
from mass_nn.errors import MassError
from mass_nn.evaluation.in_context_protocol import finished_evaluation, in_context_evaluation
from mass_nn.evaluation.segmentation_figure import write_segmentation_figure
from mass_nn.evaluation.tables import json_safe, markdown_table, mean_std
from mass_nn.io.artifact_layout import checkpoint_path
from mass_nn.io.atomic import atomic_path, read_json, write_json_atomic
from mass_nn.io.dataset_json import find_dataset_name
from mass_nn.model.checkpoint import load_checkpoint
from mass_nn.paths import MassPaths
from mass_nn.training.options import TrainingOptions
from mass_nn.training.run_folder import finetune_run_tag, run_folder
from mass_nn.training.run_training import run_training

logger = logging.getLogger(__name__)

METHOD_LABELS = {"in_context": "{model} in-context", "in_context_calibrated": "{model} in-context, calibrated",
                 "finetune": "{model} finetuned", "scratch": "scratch finetuned"}
IN_CONTEXT_METHODS = ("in_context", "in_context_calibrated")


def method_label(method: str, checkpoint_trainer: str) -> str:
    """Row label of a method: the pretraining trainer's name without "Pretrainer" (MASS, MAE, ...) for the
    methods that start from the checkpoint."""
    return METHOD_LABELS[method].format(model=checkpoint_trainer.removesuffix("Pretrainer") or "pretrained")


@dataclass
class FewShotProtocol:
    """What to run. epochs / iters_per_epoch None: the finetuning trainer's defaults (the paper's 50 epochs);
    context_tasks None: in context, each pass filled up to the pretraining task count (context_tasks.py)."""

    dataset: str
    checkpoint: Path | None
    shots: list[int] = field(default_factory=lambda: [1, 5, 10])
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    methods: list[str] = field(default_factory=lambda: ["in_context", "finetune"])
    configuration: str = "3d_cpu"
    plans_name: str = "MassPlans"
    epochs: int | None = None
    iters_per_epoch: int | None = None
    device: str = "cpu"
    tag: str = ""
    hd95: bool = False
    context_tasks: int | None = None


def _finetune(protocol: FewShotProtocol, paths: MassPaths, method: str, shots: int, seed: int) -> dict:
    """Finetune (or resume) one (k, seed) run and return its test summary."""
    pretrained = str(protocol.checkpoint) if method == "finetune" else None
    options = TrainingOptions(mode="FINETUNE", datasets=[protocol.dataset], trainer="SegmentationFinetuner",
                              configuration=protocol.configuration, plans_name=protocol.plans_name,
                              epochs=protocol.epochs, iters_per_epoch=protocol.iters_per_epoch, seed=seed,
                              shots=shots, pretrained=pretrained, device=protocol.device, tag=protocol.tag,
                              continue_training=True)
    folder = run_folder(paths.results, find_dataset_name(protocol.dataset, [paths.preprocessed, paths.raw]),
                        "SegmentationFinetuner", protocol.plans_name, protocol.configuration,
                        finetune_run_tag(pretrained, shots, seed, protocol.tag))
    summary_path = folder / "test" / "summary.json"
    if not (summary_path.is_file() and checkpoint_path(folder, "final").is_file()):
        result = run_training(options, paths)
        if result["stopped_early"]:
            raise KeyboardInterrupt
    return {**read_json(summary_path), "run_folder": str(folder)}


def _in_context(protocol: FewShotProtocol, paths: MassPaths, out_folder: Path, method: str, shots: int,
                seed: int) -> dict:
    """In context at the threshold 0.5 ("in_context") or at reference-calibrated thresholds."""
    folder = out_folder / method / f"{shots}shot_seed{seed}"
    finished = finished_evaluation(folder, protocol.context_tasks)
    if finished is not None:
        return {**finished, "run_folder": str(folder)}
    summary = in_context_evaluation(protocol.checkpoint, protocol.dataset, paths, shots, seed, folder,
                                    protocol.plans_name, protocol.configuration, protocol.device, protocol.hd95,
                                    calibrate_threshold=method == "in_context_calibrated",
                                    context_tasks=protocol.context_tasks)
    return {**summary, "run_folder": str(folder)}


def available_shots(protocol: FewShotProtocol, paths: MassPaths) -> tuple[list[int], int]:
    """(the requested k that the train split can supply, number of labelled train cases)."""
    data = resolve_labelled_dataset(protocol.dataset, paths, protocol.plans_name, protocol.configuration)
    count = len(data.labelled_cases("train"))
    return [k for k in protocol.shots if k <= count], count


def run_few_shot_protocol(protocol: FewShotProtocol, paths: MassPaths, out_folder: Path) -> dict:
    """Run every (method, k, seed) and write out_folder/results.json and results.md; returns the results."""
    out_folder = Path(out_folder)
    shots, count = available_shots(protocol, paths)
    skipped = sorted(set(protocol.shots) - set(shots))
    if not shots:
        raise MassError(f"-k {' '.join(map(str, protocol.shots))}: the train split of dataset {protocol.dataset} "
                        f"holds {count} labelled case(s); ask for k <= {count}, or label more cases")
    if skipped:
        logger.warning("k = %s skipped: the train split has %d labelled case(s)", skipped, count)
    runs = []
    for k in shots:
        for seed in protocol.seeds:
            for method in protocol.methods:
                logger.info("few-shot protocol: %s, %d-shot, seed %d", method, k, seed)
                summary = (_in_context(protocol, paths, out_folder, method, k, seed) if method in IN_CONTEXT_METHODS
                           else _finetune(protocol, paths, method, k, seed))
                alone = summary.get("structures_alone") or {}
                runs.append({"method": method, "shots": k, "seed": seed, "mean_dice": summary["mean_dice"],
                             "per_class_dice": {n: m["dice"] for n, m in summary["mean"].items()},
                             "structures_alone_dice": alone.get("mean_dice"),
                             "structures_alone_per_class": alone.get("mean"),
                             "run_folder": summary["run_folder"]})
    results = {"dataset": protocol.dataset, "checkpoint": str(protocol.checkpoint), "shots": shots,
               "skipped_shots": skipped, "seeds": protocol.seeds, "methods": protocol.methods, "runs": runs,
               "epochs": protocol.epochs, "iters_per_epoch": protocol.iters_per_epoch,
               "checkpoint_trainer": load_checkpoint(protocol.checkpoint).meta.trainer if protocol.checkpoint else ""}
    results["figure"] = _write_figure(runs, protocol, paths, out_folder, results["checkpoint_trainer"])
    write_json_atomic(json_safe(results), out_folder / "results.json")
    with atomic_path(out_folder / "results.md") as tmp:
        tmp.write_text(results_markdown(results))
    return results


def _write_figure(runs: list[dict], protocol: FewShotProtocol, paths: MassPaths, out_folder: Path,
                  trainer: str) -> str | None:
    """Reference, query and each method's prediction for the first test case of the smallest k, first seed."""
    first = [r for r in runs if r["shots"] == runs[0]["shots"] and r["seed"] == runs[0]["seed"]] if runs else []
    if not first:
        return None
    data = resolve_labelled_dataset(protocol.dataset, paths, protocol.plans_name, protocol.configuration)
    shots = read_json(Path(first[0]["run_folder"]) / "shots.json")["training_cases"]
    test_ids = data.labelled_cases("test")
    if not test_ids:
        return None
    reference, query = data.raw_cases([shots[0], test_ids[0]])
    panels = [(f"reference {reference.case_id}", reference.images[0], reference.label),
              (f"query {query.case_id} (truth)", query.images[0], query.label)]
    for run in first:
        folder = Path(run["run_folder"]) / ("" if run["method"] in IN_CONTEXT_METHODS else "test") / "predictions"
        prediction = next(folder.glob(f"{query.case_id}.*"), None)
        if prediction is not None:
            panels.append((method_label(run["method"], trainer), query.images[0], prediction))
    path = out_folder / "examples.png"
    write_segmentation_figure(panels, path, f"{runs[0]['shots']}-shot, seed {runs[0]['seed']}")
    return str(path)


def results_table(results: dict, score: str = "mean_dice") -> str:
    """Markdown table: one row per method, one column per k, cells "mean (std)" over seeds of the runs' `score`
    (mean Dice (%) of the label maps, or "structures_alone_dice": of each structure's own claim); runs scored
    before a score existed count as missing."""
    header = ["method", *(f"{k}-shot" for k in results["shots"])]
    rows = []
    for method in results["methods"]:
        cells = []
        for k in results["shots"]:
            values = [r.get(score) for r in results["runs"] if r["method"] == method and r["shots"] == k]
            cells.append(mean_std([v if v is not None else math.nan for v in values]))
        rows.append([method_label(method, results["checkpoint_trainer"]), *cells])
    return markdown_table(header, rows)


def results_markdown(results: dict) -> str:
    lines = [f"# Few-shot segmentation on {results['dataset']}", "",
             f"Checkpoint: `{results['checkpoint']}`; seeds {results['seeds']}; mean Dice (%) over the classes of "
             f"the test split, mean (std) over seeds.", "", "Label maps (what `mass_predict` writes):", "",
             results_table(results), "", "Each structure's own claim (overlaps kept, as the release's in-context "
             "evaluator scores):", "", results_table(results, "structures_alone_dice"), ""]
    if results["skipped_shots"]:
        lines += [f"Skipped k = {results['skipped_shots']}: not enough labelled training cases.", ""]
    return "\n".join(lines)
