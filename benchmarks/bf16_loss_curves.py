"""bf16 autocast on CPU against fp32: do the loss curves match over a few hundred steps, and how much faster is it?

Issue 14 allows bf16 on CPUs that support it "only if the loss curves match fp32 over a few hundred steps". For
each workload, on the phantom, in one quiet run, `mass_train PRETRAIN` trains three times with the same settings:
fp32 with seed 0, bf16 with seed 0 (same weights and batches) and fp32 with seed 1. The seed-1 run is the yardstick:
two fp32 runs that differ only in their draw show how far apart curves of the same recipe land. bf16 matches when
its distance to the seed-0 fp32 curve is within that spread. Distances are per epoch, of the mean train loss and
of the in-context Dice on the phantom's labelled val case.

Workloads:
  3d_cpu   MASSPretrainer, MassPlans 3d_cpu (64×48×48, batch 2, 13 tasks): the configuration of the issue's target.
  demo     MASSCPUPretrainer, the demo preset (32³, deepest level 2³, where bf16 needs SmallMapSafeConv3d).

Usage: python benchmarks/bf16_loss_curves.py [--workloads 3d_cpu demo] [--epochs 6] [--iters 50] [--quick]
       [--workdir DIR] [--no-write]
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.measure import machine_description, publish_section  # noqa: E402
from benchmarks.pretraining_workspace import ensure_phantom, preprocess_and_generate_masks  # noqa: E402
from mass_nn.paths import MassPaths  # noqa: E402
from mass_nn.training.metrics_log import read_metrics  # noqa: E402
from mass_nn.training.precision import cpu_has_native_bf16  # noqa: E402
from mass_nn.training.run_folder import run_folder  # noqa: E402

SECTION = "bf16_loss_curves"
PAGE = REPO / "documentation" / "benchmarks.md"
SIDES = (("fp32", 0), ("bf16", 0), ("fp32", 1))


@dataclass(frozen=True)
class Workload:
    name: str
    trainer: str
    preset: str
    plans_name: str
    settings: tuple[str, ...] = ()


WORKLOADS = {
    "3d_cpu": Workload("3d_cpu", "MASSPretrainer", "cpu_only", "MassPlans"),
    "demo": Workload("demo", "MASSCPUPretrainer", "demo_in_context", "MassPlansDemo", ("distant_query=0",)),
}


def train(workload: Workload, precision: str, seed: int, epochs: int, iters: int, paths: MassPaths,
          dataset_id: int) -> list[dict]:
    """One mass_train run (resumed if it exists); its per-epoch metrics records."""
    tag = f"bf16_curves_{precision}_seed{seed}"
    command = [sys.executable, "-m", "mass_nn.cli.train", "PRETRAIN", "-d", str(dataset_id), "-tr",
               workload.trainer, "-p", workload.plans_name, "-c", "3d_cpu", "--epochs", str(epochs),
               "--iters-per-epoch", str(iters), "--precision", precision, "--seed", str(seed), "--tag", tag,
               "--device", "cpu", "--val-dataset", str(dataset_id), "--continue"]
    for setting in workload.settings:
        command += ["-s", setting]
    env = {**os.environ, "MASS_raw": str(paths.raw), "MASS_preprocessed": str(paths.preprocessed),
           "MASS_results": str(paths.results)}
    started = time.perf_counter()
    result = subprocess.run(command, env=env, capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{result.stdout[-2000:]}\n{result.stderr[-3000:]}")
    print(f"  {workload.name} {precision} seed {seed}: {time.perf_counter() - started:.0f} s", flush=True)
    dataset_name = next(d.name for d in paths.raw.glob(f"Dataset{dataset_id}_*"))
    return read_metrics(run_folder(paths.results, dataset_name, workload.trainer, workload.plans_name, "3d_cpu",
                                   tag))


def largest_gap(first: list[dict], second: list[dict], key: str) -> float:
    """The largest per-epoch |difference| of one metric between two runs."""
    return max(abs(a[key] - b[key]) for a, b in zip(first, second))


def workload_rows(workload: Workload, runs: dict[tuple[str, int], list[dict]]) -> tuple[list[str], str]:
    fp32, bf16, other_seed = (runs[side] for side in SIDES)
    rows = []
    for epoch, (a, b, c) in enumerate(zip(fp32, bf16, other_seed), start=1):
        rows.append(f"| {workload.name} | {epoch} | {a['train_loss']:.4f} / {b['train_loss']:.4f} / "
                    f"{c['train_loss']:.4f} | {100 * a['val_dice']:.1f} / {100 * b['val_dice']:.1f} / "
                    f"{100 * c['val_dice']:.1f} | {a['step_seconds']:.3f} / {b['step_seconds']:.3f} |")
    step_fp32 = statistics.median(r["step_seconds"] for r in fp32)
    step_bf16 = statistics.median(r["step_seconds"] for r in bf16)
    verdicts = []
    for key, label in (("train_loss", "train loss"), ("val_dice", "val in-context Dice")):
        precision_gap, seed_gap = largest_gap(fp32, bf16, key), largest_gap(fp32, other_seed, key)
        verdicts.append(f"{label}: largest gap bf16 vs fp32 {precision_gap:.4f}, seed 1 vs seed 0 {seed_gap:.4f} "
                        f"({'within' if precision_gap <= seed_gap else '**outside**'} the seed spread)")
    reading = (f"{workload.name}: {'; '.join(verdicts)}; step {step_fp32:.3f} → {step_bf16:.3f} s, "
               f"**{step_fp32 / step_bf16:.2f}×** (median over epochs).")
    return rows, reading


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workloads", nargs="+", choices=sorted(WORKLOADS), default=["3d_cpu", "demo"])
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--iters", type=int, default=50, help="steps per epoch (default: %(default)s)")
    parser.add_argument("--workdir", type=Path, default=REPO / "benchmarks" / "_work" / "bf16_loss_curves")
    parser.add_argument("--quick", action="store_true", help="2 epochs of 3 steps, the demo workload: a smoke run")
    parser.add_argument("--no-write", action="store_true", help="print the section, leave the page alone")
    args = parser.parse_args(argv)
    if args.quick:
        args.epochs, args.iters, args.workloads = 2, 3, ["demo"]
    paths = MassPaths(raw=args.workdir / "MASS_raw", preprocessed=args.workdir / "MASS_preprocessed",
                      results=args.workdir / ("MASS_results_quick" if args.quick else "MASS_results"))
    dataset_id = ensure_phantom(paths)
    started = time.perf_counter()
    rows, readings = [], []
    for name in args.workloads:
        workload = WORKLOADS[name]
        preprocess_and_generate_masks(dataset_id, paths, preset=workload.preset)
        runs = {side: train(workload, *side, args.epochs, args.iters, paths, dataset_id) for side in SIDES}
        table_rows, reading = workload_rows(workload, runs)
        rows += table_rows
        readings.append(reading)
    native = {True: "has native bf16 (avx512_bf16 / amx_bf16)", False: "has no native bf16",
              None: "did not report its flags"}[cpu_has_native_bf16()]
    body = "\n".join([
        "## bf16 autocast on CPU against fp32: loss curves and step time",
        "",
        f"Machine: {machine_description()}; the CPU {native}. `mass_train PRETRAIN` on the phantom, {args.epochs} "
        f"epochs × {args.iters} steps per run, default threads, in-context Dice of the phantom's val case after each "
        f"epoch; three runs per workload: fp32 seed 0 / bf16 seed 0 / fp32 seed 1 (the yardstick: how far two fp32 "
        f"runs of the same recipe land apart). Produced by `python benchmarks/bf16_loss_curves.py` in "
        f"{(time.perf_counter() - started) / 60:.1f} min.",
        "",
        "| workload | epoch | train loss fp32 / bf16 / fp32 seed 1 | val in-context Dice % (same order) | "
        "s per step fp32 / bf16 |",
        "|---|---|---|---|---|",
        *rows,
        "",
        "Reading: " + " ".join(readings),
    ])
    publish_section(PAGE, SECTION, body, write=not (args.no_write or args.quick))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
