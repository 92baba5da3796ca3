"""The step-cost section of benchmarks.md: FLOPs and share of peak of a MASS step, where its time goes, the
step against an earlier commit (MASS at two configurations, every baseline, in-context inference of one query),
and `mass_train` with and without a competing busy process. Run by `benchmarks/pretraining_throughput.py`.
"""
from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from benchmarks.measure import machine_description
from benchmarks.pretraining_workspace import (PLANS_NAME, build_trainer, ensure_phantom, loader_of,
                                              preprocess_and_generate_masks, ready_for_steps)
from benchmarks.step_comparison import SideBySide, commit_worktree, compare
from benchmarks.step_cost import (PartCost, PeakEstimate, count_flops, measure_parts, measured_sgemm_flops,
                                  part_functions, peak_fp32_flops, top_operators)
from mass_nn.datasets.labelled_data import resolve_labelled_dataset
from mass_nn.io.artifact_layout import checkpoint_path
from mass_nn.paths import MassPaths
from mass_nn.preprocessing.blosc2_storage import open_array
from mass_nn.training.data.pretraining_loader import batch_to_device
from mass_nn.training.precision import cpu_has_native_bf16

SECTION = "pretraining_step_cost"
REPOSITORY = Path(__file__).resolve().parents[1]
EARLIER_COMMIT = "a3d41a4"
BASELINES = ("MAEPretrainer", "S3DPretrainer", "SimCLRPretrainer", "ModelsGenesisPretrainer", "HiEndMAEPretrainer",
             "MiMPretrainer")
# name on the page -> (plans preset, batch size (None: the plans'), precision of the current side (None: fp32)).
# The 48³ patch at batch 16 is the step of the CPU curve's batch-16 budget (replication_cpu and cpu_in_context
# share the patch; only the spacing differs). The bf16 rows (`mass_train --precision bf16`) are measured only on a
# CPU with native bf16; the earlier side runs fp32, the only arithmetic it has on CPU.
CONFIGURATIONS = {"3d_cpu": ("cpu_only", None, None), "replication_cpu": ("replication_cpu", None, None),
                  "48³ at batch 16": ("replication_cpu", 16, None),
                  "3d_cpu, bf16": ("cpu_only", None, "bf16"), "replication_cpu, bf16": ("replication_cpu", None, "bf16"),
                  "48³ at batch 16, bf16": ("replication_cpu", 16, "bf16")}
MEMORY_REUSE_CONFIGURATION = "48³ at batch 16"


@dataclass(frozen=True)
class StepBudget:
    steps: int  # timed steps per process
    rounds: int  # alternating processes per side
    baseline_steps: int
    load_epochs: int
    load_iters: int


FULL_STEP = StepBudget(steps=4, rounds=2, baseline_steps=3, load_epochs=1, load_iters=6)
QUICK_STEP = StepBudget(steps=1, rounds=1, baseline_steps=1, load_epochs=1, load_iters=2)


@dataclass
class ConfigurationCost:
    name: str
    patch: tuple
    batch_size: int
    num_tasks: int
    parameters: int
    flops: float
    comparison: SideBySide
    parts: list[PartCost] = field(default_factory=list)
    step_top_ops: list[tuple[str, float, int]] = field(default_factory=list)
    memory_reuse: SideBySide | None = None  # the current tree with memory reuse off (earlier) and on (current)


@dataclass
class LoadRun:
    label: str
    busy: bool
    step_seconds: list[float]
    threads: list[float]


def _workspace(work: Path, name: str) -> MassPaths:
    root = work / name
    return MassPaths(raw=root / "MASS_raw", preprocessed=root / "MASS_preprocessed", results=root / "MASS_results")


def _spec(kind: str, paths: MassPaths, dataset: int, trainer: str, steps: int, threads: int, **extra) -> dict:
    return {"kind": kind, "paths": {"raw": str(paths.raw), "preprocessed": str(paths.preprocessed),
                                    "results": str(paths.results)},
            "dataset": dataset, "trainer": trainer, "configuration": "3d_cpu", "steps": steps, "threads": threads,
            **extra}


def _trainer_batches(trainer, count: int) -> list:
    loader = loader_of(trainer, 0, seed=2) if trainer.name == "MASSPretrainer" else trainer.make_train_loader(0)
    try:
        return [next(loader) for _ in range(count)]
    finally:
        loader.close()


def measure_configuration(name: str, work: Path, earlier: Path, budget: StepBudget, threads: int,
                          profile_parts: bool) -> ConfigurationCost:
    """FLOPs, parts and the side-by-side step of MASSPretrainer on the phantom planned with `name`'s preset."""
    preset, batch_size, precision = CONFIGURATIONS[name]
    paths = _workspace(work, "3d_cpu" if preset == "cpu_only" else preset)
    dataset = ensure_phantom(paths)
    preprocess_and_generate_masks(dataset, paths, preset=preset)
    trainer = build_trainer(dataset, paths, budget.steps, batch_size=batch_size)
    batches = _trainer_batches(trainer, 4)
    batch_file = work / f"batches_{name.replace('³', '3').replace(' ', '_')}.pt"
    torch.save(batches, batch_file)
    ready_for_steps(trainer, 10 ** 6)
    trainer.train_step(batches[0])
    flops = count_flops(lambda: trainer.train_step(batches[1]))
    spec = _spec("train_step", paths, dataset, "MASSPretrainer", budget.steps, threads, batches=str(batch_file),
                 batch_size=batch_size, precision=precision)
    comparison = compare(f"MASSPretrainer step, {name}", spec, earlier, work, budget.rounds,
                         earlier_changes={"precision": None})
    settings = trainer.sampler_settings
    result = ConfigurationCost(name, tuple(settings.patch_size_zyx), trainer.options.batch_size, settings.num_tasks,
                               sum(p.numel() for p in trainer.network.parameters()), flops, comparison)
    if name == MEMORY_REUSE_CONFIGURATION:
        result.memory_reuse = compare(f"MASSPretrainer step, {name}, memory reuse off vs on", spec, REPOSITORY, work,
                                      budget.rounds, earlier_changes={"memory_reuse": False})
    if profile_parts:
        functions = part_functions(trainer.network, trainer.loss, trainer.optimizer, trainer.ema,
                                   trainer.options.grad_clip, batch_to_device(batches[2], trainer.device))
        result.parts = measure_parts(functions, repeats=max(1, budget.steps - 1))
        result.step_top_ops = top_operators(lambda: trainer.train_step(batches[3]), 12)
    return result


def measure_baselines(work: Path, earlier: Path, budget: StepBudget, threads: int) -> list[SideBySide]:
    """Each baseline pretrainer's step, earlier commit vs now, on the 3d_cpu phantom and the same batches."""
    paths = _workspace(work, "3d_cpu")
    results = []
    for name in BASELINES:
        trainer = build_trainer(990, paths, budget.baseline_steps, trainer_name=name)
        trainer.options.num_workers = 0
        batch_file = work / f"batches_{name}.pt"
        torch.save(_trainer_batches(trainer, 3), batch_file)
        spec = _spec("train_step", paths, 990, name, budget.baseline_steps, threads, batches=str(batch_file))
        results.append(compare(f"{name} step", spec, earlier, work, budget.rounds))
    return results


def measure_inference(work: Path, earlier: Path, budget: StepBudget, threads: int) -> SideBySide:
    """Segmenting one phantom test case (sliding window, cached reference of every class) with a 2-step MASS
    checkpoint, earlier commit vs now."""
    paths = _workspace(work, "3d_cpu")
    command = [sys.executable, "-m", "mass_nn.cli.train", "PRETRAIN", "-d", "990", "-c", "3d_cpu", "--device", "cpu",
               "--epochs", "1", "--iters-per-epoch", "2", "--val-batches", "1", "--tag", "step_cost", "--continue",
               "--raw", str(paths.raw), "--preprocessed", str(paths.preprocessed), "--results", str(paths.results)]
    subprocess.run(command, check=True, capture_output=True)
    data = resolve_labelled_dataset("990", paths, PLANS_NAME, "3d_cpu")
    image, label = data.preprocessed_pairs(data.labelled_cases("train")[:1])[0]
    classes = [int(v) for v in data.classes.values() if (label == v).any()]
    test_ids = data.labelled_cases("test") or data.labelled_cases("val")
    arrays = work / "inference_arrays.npz"
    np.savez(arrays, reference_image=image, reference_label=label,
             query_image=np.asarray(open_array(data.patch_case(test_ids[0]).image_path)))
    checkpoint = checkpoint_path(next(paths.results.glob("*/MASSPretrainer__MassPlans__3d_cpu__step_cost")), "final")
    plans = next(paths.preprocessed.glob("*/MassPlans.json"))
    spec = _spec("in_context_query", paths, 990, "MASSPretrainer", max(2, budget.steps - 1), threads,
                 checkpoint=str(checkpoint), arrays=str(arrays), classes=classes, plans=str(plans))
    return compare("in-context segmentation of one query (labels alone, overlap 0.5)", spec, earlier, work,
                   budget.rounds)


def mass_train_under_load(source: Path, label: str, busy: bool, work: Path, budget: StepBudget,
                          extra_args: tuple[str, ...] = ()) -> LoadRun:
    """A `mass_train PRETRAIN` run with `source`'s mass_nn and its own defaults (threads, workers), optionally
    beside a busy program (one process spinning on a core); the per-epoch step seconds from metrics.jsonl."""
    paths = _workspace(work, "3d_cpu")
    tag = f"load_{label}_{'busy' if busy else 'idle'}"
    # the earlier tree reads the current plans through step_runner's shadow root (fields it does not know left out)
    command = [sys.executable, "-c", f"import sys; sys.path.insert(0, {str(source)!r}); "
               f"sys.path.insert(1, {str(REPOSITORY / 'benchmarks')!r}); "
               "from step_runner import roots_this_tree_reads; i = sys.argv.index('--preprocessed'); "
               "sys.argv[i + 1] = roots_this_tree_reads({'preprocessed': sys.argv[i + 1]})['preprocessed']; "
               "from mass_nn.cli.train import main; raise SystemExit(main())",
               "PRETRAIN", "-d", "990", "-c", "3d_cpu", "--device", "cpu", "--epochs", str(budget.load_epochs),
               "--iters-per-epoch", str(budget.load_iters), "--val-batches", "1", "--tag", tag, "--raw",
               str(paths.raw), "--preprocessed", str(paths.preprocessed), "--results", str(paths.results),
               *extra_args]
    for folder in paths.results.glob(f"*/MASSPretrainer__MassPlans__3d_cpu__{tag}"):
        shutil.rmtree(folder)
    spinner = subprocess.Popen([sys.executable, "-c", "while True: pass"]) if busy else None
    try:
        environment = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
        subprocess.run(command, check=True, capture_output=True, env={**environment, "TQDM_DISABLE": "1"}, cwd=work)
    finally:
        if spinner is not None:
            spinner.kill()
            spinner.wait()
    metrics = next(paths.results.glob(f"*/MASSPretrainer__MassPlans__3d_cpu__{tag}/metrics.jsonl"))
    records = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()]
    run = LoadRun(label, busy, [r["step_seconds"] for r in records], [r.get("train_threads", 0.0) for r in records])
    print(f"  mass_train {label}, {'busy' if busy else 'idle'}: step {statistics.median(run.step_seconds):.3g} s",
          flush=True)
    return run


# ----------------------------------------------------------------------------------------------- the page
def _ops(ops: list[tuple[str, float, int]], count: int = 3) -> str:
    return ", ".join(f"`{name}` {1e3 * seconds:.0f} ms ×{calls}" for name, seconds, calls in ops[:count])


def _verdict(value: float, target: float, higher_is_better: bool = True) -> str:
    met = value >= target if higher_is_better else value <= target
    return "meets" if met else "**misses**"


def section(peak: PeakEstimate, sgemm: float, configurations: list[ConfigurationCost], baselines: list[SideBySide],
            inference: SideBySide | None, load: list[LoadRun], threads: int, seconds: float, quick: bool) -> str:
    lines = [
        f"## Pretraining step: FLOPs, share of peak, and the step against commit {EARLIER_COMMIT}",
        "",
        f"Machine: {machine_description()}. Peak fp32: {peak.formula()} (how: `benchmarks/step_cost.py`). "
        f"Measured sgemm (1536³, {threads} threads): {sgemm / 1e9:.0f} GFLOP/s. Steps run with {threads} torch "
        f"threads on both sides, on the same saved batches, each side in its own process, sides alternating; "
        f"FLOPs are the matrix products and convolutions of forward + backward "
        f"(`torch.utils.flop_counter.FlopCounterMode`). Produced by `python benchmarks/pretraining_throughput.py "
        f"--only step{' --quick' if quick else ''}` in {seconds / 60:.1f} min.",
        "",
        f"| configuration | patch, batch, K, parameters | GFLOP per step | {EARLIER_COMMIT} (s/step) | now (s/step) | "
        "**speed-up** | GFLOP/s before → now | share of peak before → now | share of sgemm now |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for c in configurations:
        before, now = statistics.median(c.comparison.earlier), statistics.median(c.comparison.current)
        rate_before, rate_now = c.flops / before, c.flops / now
        lines.append(f"| {c.name} (phantom) | {'×'.join(map(str, c.patch))}, {c.batch_size}, {c.num_tasks}, "
                     f"{c.parameters:,} | {c.flops / 1e9:.1f} | {before:.2f} | {now:.2f} | "
                     f"**{c.comparison.ratio:.2f}×** | {rate_before / 1e9:.1f} → {rate_now / 1e9:.1f} | "
                     f"{100 * rate_before / peak.flops:.0f} % → {100 * rate_now / peak.flops:.0f} % | "
                     f"{100 * rate_now / sgemm:.0f} % |")
    reuse = next((c for c in configurations if c.memory_reuse is not None), None)
    if reuse is not None:
        off, on = statistics.median(reuse.memory_reuse.earlier), statistics.median(reuse.memory_reuse.current)
        lines += ["", f"Memory reuse ([pretraining.md](pretraining.md#memory-reuse)), the current tree at {reuse.name} "
                      f"with it off and on, same batches: {off:.2f} → {on:.2f} s per step, "
                      f"**{reuse.memory_reuse.ratio:.2f}×**. The `now` column above has it on, as `mass_train` does."]
    profiled = next((c for c in configurations if c.parts), None)
    if profiled is not None:
        total = sum(p.seconds for p in profiled.parts)
        lines += ["", f"Where the time of one {profiled.name} step goes now (each part's forward + backward alone, "
                      "median; top operators by self CPU time):", "",
                  "| part | ms | share | GFLOP | GFLOP/s | top operators |", "|---|---|---|---|---|---|"]
        for p in profiled.parts:
            rate = f"{p.flops / p.seconds / 1e9:.1f}" if p.flops else "–"
            lines.append(f"| {p.name} | {1e3 * p.seconds:.0f} | {100 * p.seconds / total:.0f} % | "
                         f"{p.flops / 1e9:.2f} | {rate} | {_ops(p.top_ops)} |")
        lines += [f"| sum of parts | {1e3 * total:.0f} | | {sum(p.flops for p in profiled.parts) / 1e9:.1f} | | |",
                  "", "Top operators of the whole step (self CPU time): " + _ops(profiled.step_top_ops, 8) + "."]
    if baselines or inference is not None:
        lines += ["", f"| other steps, same batches | {EARLIER_COMMIT} (s) | now (s) | ratio |", "|---|---|---|---|"]
        for b in [*baselines, *([inference] if inference is not None else [])]:
            lines.append(f"| {b.what} | {statistics.median(b.earlier):.3g} | {statistics.median(b.current):.3g} | "
                         f"{b.ratio:.2f}× |")
    if load:
        lines += ["", "`mass_train PRETRAIN` on the 3d_cpu phantom with each version's own defaults (threads, loader "
                      "workers), alone and beside one busy program (a process spinning on one core):", "",
                  "| version | idle (s/step) | beside a busy program (s/step) | **slow-down** | threads idle / busy |",
                  "|---|---|---|---|---|"]
        for label in dict.fromkeys(run.label for run in load):
            idle = next(r for r in load if r.label == label and not r.busy)
            busy = next(r for r in load if r.label == label and r.busy)
            idle_s, busy_s = statistics.median(idle.step_seconds), statistics.median(busy.step_seconds)
            threads = (f"{statistics.fmean(idle.threads):.1f} / {statistics.fmean(busy.threads):.1f}"
                       if min(idle.threads + busy.threads) > 0 else "not recorded (torch's default: all cores)")
            lines.append(f"| {label} | {idle_s:.2f} | {busy_s:.2f} | **{busy_s / idle_s:.2f}×** | {threads} |")
    lines += ["", reading(peak, configurations, baselines, inference, load)]
    return "\n".join(lines)


def reading(peak: PeakEstimate, configurations: list[ConfigurationCost], baselines: list[SideBySide],
            inference: SideBySide | None, load: list[LoadRun]) -> str:
    """The sentences under the tables, written from the numbers against the issue's targets."""
    sentences = []
    for c in configurations:
        share = c.flops / statistics.median(c.comparison.current) / peak.flops
        if CONFIGURATIONS[c.name][2] == "bf16":
            target = ("" if CONFIGURATIONS[c.name][1] is not None
                      else f", which {_verdict(c.comparison.ratio, 2.0)} the 2× target in bf16")
            sentences.append(f"{c.name} (opt-in `--precision bf16`, CPUs with native bf16): "
                             f"{c.comparison.ratio:.2f}× the steps/s of {EARLIER_COMMIT} in fp32{target}, "
                             f"{100 * share:.0f} % of the fp32 peak")
            continue
        if CONFIGURATIONS[c.name][1] is not None:  # not one of the configurations: no target to judge
            sentences.append(f"{c.name}: {c.comparison.ratio:.2f}× the steps/s of {EARLIER_COMMIT}, "
                             f"{100 * share:.0f} % of peak")
            continue
        sentences.append(f"{c.name}: {c.comparison.ratio:.2f}× the steps/s of {EARLIER_COMMIT}, which "
                         f"{_verdict(c.comparison.ratio, 2.0)} the 2× target; {100 * share:.0f} % of peak, which "
                         f"{_verdict(share, 0.25)} the 25 % aim")
    slowest = min([*baselines, *([inference] if inference is not None else [])], key=lambda b: b.ratio, default=None)
    if slowest is not None:
        sentences.append(f"the slowest of the other steps is {slowest.what} at {slowest.ratio:.2f}× (below 0.9× "
                         "would be a regression beyond this machine's run-to-run spread)")
    current = [r for r in load if r.label == "now"]
    if len(current) == 2:
        idle, busy = (statistics.median(r.step_seconds) for r in sorted(current, key=lambda r: r.busy))
        sentences.append(f"beside a busy program the default `mass_train` slows down {busy / idle:.2f}×, which "
                         f"{_verdict(busy / idle, 2.0, higher_is_better=False)} the ≤ 2× target")
    return "Reading: " + "; ".join(sentences) + "."


def run_step_cost(work: Path, quick: bool) -> str:
    """Every measurement of the section, in one run; returns the section's markdown."""
    started = time.perf_counter()
    budget = QUICK_STEP if quick else FULL_STEP
    threads = torch.get_num_threads()
    peak, sgemm = peak_fp32_flops(), measured_sgemm_flops()
    print(f"peak {peak.formula()}; sgemm {sgemm / 1e9:.0f} GFLOP/s", flush=True)
    names = ["3d_cpu"] if quick else [name for name, (_, _, precision) in CONFIGURATIONS.items()
                                      if precision != "bf16" or cpu_has_native_bf16()]
    with commit_worktree(EARLIER_COMMIT) as earlier:
        configurations = [measure_configuration(name, work, earlier, budget, threads, profile_parts=name == "3d_cpu")
                          for name in names]
        baselines = [] if quick else measure_baselines(work, earlier, budget, threads)
        inference = measure_inference(work, earlier, budget, threads)
        load = [mass_train_under_load(source, label, busy, work, budget)
                for source, label in ((earlier, EARLIER_COMMIT), (REPOSITORY, "now"))
                for busy in (False, True)]
    return section(peak, sgemm, configurations, baselines, inference, load, threads,
                   time.perf_counter() - started, quick)
