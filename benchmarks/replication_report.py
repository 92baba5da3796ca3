"""The replication's results as tables (paper Table 1 / Table 3 layout), figures and a reading: the `replication`
section of documentation/benchmarks.md (full run) or report.md in the workspace (--quick, custom budget). Every
number here is read from the files the runs wrote; nothing is typed in."""
from __future__ import annotations

import math
import os
import platform
import shutil
from pathlib import Path

import numpy as np
import torch

from benchmarks.measure import machine_description, replace_section
from benchmarks.replication_budget import MASS_RECIPE_BATCH, PROBE_EPOCHS
from benchmarks.replication_datasets import EVALUATION_IDS
from benchmarks.replication_runs import CONFIGURATION, PRESET, PRETRAINERS, read_timings
from mass_nn.datasets.labelled_data import resolve_labelled_dataset
from mass_nn.evaluation.feature_pca import write_case_feature_figure
from mass_nn.evaluation.segmentation_figure import write_segmentation_figure
from mass_nn.evaluation.tables import markdown_table, mean_std
from mass_nn.io.artifact_layout import bank_folder, data_identifier
from mass_nn.io.atomic import read_json
from mass_nn.training.metrics_log import read_metrics
from mass_nn.training.progress_plot import write_progress_plot

DATASET_TITLES = {"sts_pet": "Sarcoma PET", "sts_ct": "Sarcoma CT", "brats_t1c": "BRATS T1c",
                  "totalseg_ct": "TotalSeg CT", "chaos_mr": "CHAOS MR", "mscmrseg": "MS-CMRSeg"}
BASELINES = [m for m in PRETRAINERS if m != "MASS"]
PAGE = Path(__file__).resolve().parents[1] / "documentation" / "benchmarks.md"


def _fewshot_results(rep, key: str, method: str) -> dict | None:
    path = rep.fewshot_output(key, method) / "results.json"
    return read_json(path) if path.is_file() else None


def _dice_values(results: dict | None, run_method: str, shots: int) -> list[float]:
    if results is None:
        return []
    return [math.nan if r["mean_dice"] is None else float(r["mean_dice"]) for r in results["runs"]
            if r["method"] == run_method and r["shots"] == shots]


def fewshot_rows(rep) -> tuple[list[str], list[tuple[str, list[list[float]]]]]:
    """(column titles, [(row name, values per column)]) in the Table 1 layout: scratch, the baselines finetuned,
    MASS in context, MASS finetuned; columns = evaluation set x k."""
    columns, cells = [], {}
    for key in EVALUATION_IDS:
        for k in rep.budget.shots:
            if not any(_dice_values(_fewshot_results(rep, key, m), "finetune", k) for m in PRETRAINERS):
                continue  # k larger than the train split (mass_fewshot skipped it)
            columns.append(f"{DATASET_TITLES[key]} {k}-shot")
            cells[("scratch", columns[-1])] = _dice_values(_fewshot_results(rep, key, "scratch"), "scratch", k)
            for method in PRETRAINERS:
                results = _fewshot_results(rep, key, method)
                cells[(f"{method} (FT)", columns[-1])] = _dice_values(results, "finetune", k)
                if method == "MASS":
                    cells[("MASS (IC)", columns[-1])] = _dice_values(results, "in_context", k)
    names = ["scratch", *(f"{m} (FT)" for m in BASELINES), "MASS (IC)", "MASS (FT)"]
    return columns, [(n, [cells.get((n, c), []) for c in columns]) for n in names]


def _bold_best(rows: list[tuple[str, list[list[float]]]], column: int) -> str | None:
    means = {name: float(np.nanmean(v)) for name, values in rows for i, v in enumerate(values)
             if i == column and v and not all(math.isnan(x) for x in v)}
    return max(means, key=means.get) if means else None


def table_markdown(columns: list[str], rows, first_header: str = "method") -> str:
    best = [_bold_best(rows, i) for i in range(len(columns))]
    body = []
    for name, values in rows:
        row = [name]
        for i, v in enumerate(values):
            cell = mean_std(v) if v else "-"
            row.append(f"**{cell}**" if name == best[i] and v else cell)
        body.append(row)
    return markdown_table([first_header, *columns], body)


def classification_rows(rep) -> tuple[list[str], list[tuple[str, list[list[float]]]], dict]:
    """Table 3 layout: rows = methods (scratch: full training; others: frozen encoder), columns = train fraction."""
    jobs = rep.classification_jobs()
    fractions = list(rep.budget.classification_fractions)
    counts, cells = {}, {}
    for method, fraction, seed, job in jobs:
        if not job.done.is_file():
            continue
        summary = read_json(job.done)
        counts[fraction] = read_json(Path(job.extra["run_folder"]) / "training_cases.json")["num_selected"]
        value = summary.get("mean_auc")
        cells.setdefault((method, fraction), []).append(math.nan if value is None else float(value))
    columns = [f"{100 * f:g} % of train ({counts.get(f, '?')} cases)" for f in fractions]
    names = ["scratch", *BASELINES, "MASS"]
    return columns, [(n if n != "scratch" else "scratch (full training)",
                      [cells.get((n, f), []) for f in fractions]) for n in names], counts


def pretraining_rows(rep) -> list[list[str]]:
    """method, trainer, batch, precision, steps, minutes of training, wall minutes of the job, loss first -> last."""
    timings = read_timings(rep.timings)
    rows = []
    for method in PRETRAINERS:
        folder = rep.pretraining_folder(method)
        records = read_metrics(folder)
        config = read_json(folder / "run_config.json") if (folder / "run_config.json").is_file() else {}
        losses = [r.get("train_loss") for r in records]
        seconds = timings.get(f"pretrain {method}")
        rows.append([method, PRETRAINERS[method], str(config.get("batch_size", "-")), str(config.get("precision", "-")),
                     str(records[-1]["global_step"]) if records else "-",
                     f"{records[-1]['trained_minutes']:.1f}" if records and "trained_minutes" in records[-1] else "-",
                     f"{seconds / 60:.1f}" if seconds else "-",
                     " → ".join(f"{x:.3f}" for x in (losses[0], losses[-1])) if len(losses) > 1 else "-"])
    return rows


def _figure_folder(rep, for_page: bool) -> Path:
    return (PAGE.parent / "figures" / "replication") if for_page else rep.workspace / "figures"


def dataset_figure(rep, key: str, out: Path) -> Path | None:
    """Reference, query (truth) and every method's prediction on the first test case, 1-shot, seed 0."""
    k, seed = rep.budget.shots[0], rep.budget.seeds[0]
    mass = _fewshot_results(rep, key, "MASS")
    if mass is None:
        return None
    first = [r for r in mass["runs"] if r["shots"] == k and r["seed"] == seed]
    if not first:
        return None
    data = resolve_labelled_dataset(rep.datasets()[key], rep.paths, rep.plans_name, CONFIGURATION)
    shots = read_json(Path(next(r for r in first if r["method"] == "finetune")["run_folder"]) / "shots.json")
    reference, query = data.raw_cases([shots["training_cases"][0], data.labelled_cases("test")[0]])
    panels = [(f"reference {reference.case_id}", reference.images[0], reference.label),
              (f"query {query.case_id} (truth)", query.images[0], query.label)]
    for method, run_method, title in [("scratch", "scratch", "scratch"), *((m, "finetune", f"{m} FT") for m in
                                      BASELINES), ("MASS", "in_context", "MASS IC"), ("MASS", "finetune", "MASS FT")]:
        results = _fewshot_results(rep, key, method)
        run = next((r for r in (results or {}).get("runs", []) if r["method"] == run_method and r["shots"] == k
                    and r["seed"] == seed), None)
        if run is None:
            continue
        folder = Path(run["run_folder"]) / ("" if run_method == "in_context" else "test") / "predictions"
        prediction = next(folder.glob(f"{query.case_id}.*"), None)
        if prediction is not None:
            panels.append((title, query.images[0], prediction))
    path = out / f"fewshot_{key}.png"
    write_segmentation_figure(panels, path, f"{DATASET_TITLES[key]}, {k}-shot, seed {seed}", columns=6)
    return path


def pca_figure(rep, key: str, out: Path) -> Path | None:
    """Decoder features of the pretrained MASS model on the centre patch of the first test case, PCA -> RGB."""
    checkpoint = rep.checkpoint("MASS")
    if checkpoint is None or not checkpoint.is_file():
        return None
    data = resolve_labelled_dataset(rep.datasets()[key], rep.paths, rep.plans_name, CONFIGURATION)
    return write_case_feature_figure(checkpoint, data.patch_case(data.labelled_cases("test")[0]).image_path,
                                     out / f"pca_{key}.png",
                                     f"MASS pretrained on the pool: {DATASET_TITLES[key]} test case")


def copy_figures(rep, out: Path) -> dict[str, list[Path]]:
    """progress.png of every pretraining run (redrawn from its metrics.jsonl) and one mask preview per pool,
    next to the page."""
    copied = {"progress": [], "masks": []}
    for method in PRETRAINERS:
        records = read_metrics(rep.pretraining_folder(method))
        if records:
            target = out / f"progress_{method}.png"
            target.parent.mkdir(parents=True, exist_ok=True)
            write_progress_plot(records, target, f"{PRETRAINERS[method]} on the CT + MR + PET pool")
            copied["progress"].append(target)
    for dataset in rep.pool():
        configuration_folder = rep.paths.preprocessed / dataset / data_identifier(rep.plans_name, CONFIGURATION)
        previews = sorted((bank_folder(configuration_folder, "supervoxel") / "previews").glob("*.png"))
        if previews:
            copied["masks"].append(_copy(previews[0], out / f"masks_{dataset}.png"))
    return copied


def _copy(source: Path, target: Path) -> Path:
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(source, target)
    return target


def versions() -> str:
    import mass_nn
    return f"mass_nn {mass_nn.__version__}, torch {torch.__version__}, numpy {np.__version__}, " \
           f"Python {platform.python_version()}"


def _rank_sentences(columns: list[str], rows, subject: str, unit: str) -> list[str]:
    """One sentence per column: the best row, and where MASS (FT / IC / plain) stands against it (values are
    fractions, printed in %)."""
    sentences = []
    for i, column in enumerate(columns):
        means = {name: 100 * float(np.nanmean(v[i])) for name, v in rows
                 if v[i] and not all(math.isnan(x) for x in v[i])}
        if not means:
            continue
        order = sorted(means, key=means.get, reverse=True)
        mass = [n for n in order if n.startswith("MASS")]
        mass_text = ", ".join(f"{n} {means[n]:.1f} (rank {order.index(n) + 1} of {len(order)})" for n in mass)
        sentences.append(f"- {column}: best {order[0]} {means[order[0]]:.1f} {unit}; {mass_text}; "
                         f"scratch {means.get(next(n for n in means if n.startswith('scratch')), math.nan):.1f}.")
    wins = sum(1 for s in sentences if s.split("best ")[1].startswith("MASS"))
    return [f"MASS is best in {wins} of {len(sentences)} {subject} columns."] + sentences


def _setup_text(rep) -> list[str]:
    state, b = rep.state(), rep.budget
    summary = state.get("dataset_summary", {})
    pool = ", ".join(f"{v['modality']} {v['train']}" for k, v in summary.items() if k.startswith("pool_"))
    evaluation = "; ".join(f"{DATASET_TITLES[k]} ({summary[k]['folder']}): {summary[k]['train']} train / "
                           f"{summary[k]['test']} test" for k in EVALUATION_IDS if k in summary)
    finished = state.get("finished", {})
    minutes = sum(v.get("seconds", 0) for k, v in finished.items() if k != "stage_benchmarks") / 60
    run_seconds = list(read_timings(rep.timings).values())
    return [
        f"Data: `{os.path.relpath(rep.shared_data, PAGE.parents[1])}/`, converted by "
        f"`benchmarks/replication_datasets.py`. "
        f"Pretraining pool (unlabelled images, patients of every test split left out, BRATS T1c held out as in "
        f"the paper): {pool}. Evaluation sets: {evaluation}. Plans: the CPU recipe's preset `{PRESET}` (4 mm, 48³ "
        f"patch on every dataset, ResUNet 8-128); MASS trains as the recipe's `{PRETRAINERS['MASS']}`; weight-free "
        f"`supervoxel` masks. The pools have no validation split "
        f"(every image trains) and the evaluation sets none either (no early stopping).",
        f"Budget (`{b.name}`): {_pretraining_budget_text(rep)}; every finetuning run {b.finetune_epochs} × "
        f"{b.finetune_iters_per_epoch} = "
        f"{b.finetune_steps} steps; k = {list(b.shots)}, seeds {list(b.seeds)} (k above a train split's size is "
        f"skipped); classification: {b.classification_epochs} epochs at train fractions "
        f"{list(b.classification_fractions)}. {b.parallel_jobs} runs at a time, {b.threads_per_job} torch thread "
        f"each{' (pretraining: one at a time)' if b.by_minutes else ''}. Whole run: {minutes:.0f} min (stage wall "
        f"time); its {len(run_seconds)} training and evaluation runs took {sum(run_seconds) / 60:.0f} min between "
        f"them.",
        f"Machine: {machine_description()}. Versions: {versions()}. Produced by `python benchmarks/replication.py"
        + _command_flags(b) + "`.",
    ]


def _pretraining_budget_text(rep) -> str:
    b = rep.budget
    if not b.by_minutes:
        return (f"every pretraining method gets the same number of optimiser steps, {b.pretrain_epochs} × "
                f"{b.pretrain_iters_per_epoch} = {b.pretrain_steps} (batch 2; wall time differs by method and is "
                f"reported)")
    sizing = rep.state().get("pretrain_sizing", {})
    probes = ", ".join(f"{m} {v['probe_step_seconds']:.2f} s → {v['epochs']} × {v['iters']}"
                       for m, v in sizing.items())
    return (f"every pretraining method gets the same {b.pretrain_minutes:g} minutes of training, one run at a time "
            f"on all cores, at its own batch (MASS: the CPU recipe's batch {MASS_RECIPE_BATCH} at the unscaled lr; "
            f"the baselines: their trainers' default), every method in "
            f"{'bf16 where the CPU computes it natively' if b.bf16_where_native else 'fp32'}; each method's lr "
            f"schedule is laid over the steps its step time fits in the minutes, in epochs of about a minute (a "
            f"{PROBE_EPOCHS}-epoch probe of {b.probe_iters} steps per epoch: {probes}) and `mass_train "
            f"--max-minutes` stops it by the clock should the probe have read the steps too fast")


def _command_flags(b) -> str:
    """The flags of `benchmarks/replication.py` that give budget `b`."""
    if b.name == "custom":
        pretraining = (f" --pretrain-minutes {b.pretrain_minutes:g}" if b.by_minutes
                       else f" --pretrain-epochs {b.pretrain_epochs}")
        return pretraining + f" --finetune-epochs {b.finetune_epochs}"
    return " --quick" if b.name == "quick" else ""


def _scale_text(b) -> str:
    return (f"{b.pretrain_minutes:g} minutes each on the machine below (the paper: days on GPUs)" if b.by_minutes
            else f"{b.pretrain_steps} steps at batch 2")


def _reading(rep) -> list[str]:
    """The limits that hold whatever the numbers are (the per-column sentences above say who won)."""
    b = rep.budget
    return [
        f"- Scale: the pool holds tens of images (the paper: about 5,000 volumes), every method trains "
        f"{_scale_text(b)} on 48³ patches at 4 mm (the paper: 1.5 mm and 128³ on GPUs), and "
        f"finetuning gets {b.finetune_steps} steps (the paper: 50 epochs of 100 steps). These tables show where the "
        f"methods stand at a CPU budget on real data and that the whole comparison runs end to end; they do not "
        f"test the paper's claims at its scale.",
        "- Noise: test splits hold 1 to 10 cases, so one case moves a mean by several points; read a difference "
        "between rows against the std in brackets (over seeds, which change the shot cases and the finetuning "
        "initialisation, not the test cases). AUCs on the 10 test cases rest on their few positive-negative pairs.",
        "- Tumours in context: the paper itself reports MASS (IC) at 2.6-18.6 % Dice on tumour sets (KiTS, LiTS, "
        "AutoPET, BraTS T1CE; Table 2) and explains it in its supplement (Figure 8): a tumour has no "
        "cross-patient correspondence, so a reference from another patient says little about where the query's "
        "tumour is. Three of the six sets here are tumour sets; the organ sets (CHAOS MR, MS-CMRSeg, "
        "TotalSegmentator CT with one test scan) are the in-context case the method is built for.",
        "- Classification: the size labels come from the expert masks, but the source crops every image to 5 cm "
        "around the tumour, so image extent alone carries size information that any encoder can pick up.",
    ]


def _mask_summary(rep) -> str:
    banks = rep.state().get("finished", {}).get("masks", {}).get("masks", {})
    parts = [f"{name}: {b['masks']} masks for {b['cases']} cases in {b['seconds']:.0f} s" for name, b in banks.items()
             if b.get("generated")]
    return ("; ".join(parts) + ".") if parts else ""


def _image_links(paths: list[Path], relative_to: Path) -> str:
    return " ".join(f"![{p.stem}]({p.relative_to(relative_to).as_posix()})" for p in paths if p is not None)


def report_markdown(rep, figures: dict, relative_to: Path) -> str:
    seg_columns, seg_rows = fewshot_rows(rep)
    cls_columns, cls_rows, _ = classification_rows(rep)
    lines = ["## Replication: MASS vs the baselines on real CT, MR and PET (step 6)", "",
             "Does MASS beat the baselines here, on small real data? Every method is pretrained on the same pooled "
             "CT + MR + PET images, then evaluated with the step-4 protocol.", "",
             *(f"- {line}" for line in _setup_text(rep)), "",
             "### Pretraining", "", markdown_table(["method", "trainer", "batch", "precision", "steps",
                                                     "training (min)", "job wall (min)",
                                                     "train loss, first → last epoch"], pretraining_rows(rep)), "",
             "Losses are each method's own objective (not comparable across rows). Progress plots: "
             + _image_links(figures["progress"], relative_to), "",
             "Weight-free mask proposals (`supervoxel`, 2 processes): " + _mask_summary(rep) + " One case per pool: "
             + _image_links(figures["masks"], relative_to), "",
             "### Few-shot segmentation (Table 1 layout)", "",
             "Mean Dice (%) over the classes of the test split, mean (std) over seeds; FT = finetuned, IC = in "
             "context without training. Bold: best mean per column.", "", table_markdown(seg_columns, seg_rows), "",
             *(_rank_sentences(seg_columns, seg_rows, "segmentation", "%")), "",
             "### Frozen-encoder classification (Table 3 layout)", "",
             "Task: sarcoma PET, tumour larger than 10 cm (largest extent of the GTV mask; AJCC T3/T4 vs T1/T2), "
             "`labels.csv` of the PET set. Attention-pooling probe on frozen deepest features; scratch trains the "
             "whole randomly initialised encoder (the paper's 'full training' row). AUC (%) on the test split, "
             "mean (std) over seeds.", "", table_markdown(cls_columns, cls_rows), "",
             *(_rank_sentences(cls_columns, cls_rows, "classification", "AUC")), "",
             "### How to read these numbers", "", *_reading(rep), "",
             "### Figures", "", _image_links(figures["datasets"], relative_to), "",
             "Decoder features of the pretrained MASS model, 3 principal components as RGB (supplement Figure 7): "
             + _image_links(figures["pca"], relative_to), ""]
    return "\n".join(lines)


def write_report(rep) -> Path:
    """Figures + markdown; the full run replaces the `replication` section of the page, --quick and a custom
    budget write report.md in the workspace. Returns the file written."""
    for_page = rep.budget.name == "full"
    out = _figure_folder(rep, for_page)
    figures = copy_figures(rep, out)
    figures["datasets"] = [dataset_figure(rep, key, out) for key in EVALUATION_IDS]
    figures["pca"] = [pca_figure(rep, key, out) for key in ("totalseg_ct", "sts_pet")]
    if for_page:
        text = report_markdown(rep, figures, PAGE.parent)
        replace_section(PAGE, "replication", text)
        print(text)
        return PAGE
    path = rep.workspace / "report.md"
    text = report_markdown(rep, figures, rep.workspace)
    path.write_text(text)
    print(text)
    return path
