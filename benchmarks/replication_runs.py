"""The replication's training and evaluation runs as command lines of the toolkit's own CLIs, run a few at a time.

Every run is resumable by the CLI itself (`--continue`, mass_fewshot's read-back), and a run whose result file
exists is not started again, so re-running the replication picks up where it stopped.
"""
from __future__ import annotations

import logging
import os
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from mass_nn.io.artifact_layout import checkpoint_path
from mass_nn.io.atomic import read_json, write_json_atomic
from mass_nn.paths import MassPaths
from mass_nn.training.run_folder import probe_run_tag, run_folder

logger = logging.getLogger(__name__)

# Row name -> pretraining trainer. "scratch" has no pretraining: FINETUNE without --pretrained. MASS runs as the
# CPU recipe's trainer (documentation/pretraining.md#the-cpu-recipe), the baselines with their own defaults.
PRETRAINERS = {"MASS": "MASSCPUPretrainer", "MAE": "MAEPretrainer", "S3D": "S3DPretrainer",
               "SimCLR": "SimCLRPretrainer", "ModelsGenesis": "ModelsGenesisPretrainer",
               "HiEndMAE": "HiEndMAEPretrainer", "MiM": "MiMPretrainer"}
CONFIGURATION = "3d_cpu"
PRESET = "cpu_in_context"  # the CPU recipe's grid (4 mm, 48³): every method and evaluation set uses its plans


@dataclass
class Job:
    """One CLI call. `done` is the file whose presence means the job finished (then it is not run again)."""

    name: str
    argv: list[str]
    log: Path
    done: Path
    seconds: float | None = None
    returncode: int | None = None
    extra: dict = field(default_factory=dict)


def _cli(module: str) -> list[str]:
    return [sys.executable, "-m", f"mass_nn.cli.{module}"]


def path_flags(paths: MassPaths) -> list[str]:
    return ["--raw", str(paths.raw), "--preprocessed", str(paths.preprocessed), "--results", str(paths.results)]


def pretraining_folder(method: str, pool: list[str], plans_name: str, paths: MassPaths, tag: str) -> Path:
    """The run folder of `method`'s pretraining on the pool: in the first pool dataset's results folder."""
    return paths.results / pool[0] / f"{PRETRAINERS[method]}__{plans_name}__{CONFIGURATION}__{tag}"


def pretraining_job(method: str, pool: list[str], plans_name: str, paths: MassPaths, epochs: int, iters: int,
                    tag: str, logs: Path, extra_flags: tuple[str, ...] = (), purpose: str = "pretrain") -> Job:
    """Pretrain `method` on the pool datasets (`purpose` names the job and its log: "pretrain", or "probe" for a
    throw-away run that times the steps); `extra_flags` go to mass_train as they are."""
    folder = pretraining_folder(method, pool, plans_name, paths, tag)
    argv = [*_cli("train"), "PRETRAIN", "-d", *pool, "-tr", PRETRAINERS[method], "-c", CONFIGURATION,
            "-p", plans_name, "--epochs", str(epochs), "--iters-per-epoch", str(iters), "--tag", tag, "--continue",
            *extra_flags, *path_flags(paths)]
    if method == "MASS":
        argv += ["--masks", "supervoxel"]
    return Job(f"{purpose} {method}", argv, logs / f"{purpose}_{method}.log", checkpoint_path(folder, "final"),
               extra={"run_folder": str(folder)})


def fewshot_job(method: str, dataset: str, plans_name: str, checkpoint: Path, paths: MassPaths, shots: list[int],
                seeds: list[int], epochs: int, iters: int, output: Path, logs: Path) -> Job:
    """The few-shot protocol of one method on one dataset: in context (MASS only) + finetuned, or scratch."""
    argv = [*_cli("fewshot"), "-d", dataset, "--checkpoint", str(checkpoint), "-k", *map(str, shots),
            "--seeds", *map(str, seeds), "-c", CONFIGURATION, "-p", plans_name, "--epochs", str(epochs),
            "--iters-per-epoch", str(iters), "--tag", f"repl_{method}", "-o", str(output), *path_flags(paths)]
    if method == "scratch":
        argv += ["--no-in-context", "--no-finetune", "--scratch"]
    elif method != "MASS":
        argv += ["--no-in-context"]
    return Job(f"few-shot {method} on {dataset}", argv, logs / f"fewshot_{dataset}_{method}.log",
               output / "results.json")


def classification_job(method: str, dataset: str, plans_name: str, checkpoint: Path | None, paths: MassPaths,
                       fraction: float, seed: int, epochs: int, logs: Path) -> Job:
    """Frozen-encoder classification probe (attention pooling on the deepest features) of a pretrained method;
    without a checkpoint (scratch) the whole encoder is trained, as the paper's "full training" row."""
    tag = f"repl_{method}"
    folder = run_folder(paths.results, dataset, "ClassificationProbe", plans_name, CONFIGURATION,
                        probe_run_tag(checkpoint, fraction, seed, checkpoint is None, tag))
    argv = [*_cli("train"), "FINETUNE", "-d", dataset, "-tr", "ClassificationProbe", "-c", CONFIGURATION,
            "-p", plans_name, "--train-fraction", str(fraction), "--seed", str(seed), "--epochs", str(epochs),
            "--tag", tag, "--continue", *path_flags(paths)]
    argv += ["--pretrained", str(checkpoint)] if checkpoint is not None else ["-s", "finetune_encoder=true"]
    return Job(f"classification {method} frac {fraction:g} seed {seed}", argv,
               logs / f"classify_{method}_frac{fraction:g}_seed{seed}.log", folder / "test_summary.json",
               extra={"run_folder": str(folder)})


def _run_one(job: Job, threads: int, timings: Path, lock: threading.Lock) -> Job:
    if job.done.is_file():
        logger.info("done before: %s", job.name)
        job.returncode = 0
        return job
    logger.info("start: %s", job.name)
    job.log.parent.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads), "TQDM_DISABLE": "1"}
    start = time.perf_counter()
    with open(job.log, "a") as log:
        job.returncode = subprocess.call(job.argv, stdout=log, stderr=subprocess.STDOUT, env=env)
    job.seconds = time.perf_counter() - start
    with lock:  # wall time per job, kept across resumed runs (a resumed job adds its time)
        recorded = read_timings(timings)
        recorded[job.name] = recorded.get(job.name, 0.0) + job.seconds
        write_json_atomic(recorded, timings)
    state = "finished" if job.returncode == 0 and job.done.is_file() else f"FAILED (exit {job.returncode})"
    logger.info("%s: %s in %.0f s; log %s", state, job.name, job.seconds, job.log)
    return job


def read_timings(timings: Path) -> dict[str, float]:
    """Job name -> wall seconds summed over its attempts (empty before the first job ends)."""
    return read_json(timings) if timings.is_file() else {}


def run_jobs(jobs: list[Job], parallel: int, threads_per_job: int, timings: Path) -> list[Job]:
    """Run `jobs`, `parallel` at a time, each CLI with `threads_per_job` torch threads; returns the failed ones."""
    lock = threading.Lock()
    with ThreadPoolExecutor(max_workers=max(1, parallel)) as pool:
        finished = list(pool.map(lambda j: _run_one(j, threads_per_job, timings, lock), jobs))
    return [j for j in finished if j.returncode != 0 or not j.done.is_file()]
