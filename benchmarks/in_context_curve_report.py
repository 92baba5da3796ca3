"""The learning curve's results as tables and figures: the `in_context_learning_curve` section of
documentation/benchmarks.md (full run) or report.md in the workspace (--quick). Every number is read from the
files the runs wrote (metrics.jsonl of the pretraining, results.json of each comparison)."""
from __future__ import annotations

import math
import shutil
from pathlib import Path

from benchmarks.measure import machine_description, replace_section
from mass_nn.evaluation.feature_pca import write_case_feature_figure
from mass_nn.evaluation.tables import markdown_table, mean_std
from mass_nn.io.artifact_layout import CaseOutput, checkpoint_path, data_identifier
from mass_nn.io.atomic import read_json
from mass_nn.io.figures import pyplot, save_figure
from mass_nn.training.metrics_log import read_metrics

SECTION = "in_context_learning_curve"  # the gpu and cpu_batch16 budgets write SECTION + "_gpu" / "_cpu_batch16", their
# figures carry the same suffix
TITLES = {"chaos_mr": "CHAOS MR", "mscmrseg": "MS-CMRSeg"}
METHOD_TITLES = {"in_context": "MASS in context (no training), threshold 0.5",
                 "in_context_calibrated": "MASS in context (no training), reference-calibrated thresholds",
                 "finetune": "MASS finetuned", "scratch": "scratch finetuned"}

ALONE_SUFFIX = ", each structure's own claim"  # rows of structure_scores.py's score


def _percent(value) -> str:
    return "–" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{100 * value:.1f}"


def curve_rows(records: list[dict], dataset_names: dict[str, str]) -> tuple[list[str], list[list[str]]]:
    """(header, rows) of the curve: step, train loss, pretext Dice, and per dataset the mean in-context Dice at
    the threshold 0.5 and at reference-calibrated thresholds."""
    header = ["step", "train loss", "pretext Dice (held-out auto masks)"]
    for key in dataset_names:
        header += [f"{TITLES[key]} @0.5", f"{TITLES[key]} calibrated"]
    rows = []
    for r in records:
        loss = "–" if math.isnan(r["train_loss"]) else f"{r['train_loss']:.3f}"
        row = [str(r["global_step"]), loss, _percent(r.get("val_mask_dice"))]
        for name in dataset_names.values():
            row += [_percent(r.get(f"val_dice_{name}")), _percent(r.get(f"val_calibrated_dice_{name}"))]
        rows.append(row)
    return header, rows


def structure_rows(record: dict, dataset_names: dict[str, str]) -> tuple[list[str], list[list[str]]]:
    """(header, rows): per structure of the last curve point, in-context Dice at 0.5 and calibrated."""
    rows = []
    for key, name in dataset_names.items():
        prefix = f"val_dice_{name}_"
        for structure in sorted(k.removeprefix(prefix) for k in record if k.startswith(prefix)):
            rows.append([TITLES[key], structure, _percent(record.get(prefix + structure)),
                         _percent(record.get(f"val_calibrated_dice_{name}_{structure}"))])
    return ["dataset", "structure", "@0.5", "calibrated"], rows


def curve_figure(records: list[dict], dataset_names: dict[str, str], path: Path) -> Path:
    plt = pyplot()
    figure, axis = plt.subplots(figsize=(6.4, 3.6))
    steps = [r["global_step"] for r in records]
    axis.plot(steps, [100 * r.get("val_mask_dice", math.nan) for r in records], "k--", label="pretext Dice")
    for key, name in dataset_names.items():
        line = axis.plot(steps, [100 * r.get(f"val_calibrated_dice_{name}", math.nan) for r in records], "o-",
                         label=f"{TITLES[key]} 1-shot in context, calibrated (val)")[0]
        axis.plot(steps, [100 * r.get(f"val_dice_{name}", math.nan) for r in records], "s:",
                  color=line.get_color(), label=f"{TITLES[key]} 1-shot in context, threshold 0.5 (val)")
    axis.set_xlabel("pretraining step")
    axis.set_ylabel("Dice (%)")
    axis.grid(alpha=0.3)
    axis.legend(fontsize=8)
    save_figure(figure, path, dpi=110)
    return path


def _untrained_dice(curve, key: str, method: str, score: str) -> list[float]:
    values = []
    for seed in curve.budget.seeds:
        path = curve.untrained_in_context_folder(key, method, seed) / "summary.json"
        if path.is_file():
            summary = read_json(path)
            value = summary["mean_dice"] if score == "mean_dice" else (summary.get("structures_alone") or {}).get(
                "mean_dice")
            values.append(math.nan if value is None else value)
    return values


def _cells(results: dict, method: str, score: str) -> list[str] | None:
    """One row's cells, mean (std) over the shot seeds per dataset; None when no run has the score."""
    per_key = [[r.get(score) for r in results.get(key, {}).get("runs", []) if r["method"] == method] for key in TITLES]
    if not any(v is not None for values in per_key for v in values):
        return None
    return [mean_std([math.nan if v is None else v for v in values]) if values else "–" for values in per_key]


def comparison_rows(curve) -> tuple[list[str], list[list[str]]]:
    """Methods x datasets, 1-shot mean Dice (%) over the structures, mean (std) over the shot seeds: of the label
    maps, and below each, of each structure's own claim where the runs scored it; the untrained network's
    in-context rows right below the pretrained ones."""
    header, rows = ["method", *(f"{TITLES[k]} 1-shot" for k in TITLES)], []
    results = {k: read_json(p) for k in TITLES if (p := curve.workspace / "compare" / k / "results.json").is_file()}
    for method, title in METHOD_TITLES.items():
        for score, suffix in (("mean_dice", ""), ("structures_alone_dice", ALONE_SUFFIX)):
            cells = _cells(results, method, score)
            if cells is None and score != "mean_dice":
                continue
            rows.append([title + suffix, *(cells or ["–"] * len(TITLES))])
            if method.startswith("in_context"):
                untrained = [_untrained_dice(curve, key, method, score) for key in TITLES]
                rows.append([title.replace("MASS", "untrained network") + suffix,
                             *(mean_std(v) if v else "–" for v in untrained)])
    return header, rows


def readout_note(curve) -> str:
    """How the comparison's in-context label maps were read out: the rule for overlapping labels (runs written
    before it was recorded used the most probable label), the context tasks per pass and the window overlap."""
    shots_files = [path for key in TITLES
                   for path in (curve.workspace / "compare" / key).glob("*in_context*/1shot_seed*/shots.json")]
    shots = [read_json(path) for path in shots_files]
    rules = {s.get("label_fusion", "most_probable") for s in shots}
    if not rules:
        return ""
    note = (" In-context label maps give a voxel several structures claim to "
            + " / ".join("the smallest claim" if r == "smallest_volume" else "the most probable structure"
                         for r in sorted(rules))
            + " (documentation/in_context_segmentation.md#overlapping-labels).")
    context = sorted({s.get("context_tasks", 0) for s in shots})
    overlaps = sorted({s.get("overlap", 0.5) for s in shots})
    return note + (f" Each in-context pass carries {' / '.join(map(str, context))} context tasks besides the "
                   f"structures, windows overlap by {' / '.join(f'{o:g}' for o in overlaps)} "
                   f"(documentation/in_context_segmentation.md#context-tasks).")


# the budgets with a section of their own (suffix of the section and figure names) and their note in figure titles
RUN_NOTES = {"_gpu": ", on a GPU", "_cpu_batch16": ", batch 16", "_cpu_batch16_bf16": ", batch 16, bf16",
             "_cpu_batch16_bf16_6mm": ", batch 16, bf16, 6 mm", "_cpu_batch8_bf16": ", batch 8, bf16"}


def _suffix(curve) -> str:
    suffix = f"_{curve.budget.name}"
    return suffix if suffix in RUN_NOTES else ""


def _figures(curve, out: Path, records: list[dict], dataset_names: dict[str, str]) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    suffix = _suffix(curve)
    figures = [curve_figure(records, dataset_names, out / f"in_context_curve{suffix}.png")]
    for key in TITLES:
        example = curve.workspace / "compare" / key / "examples.png"
        if example.is_file():
            figures.append(Path(shutil.copyfile(example, out / f"in_context_examples_{key}{suffix}.png")))
    checkpoint = checkpoint_path(curve.run_folder(), "final")
    test_case = read_json(curve.paths.preprocessed / dataset_names["chaos_mr"] / "splits.json")["test"][0]
    data_folder = curve.paths.preprocessed / dataset_names["chaos_mr"] / data_identifier(curve.plans_name, "3d_cpu")
    if checkpoint.is_file():
        figures.append(write_case_feature_figure(checkpoint, CaseOutput(data_folder, test_case).data,
                                                 out / f"in_context_pca_chaos{suffix}.png",
                                                 f"MASS (CPU recipe{RUN_NOTES.get(suffix, '')}), CHAOS test "
                                                 f"patient {test_case}"))
    return figures


def curve_records(curve) -> list[dict]:
    """The run's metrics, preceded by the untrained network's validation as step 0 (when measured)."""
    records = read_metrics(curve.run_folder())
    path = curve.workspace / "untrained_validation.json"
    if path.is_file():
        records = [{"global_step": 0, "train_loss": math.nan, **read_json(path)}, *records]
    return records


def report_markdown(curve, figures: list[Path], relative_to: Path) -> str:
    records = curve_records(curve)
    names = {key: curve.datasets()[key] for key in TITLES}
    b, state = curve.budget, curve.state()
    header, rows = curve_rows(records, names)
    structure_header, per_structure = structure_rows(records[-1], names)
    compare_header, compare_rows = comparison_rows(curve)
    alone_note = (" Rows ending \"each structure's own claim\" score every structure's channel thresholded alone, "
                  "overlaps kept, as the release's in-context evaluator does "
                  "(documentation/in_context_segmentation.md#scoring-each-structures-own-claim)."
                  if any(row[0].endswith(ALONE_SUFFIX) for row in compare_rows) else "")
    # the run's own count (steps, loading, validation) where it keeps one; before that, the epochs' steps and loading
    minutes = records[-1].get("trained_minutes", sum(r.get("epoch_seconds", 0.0) for r in records) / 60)
    minutes_cap = b.pretrain_minutes  # the budget's --max-minutes (None for budgets in steps)
    untrained_note = " Step 0 is the same network untrained." if records[0]["global_step"] == 0 else ""
    if b.name == "gpu":
        title = "## In-context learning curve on organ-level MR (the CPU recipe on a GPU)"
        command = ("`python benchmarks/in_context_learning_curve.py --gpu --reuse-datasets-from "
                   "benchmarks/_work/in_context_curve`: the same pool, masks, trainer, batch and val references as "
                   "the CPU curve above, more steps; pretraining on " + state.get("pretrain_device", "a CUDA device")
                   + " with bf16 autocast, everything after it (untrained step 0, comparison) on "
                   + machine_description() + ". What more steps of the recipe buy, at no other change.")
    elif b.name == "cpu_batch16":
        title = "## In-context learning curve on organ-level MR (the CPU recipe at batch 16)"
        command = ("`python benchmarks/in_context_learning_curve.py --batch16 --reuse-datasets-from "
                   "benchmarks/_work/in_context_curve`: the same pool, masks, trainer and val references as the "
                   "CPU curve above, at the GPU section's batch 16 and unscaled lr 2e-3, on " + machine_description()
                   + ", with memory reuse on (documentation/pretraining.md#memory-reuse).")
    elif b.name == "cpu_batch16_bf16":
        title = "## In-context learning curve on organ-level MR (the CPU recipe at batch 16, bf16)"
        command = ("`python benchmarks/in_context_learning_curve.py --batch16 --bf16`: the batch-16 recipe above "
                   "(same pool, trainer, batch, lr and val references) with bf16 autocast (`--precision bf16`, "
                   f"documentation/pretraining.md#bf16-on-cpu) and as many 60-step epochs as fit in {minutes_cap:g} "
                   f"minutes of training on this machine (`--max-minutes {minutes_cap:g}`: steps, loading, "
                   f"validation; at most {b.pretrain_epochs}) on the lr schedule of all {b.pretrain_epochs}, its own "
                   "datasets and weight-free masks from the current generator, on "
                   + machine_description() + ", with memory reuse on.")
    elif b.name == "cpu_batch16_bf16_6mm":
        title = "## In-context learning curve on organ-level MR (the CPU recipe at batch 16, bf16, 6 mm)"
        command = ("`python benchmarks/in_context_learning_curve.py --batch16 --bf16 --grid-6mm`: the bf16 hour above "
                   "(same pool, trainer, batch, lr and val references) on the 6 mm grid with a 32³ patch (preset "
                   "`cpu_in_context_6mm`: the same 192 mm field of view at a third of the voxels), as many 60-step "
                   f"epochs as fit in {minutes_cap:g} minutes of training on this machine (`--max-minutes "
                   f"{minutes_cap:g}`, at most {b.pretrain_epochs}), its own datasets and weight-free masks, on "
                   + machine_description() + ", with memory reuse on.")
    elif b.name == "cpu_batch8_bf16":
        title = "## In-context learning curve on organ-level MR (the CPU recipe at batch 8, bf16)"
        command = ("`python benchmarks/in_context_learning_curve.py --batch8 --bf16`: the bf16 hour above (same "
                   "pool, trainer, lr and val references) at batch 8 in 120-step epochs, the same samples per epoch "
                   f"in twice the steps, as many epochs as fit in {minutes_cap:g} minutes of training on this "
                   f"machine (`--max-minutes {minutes_cap:g}`: steps, loading, validation; at most "
                   f"{b.pretrain_epochs}) on the lr schedule of all {b.pretrain_epochs}, its own datasets and "
                   "weight-free masks, on " + machine_description() + ", with memory reuse on.")
    else:
        title = "## In-context learning curve on organ-level MR (CPU recipe)"
        command = f"`python benchmarks/in_context_learning_curve.py` ({machine_description()})."
    steps = records[-1]["global_step"]
    lines = [title, "", f"{command} Trainer "
             f"`MASSCPUPretrainer`, preset `{curve.preset}`, {steps} steps in {minutes:.0f} min of pretraining"
             f" on the MR pool ({state['splits']['pool']['train']} volumes, weight-free masks). Splits: "
             + ", ".join(f"{TITLES[k]} {s['train']} train / {s['val']} val / {s['test']} test patients"
                         for k, s in state["splits"].items() if k in TITLES) + "; only train patients are pooled.", "",
             "Curve: after every epoch, the pretext Dice (hard Dice of the held-out pool cases' auto masks) and the "
             "patch-level 1-shot in-context Dice (%) on the val patients, averaged over 3 reference patients per "
             "structure, read out at the fixed threshold 0.5 and at each structure's threshold calibrated on its "
             "reference (documentation/in_context_segmentation.md)." + untrained_note, "",
             markdown_table(header, rows), "",
             f"Per structure after the last step ({records[-1]['global_step']}):", "",
             markdown_table(structure_header, per_structure), "",
             f"Test patients, 1-shot, full volumes in their own geometry, mean Dice (%) over the structures, mean "
             f"(std) over {len(b.seeds)} shot choices; finetuning {b.finetune_epochs * b.finetune_iters_per_epoch} "
             f"steps for both finetuned rows." + readout_note(curve) + alone_note, "",
             markdown_table(compare_header, compare_rows), ""]
    lines += [" ".join(f"![{p.stem}]({p.relative_to(relative_to).as_posix()})" for p in figures), ""]
    return "\n".join(lines)


def write_curve_report(curve, page: Path | None) -> Path:
    """Write the section into `page`, or report.md into the workspace when `page` is None; returns the file."""
    records = curve_records(curve)
    names = {key: curve.datasets()[key] for key in TITLES}
    if page is None:
        figures = _figures(curve, curve.workspace / "figures", records, names)
        target = curve.workspace / "report.md"
        target.write_text(report_markdown(curve, figures, curve.workspace))
        return target
    figures = _figures(curve, page.parent / "figures", records, names)
    replace_section(page, SECTION + _suffix(curve), report_markdown(curve, figures, page.parent))
    return page
