"""A small-scale replication of MASS on the real volumes of `../shared/data`, end to end, with one command.

    python benchmarks/replication.py            # the full run (about 4 h on 2 cores), writes benchmarks.md
    python benchmarks/replication.py --quick    # every stage at a token budget (< 30 min), workspace report only
    python benchmarks/replication.py --pretrain-minutes 40  # another budget, its own workspace and report.md

Stages (each resumable; re-running the command skips what is finished):
  datasets  raw datasets + patient-level splits (benchmarks/replication_datasets.py), plans + preprocessing with
            the CPU recipe's `cpu_in_context` preset (4 mm, 48³ patch on every dataset)
  masks     weight-free (supervoxel) masks of the CT, MR and PET pretraining pools
  pretrain  MASS (the CPU recipe's MASSCPUPretrainer at its batch 8) and every baseline (its default batch) on the
            pooled CT + MR + PET data, each for the same 15 minutes of training, one at a time on all cores, in bf16
            where the CPU has it natively (benchmarks/replication_budget.py); --pretrain-epochs instead gives every
            method the same optimiser steps at batch 2
  fewshot   mass_fewshot per method and evaluation set: 1-shot in context (MASS only), 1/5-shot finetuning and
            scratch, 3 seeds
  classify  frozen-encoder classification probe per method on the sarcoma size task
  report    tables, figures and the reading -> documentation/benchmarks.md (full run) or the workspace (--quick)
  stage_benchmarks  the stage benchmarks of steps 1-4 (their own scripts, each replacing its section of the page)
"""
from __future__ import annotations

import argparse
import logging
import shutil
import sys
import threading
import time
from pathlib import Path

REPOSITORY = Path(__file__).resolve().parents[1]
if str(REPOSITORY) not in sys.path:  # run as a script from anywhere: `python benchmarks/replication.py`
    sys.path.insert(0, str(REPOSITORY))

from benchmarks.replication_budget import (FULL, MASS_RECIPE_FLAGS,  # noqa: E402
                                           PROBE_EPOCHS, Budget, choose_budget, pretrain_cores,
                                           probe_step_seconds, schedule_for_minutes)
from benchmarks.replication_datasets import EVALUATION_IDS, build_replication_datasets, write_splits  # noqa: E402
from benchmarks.replication_runs import (PRESET, PRETRAINERS, classification_job, fewshot_job,  # noqa: E402
                                         pretraining_folder, pretraining_job, run_jobs)
from mass_nn.io.artifact_layout import checkpoint_path  # noqa: E402
from mass_nn.io.atomic import read_json, write_json_atomic  # noqa: E402
from mass_nn.paths import MassPaths  # noqa: E402
from mass_nn.planning.planner_settings import load_preset  # noqa: E402
from mass_nn.schema import to_dict  # noqa: E402
from mass_nn.training.metrics_log import read_metrics  # noqa: E402

logger = logging.getLogger("replication")
STAGES = ("datasets", "masks", "pretrain", "fewshot", "classify", "report", "stage_benchmarks")
METHODS = (*PRETRAINERS, "scratch")
CLASSIFICATION_DATASET = "sts_pet"


class Replication:
    """The stages over one workspace (raw / preprocessed / results roots, logs, state)."""

    def __init__(self, workspace: Path, shared_data: Path, budget: Budget):
        self.workspace, self.shared_data, self.budget = workspace, shared_data, budget
        self.paths = MassPaths.resolve(raw=str(workspace / "raw"), preprocessed=str(workspace / "preprocessed"),
                                       results=str(workspace / "results"))
        self.logs = workspace / "logs"
        self.timings = workspace / "timings.json"
        self.state_path = workspace / "state.json"
        self.state_lock = threading.Lock()
        self.plans_name = load_preset(PRESET)[1]

    # ------------------------------------------------------------------ bookkeeping
    def state(self) -> dict:
        return read_json(self.state_path) if self.state_path.is_file() else {"finished": {}}

    def update_state(self, change) -> None:
        """Read, change (a function of the state dict) and write the state atomically, one writer at a time."""
        with self.state_lock:
            state = self.state()
            change(state)
            write_json_atomic(state, self.state_path)

    def mark_finished(self, stage: str, seconds: float, **info) -> None:
        def finish(state: dict) -> None:
            state["finished"][stage] = {"seconds": round(seconds, 1), **info}
            state.get("elapsed", {}).pop(stage, None)
            state["budget"] = to_dict(self.budget)
        self.update_state(finish)

    def datasets(self) -> dict[str, str]:
        """key -> dataset folder name of every replication dataset (after the datasets stage)."""
        return self.state()["datasets"]

    # ------------------------------------------------------------------ stages
    def stage_datasets(self) -> dict:
        from mass_nn.preprocessing.plan_and_preprocess import PlanAndPreprocessOptions, plan_and_preprocess
        built = build_replication_datasets(self.shared_data, self.paths.raw)
        summary = {}
        for key, dataset in built.items():
            write_splits(dataset, self.paths.preprocessed)
            plan_and_preprocess(dataset.dataset_id, self.paths,
                                PlanAndPreprocessOptions(preset=PRESET, num_processes=2, progress=False))
            summary[key] = {"folder": dataset.folder_name, "modality": dataset.modality, "labelled": dataset.labelled,
                            **{split: len(cases) for split, cases in dataset.splits.items()}}
        self.update_state(lambda state: state.update(datasets={k: v["folder"] for k, v in summary.items()},
                                                     dataset_summary=summary))
        return {}

    def pool(self) -> list[str]:
        return [self.datasets()[f"pool_{m}"] for m in ("CT", "MR", "PET")]

    def stage_masks(self) -> dict:
        from mass_nn.masks.generate import MaskGenerationOptions, generate_masks
        counts = {}
        options = MaskGenerationOptions(generator="supervoxel", configuration="3d_cpu", plans_name=self.plans_name,
                                        num_processes=2, progress=False)
        for dataset in self.pool():
            counts[dataset] = generate_masks(dataset, self.paths, options)
        return {"masks": counts}

    def pretraining_tag(self) -> str:
        return f"repl_{self.budget.name}"

    def pretraining_folder(self, method: str) -> Path:
        return pretraining_folder(method, self.pool(), self.plans_name, self.paths, self.pretraining_tag())

    def checkpoint(self, method: str) -> Path | None:
        return None if method == "scratch" else checkpoint_path(self.pretraining_folder(method), "final")

    def sizing(self, method: str) -> dict | None:
        """A budget in minutes: `method`'s probed step time, epochs, epoch length, precision and threads."""
        return self.state().get("pretrain_sizing", {}).get(method)

    @staticmethod
    def method_flags(method: str, precision: str) -> tuple[str, ...]:
        """mass_train flags of `method` in a budget in minutes: the recipe's batch for MASS, the precision."""
        return (*(MASS_RECIPE_FLAGS if method == "MASS" else ()), "--precision", precision)

    def pretraining_job(self, method: str):
        b = self.budget
        if not b.by_minutes:
            return pretraining_job(method, self.pool(), self.plans_name, self.paths, b.pretrain_epochs,
                                   b.pretrain_iters_per_epoch, self.pretraining_tag(), self.logs)
        sizing = self.sizing(method)
        flags = (*self.method_flags(method, sizing["precision"]), "--max-minutes", f"{b.pretrain_minutes:g}")
        return pretraining_job(method, self.pool(), self.plans_name, self.paths, sizing["epochs"], sizing["iters"],
                               self.pretraining_tag(), self.logs, flags)

    def size_pretraining(self, method: str, cores: int) -> None:
        """Probe `method`'s step time with a throw-away run of its command and record the schedule that fits."""
        b = self.budget
        precision = b.pretrain_precision()
        probe = pretraining_job(method, self.pool(), self.plans_name, self.paths, PROBE_EPOCHS, b.probe_iters,
                                f"{self.pretraining_tag()}_probe", self.logs, self.method_flags(method, precision),
                                purpose="probe")
        folder = Path(probe.extra["run_folder"])
        shutil.rmtree(folder, ignore_errors=True)  # an interrupted probe starts over
        self._run([probe], parallel=1, threads=cores)
        step_seconds = probe_step_seconds(read_metrics(folder), b.probe_iters)
        shutil.rmtree(folder)
        epochs, iters = schedule_for_minutes(step_seconds, b.pretrain_minutes)
        record = {"probe_step_seconds": round(step_seconds, 4), "epochs": epochs, "iters": iters,
                  "precision": precision, "threads": cores}
        self.update_state(lambda state: state.setdefault("pretrain_sizing", {}).update({method: record}))
        logger.info("%s: %.3f s per step in the probe -> %d epochs of %d steps for %g minutes", method,
                    step_seconds, epochs, iters, b.pretrain_minutes)

    def stage_pretrain(self) -> dict:
        # MASS first: the slowest in a budget in steps (the cheap baselines fill the other slot meanwhile), the
        # method the replication is about in a budget in minutes
        methods = sorted(PRETRAINERS, key=lambda m: m != "MASS")
        if not self.budget.by_minutes:
            self._run([self.pretraining_job(m) for m in methods])
            return {}
        cores = pretrain_cores()  # one run at a time with every core: the minutes are the same for each method
        for method in methods:
            if self.sizing(method) is None:
                self.size_pretraining(method, cores)
            self._run([self.pretraining_job(method)], parallel=1, threads=self.sizing(method)["threads"])
        return {}

    def fewshot_output(self, dataset_key: str, method: str) -> Path:
        return self.workspace / "fewshot" / dataset_key / method

    def stage_fewshot(self) -> dict:
        b, mass = self.budget, self.checkpoint("MASS")
        jobs = []
        for key in EVALUATION_IDS:
            for method in METHODS:
                checkpoint = self.checkpoint(method) or mass  # scratch: mass_fewshot needs a checkpoint path
                jobs.append(fewshot_job(method, self.datasets()[key], self.plans_name, checkpoint, self.paths,
                                        list(b.shots), list(b.seeds), b.finetune_epochs, b.finetune_iters_per_epoch,
                                        self.fewshot_output(key, method), self.logs))
        self._run(jobs)
        return {}

    def classification_jobs(self):
        b, dataset = self.budget, self.datasets()[CLASSIFICATION_DATASET]
        return [(method, fraction, seed,
                 classification_job(method, dataset, self.plans_name, self.checkpoint(method), self.paths, fraction,
                                    seed, b.classification_epochs, self.logs))
                for method in METHODS for fraction in b.classification_fractions for seed in b.seeds]

    def stage_classify(self) -> dict:
        self._run([job for *_, job in self.classification_jobs()])
        return {}

    def stage_report(self) -> dict:
        from benchmarks.replication_report import write_report
        page = write_report(self)
        return {"page": str(page)}

    def stage_stage_benchmarks(self) -> dict:
        import importlib.util
        import subprocess
        missing = [m for m in ("nnunetv2", "h5py") if importlib.util.find_spec(m) is None]
        if missing:
            raise SystemExit(f"the stage benchmarks need {missing}: pip install -e \".[benchmark]\" and re-run "
                             f"(finished stages are kept)")
        scripts = ["preprocess_vs_nnunet.py", "mask_bank_vs_hdf5.py", "mask_quality_weight_free.py",
                   "pretraining_throughput.py", "inference_speed.py"]
        for script in scripts:
            logger.info("stage benchmark: %s", script)
            subprocess.run([sys.executable, str(REPOSITORY / "benchmarks" / script)], check=True)
        return {}

    def _run(self, jobs, parallel: int | None = None, threads: int | None = None) -> None:
        failed = run_jobs(jobs, parallel or self.budget.parallel_jobs, threads or self.budget.threads_per_job,
                          self.timings)
        if failed:
            names = "\n  ".join(f"{j.name}: log {j.log}" for j in failed)
            raise SystemExit(f"{len(failed)} run(s) failed; fix the cause and re-run to resume:\n  {names}")

    def check_budget(self) -> None:
        """A workspace holds the runs of one budget; finished runs of another must not be read back as this one's."""
        recorded = self.state().get("budget")
        if recorded is not None and recorded != to_dict(self.budget):
            raise SystemExit(f"{self.workspace} holds runs of budget {recorded}, not {to_dict(self.budget)}: pass "
                             f"--workspace with a new folder, or delete {self.workspace} to start over")

    def run(self, stages: list[str], redo: bool) -> None:
        self.check_budget()
        for stage in stages:
            if stage in self.state()["finished"] and not redo and stage not in ("report",):
                logger.info("stage %s: finished before, skipped", stage)
                continue
            logger.info("stage %s ...", stage)
            with StageClock(self, stage) as clock:
                info = getattr(self, f"stage_{stage}")()
            self.mark_finished(stage, clock.seconds(), **info)
            logger.info("stage %s finished in %.1f min", stage, clock.seconds() / 60)


class StageClock:
    """Wall time of a stage summed over its attempts: an interrupted attempt's time is saved every
    `every_s` seconds in the state's `elapsed`, and a resumed attempt starts from it."""

    def __init__(self, replication: Replication, stage: str, every_s: float = 30.0):
        self.replication, self.stage, self.every_s = replication, stage, every_s
        self.before = 0.0 if stage in replication.state()["finished"] else \
            replication.state().get("elapsed", {}).get(stage, 0.0)
        self.start = time.perf_counter()
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._save_periodically, daemon=True)

    def seconds(self) -> float:
        return self.before + time.perf_counter() - self.start

    def _save(self) -> None:
        self.replication.update_state(lambda s: s.setdefault("elapsed", {}).update({self.stage: self.seconds()}))

    def _save_periodically(self) -> None:
        while not self.stopped.wait(self.every_s):
            self._save()

    def __enter__(self) -> StageClock:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stopped.set()
        self.thread.join()
        self._save()  # a failed attempt keeps its time too; mark_finished drops the entry


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="token budget (< 20 min); report in the workspace only")
    parser.add_argument("--shared-data", default=str(REPOSITORY.parent / "shared" / "data"),
                        help="folder laid out like ../shared/data (default: %(default)s)")
    parser.add_argument("--workspace", help="default: benchmarks/_work/replication[_quick]")
    parser.add_argument("--stages", nargs="+", choices=STAGES, help="run only these stages (default: all; --quick "
                        "and a custom budget leave out stage_benchmarks)")
    parser.add_argument("--redo", action="store_true", help="run the chosen stages even if finished before")
    parser.add_argument("--pretrain-minutes", type=float, help="minutes of pretraining for every method, one at a "
                        f"time on all cores (default {FULL.pretrain_minutes:g}); this flag, --pretrain-epochs or "
                        "--finetune-epochs makes a custom budget, run in benchmarks/_work/replication_custom with "
                        "its report.md there")
    parser.add_argument("--pretrain-epochs", type=int, help=f"instead of minutes: pretraining epochs of "
                        f"{FULL.pretrain_iters_per_epoch} steps at batch 2 for every method (the same steps)")
    parser.add_argument("--finetune-epochs", type=int, help=f"finetuning epochs of {FULL.finetune_iters_per_epoch} "
                        f"steps (default {FULL.finetune_epochs})")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    budget = choose_budget(args.quick, args.pretrain_epochs, args.pretrain_minutes, args.finetune_epochs)
    default_workspace = REPOSITORY / "benchmarks" / "_work" / {"full": "replication"}.get(
        budget.name, f"replication_{budget.name}")
    workspace = Path(args.workspace) if args.workspace else default_workspace
    # the stage benchmarks write the page, which only the default budget's report does as well
    stages = args.stages or [s for s in STAGES if not (budget.name != "full" and s == "stage_benchmarks")]
    shared = Path(args.shared_data)
    if not shared.is_dir():
        print(f"error: {shared} not found; the replication needs the real volumes (--shared-data)", file=sys.stderr)
        return 1
    Replication(workspace.resolve(), shared.resolve(), budget).run(stages, args.redo)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
