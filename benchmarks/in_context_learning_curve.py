"""Does the pretrained model know anatomy? The in-context learning curve of the CPU recipe on organ-level MR.

    python benchmarks/in_context_learning_curve.py            # about 1 h pretraining + the comparison; writes
                                                              # the in_context_learning_curve section of benchmarks.md
    python benchmarks/in_context_learning_curve.py --quick    # every stage at a token budget, workspace report only
    python benchmarks/in_context_learning_curve.py --gpu --reuse-datasets-from benchmarks/_work/in_context_curve
                                                              # the recipe at batch 16 for 900 steps on a CUDA
                                                              # device (bf16 autocast), its own section
    python benchmarks/in_context_learning_curve.py --batch16 [--bf16]  # batch 16 on the CPU for 600 steps (about
                                                              # an hour on 2 AVX-512 cores); --bf16: in bf16, where
                                                              # the CPU has it natively, as many 60-step epochs
                                                              # as fit in 58 minutes of training on this
                                                              # machine (--max-minutes), at most 17, on the
                                                              # 17 epochs' lr schedule; each its own section
    python benchmarks/in_context_learning_curve.py --batch8 --bf16  # the bf16 hour at batch 8: 120-step epochs,
                                                              # about twice the steps of --batch16 --bf16 in the
                                                              # same minutes, at most 17 epochs on their schedule;
                                                              # its own section
    python benchmarks/in_context_learning_curve.py --batch16 --bf16 --grid-6mm  # the bf16 hour on the 6 mm grid
                                                              # with a 32³ patch (preset cpu_in_context_6mm): 2.2x
                                                              # the steps in the same minutes here, at most 40
                                                              # epochs; its own section

Stages (each resumable; re-running the command skips what is finished, an interrupted pretraining continues):
  datasets  raw CHAOS MR (705) and MS-CMRSeg (706) with their fixed patient splits, and the MR pretraining pool
            (712: the train patients of both, BRATS FLAIR, pyradiomics MR, TotalSegmentator MR, sarcoma T1), planned
            and preprocessed with the recipe's preset (--grid-6mm: cpu_in_context_6mm)
  masks     weight-free (supervoxel) masks of the pool
  pretrain  the recipe trainer on the pool; after every epoch the pretext Dice on the pool's held-out cases and
            1-shot in-context Dice per structure on the CHAOS and MS-CMRSeg val patients (3 reference choices)
  compare   on the test patients, 1-shot: MASS in context (threshold 0.5 and reference-calibrated), the same
            network untrained in context, MASS finetuned and scratch finetuned (same steps), mean (std) over the shot
            seeds, each scored on its label maps and on each structure's own claim (the release's evaluator), with
            a reference / query / prediction figure per dataset
  report    the curve (table + figure), the comparison and the PCA figure -> benchmarks.md (full run) or the
            workspace's report.md (--quick)
"""
from __future__ import annotations

import argparse
import json
import logging
import shutil
import sys
from dataclasses import MISSING, asdict, dataclass, fields, replace
from pathlib import Path

import numpy as np
import torch

REPOSITORY = Path(__file__).resolve().parents[1]
if str(REPOSITORY) not in sys.path:  # run as a script from anywhere
    sys.path.insert(0, str(REPOSITORY))

from benchmarks.in_context_curve_report import write_curve_report  # noqa: E402
from benchmarks.measure import machine_description  # noqa: E402
from benchmarks.replication_datasets import (ReplicationDataset, pool_images, sts_patients,  # noqa: E402
                                             sts_test_patients, write_organ_mr, write_pool, write_splits)
from benchmarks.staged_run import run_stages  # noqa: E402
from mass_nn.evaluation.in_context_protocol import finished_evaluation, in_context_evaluation  # noqa: E402
from mass_nn.experiments.few_shot_protocol import FewShotProtocol, run_few_shot_protocol  # noqa: E402
from mass_nn.inference.model_loading import load_in_context_checkpoint  # noqa: E402
from mass_nn.io.artifact_layout import checkpoint_path  # noqa: E402
from mass_nn.io.atomic import read_json, write_json_atomic  # noqa: E402
from mass_nn.masks.generate import MaskGenerationOptions, generate_masks  # noqa: E402
from mass_nn.model.checkpoint import save_untrained_copy  # noqa: E402
from mass_nn.paths import MassPaths  # noqa: E402
from mass_nn.planning.planner_settings import load_preset  # noqa: E402
from mass_nn.preprocessing.plan_and_preprocess import PlanAndPreprocessOptions, plan_and_preprocess  # noqa: E402
from mass_nn.training.options import TrainingOptions  # noqa: E402
from mass_nn.training.pretrain.validation import InContextValidation, PretrainingValidation  # noqa: E402
from mass_nn.training.run_folder import run_folder  # noqa: E402
from mass_nn.training.run_training import run_training  # noqa: E402

logger = logging.getLogger("in_context_curve")
STAGES = ("datasets", "masks", "pretrain", "compare", "report")
RECIPE_PRESET = "cpu_in_context"
RECIPE_TRAINER = "MASSCPUPretrainer"
CONFIGURATION = "3d_cpu"
EVALUATION = ("chaos_mr", "mscmrseg")
POOL_VAL_CASES, POOL_VAL_SEED = 2, 11  # pool cases held out for the pretext Dice


@dataclass(frozen=True)
class CurveBudget:
    """Pretraining steps (epochs x iters; one curve point per epoch) and the comparison's finetuning steps."""

    name: str
    pretrain_epochs: int
    pretrain_iters_per_epoch: int
    finetune_epochs: int
    finetune_iters_per_epoch: int
    seeds: tuple[int, ...]
    pool_cases_per_source: int | None = None  # None: the whole pool
    batch_size: int | None = None  # None: the plans' (2)
    lr_scaling: str | None = None  # None: the trainer's rule
    precision: str | None = None  # None: mass_train's default (fp32 on CPU)
    # set: pretrain as many whole epochs as fit in this many minutes of training on this machine (mass_train
    # --max-minutes: steps, loading and validation; the run stops before an epoch that would end past it), at most
    # pretrain_epochs, on the lr schedule of all pretrain_epochs: a slower machine trains the first epochs of the
    # same run
    pretrain_minutes: float | None = None
    preset: str | None = None  # None: the recipe's preset (RECIPE_PRESET)

    @property
    def pretrain_steps(self) -> int:
        """The steps of the budget (for a budget in minutes, the most it allows)."""
        return self.pretrain_epochs * self.pretrain_iters_per_epoch


FULL = CurveBudget("full", pretrain_epochs=12, pretrain_iters_per_epoch=100, finetune_epochs=2,
                   finetune_iters_per_epoch=50, seeds=(0, 1, 2))
# measured on an H200 (documentation/in_context_ablations.md): batch 16 at the recipe's lr, 900 steps in 4 min
GPU = CurveBudget("gpu", pretrain_epochs=6, pretrain_iters_per_epoch=150, finetune_epochs=2,
                  finetune_iters_per_epoch=50, seeds=(0, 1, 2), batch_size=16, lr_scaling="none")
# the GPU budget's batch and lr on two cores: with memory reuse (mass_nn/memory_reuse.py) a batch-16 step costs about
# 7x a batch-2 step instead of 15x, and 600 such steps fit in about an hour on an AVX-512 2-core machine
CPU_BATCH16 = CurveBudget("cpu_batch16", pretrain_epochs=10, pretrain_iters_per_epoch=60, finetune_epochs=2,
                          finetune_iters_per_epoch=50, seeds=(0, 1, 2), batch_size=16, lr_scaling="none")
# the same on a CPU with native bf16 (--precision bf16, documentation/pretraining.md#bf16-on-cpu), sized to the hour on
# the machine at hand: 17 epochs (1,020 steps) took 49 min of steps and 52 min with validation on a 2-core AVX-512
# EPYC (2.8 s per step, run 17 of documentation/in_context_ablations.md), while on a slower AVX-512 EPYC (sgemm 173-195
# against 223 GFLOP/s, 3.8 s per step) the same 17 epochs would take about 73 min; 58 minutes of training, validations
# included, leave the start-up (under a minute) room inside the hour. The run itself stops when the next epoch would
# not fit (--max-minutes; until run 37 a throw-away timing run chose the epochs beforehand and read 10-20 % slow:
# runs 36 and 37 ended after 46 and 48 of their 55 minutes). The lr schedule is always the 17
# epochs' (run 26's), wherever the machine stops: stopped at 600 steps on its way, that run ended above a schedule
# squeezed into the 600 on the val patches and the CHAOS test volumes (runs 27, 30 and 31 of
# documentation/in_context_ablations.md)
CPU_BATCH16_BF16 = replace(CPU_BATCH16, name="cpu_batch16_bf16", precision="bf16", pretrain_epochs=17,
                           pretrain_minutes=58.0)
# the bf16 hour on the 6 mm grid with a 32³ patch (preset cpu_in_context_6mm): the same 192 mm field of view at a third
# of the voxels, 1.3 s per batch-16 step instead of 3.4 on a 2-core Xeon with AMX, so the hour holds 38 epochs (2,280
# steps) instead of 17 (run 22 of documentation/in_context_ablations.md); its schedule is laid out over 40
CPU_BATCH16_BF16_6MM = replace(CPU_BATCH16_BF16, name="cpu_batch16_bf16_6mm", preset="cpu_in_context_6mm",
                               pretrain_epochs=40)
# the bf16 hour at half the batch: the same samples per epoch in twice the steps (a batch-8 step took 2.22 against
# 4.35 s at batch 16 on a 2-core AVX-512 EPYC, about 8 % more per sample with loading), so nearly twice the updates
# in the same minutes at the same lr (LAMB's updates are relative to each layer's weights; 2e-3 is the release's lr
# at batch 32 and the recipe's at 2 and 16) and the same number of validations; the schedule is the 17 epochs' at
# this batch, 2,040 steps
CPU_BATCH8_BF16 = replace(CPU_BATCH16_BF16, name="cpu_batch8_bf16", batch_size=8, pretrain_iters_per_epoch=120)
QUICK = CurveBudget("quick", pretrain_epochs=2, pretrain_iters_per_epoch=2, finetune_epochs=1,
                    finetune_iters_per_epoch=2, seeds=(0,), pool_cases_per_source=2)


class LearningCurve:
    """The stages over one workspace (raw / preprocessed / results roots and state.json)."""

    def __init__(self, workspace: Path, shared_data: Path, budget: CurveBudget, page: Path | None):
        self.workspace, self.shared_data, self.budget, self.page = workspace, shared_data, budget, page
        self.paths = MassPaths.resolve(raw=str(workspace / "raw"), preprocessed=str(workspace / "preprocessed"),
                                       results=str(workspace / "results"))
        self.state_path = workspace / "state.json"
        self.preset = budget.preset or RECIPE_PRESET
        self.plans_name = load_preset(self.preset)[1]

    def state(self) -> dict:
        return read_json(self.state_path) if self.state_path.is_file() else {"finished": [], "budget": None}

    def save_state(self, state: dict) -> None:
        write_json_atomic(state, self.state_path)

    def datasets(self) -> dict[str, str]:
        return self.state()["datasets"]

    def stage_datasets(self) -> None:
        if not (self.shared_data / "chaos_mr_t2spir").is_dir():
            raise SystemExit(f"{self.shared_data}: no chaos_mr_t2spir/ here; pass --shared-data with the folder laid "
                             f"out like ../shared/data")
        raw = self.paths.raw
        evaluation = {key: write_organ_mr(self.shared_data, raw, key) for key in EVALUATION}
        sts_test = set(sts_test_patients(sts_patients(self.shared_data)))
        images = pool_images(self.shared_data, sts_test)["MR"]
        if self.budget.pool_cases_per_source is not None:
            images = _few_per_source(images, self.budget.pool_cases_per_source)
        built: dict[str, ReplicationDataset] = {**evaluation, "pool": _with_val_cases(write_pool(raw, "MR", images))}
        for dataset in built.values():
            write_splits(dataset, self.paths.preprocessed)
            plan_and_preprocess(dataset.dataset_id, self.paths,
                                PlanAndPreprocessOptions(preset=self.preset, num_processes=2, progress=False))
        state = self.state()
        state["datasets"] = {key: dataset.folder_name for key, dataset in built.items()}
        state["splits"] = {key: {s: len(c) for s, c in dataset.splits.items()} for key, dataset in built.items()}
        self.save_state(state)

    def reuse_datasets(self, source: Path) -> None:
        """Copy `source`'s raw and preprocessed folders and mark datasets and masks finished, once."""
        state, theirs = self.state(), read_json(source / "state.json")
        if {"datasets", "masks"} <= set(state["finished"]):
            return
        if not {"datasets", "masks"} <= set(theirs["finished"]):
            raise SystemExit(f"{source}: its datasets and masks stages are not finished; run them there first")
        for folder in ("raw", "preprocessed"):
            if (source / folder).is_dir():
                shutil.copytree(source / folder, self.workspace / folder, dirs_exist_ok=True)
        state.update(datasets=theirs["datasets"], splits=theirs["splits"],
                     finished=sorted(set(state["finished"]) | {"datasets", "masks"}))
        self.save_state(state)

    def stage_masks(self) -> None:
        generate_masks(self.datasets()["pool"], self.paths,
                       MaskGenerationOptions(generator="supervoxel", configuration=CONFIGURATION,
                                             plans_name=self.plans_name, num_processes=2, progress=False))

    def pretraining_options(self) -> TrainingOptions:
        """The recipe's pretraining at this budget; a budget in minutes stops where its time runs out
        (--max-minutes), on the lr schedule of all its epochs."""
        b, datasets = self.budget, self.datasets()
        return TrainingOptions(mode="PRETRAIN", datasets=[datasets["pool"]], trainer=RECIPE_TRAINER,
                               configuration=CONFIGURATION, plans_name=self.plans_name, epochs=b.pretrain_epochs,
                               iters_per_epoch=b.pretrain_iters_per_epoch, masks="supervoxel", tag="curve",
                               val_dataset=[datasets[key] for key in EVALUATION], continue_training=True,
                               batch_size=b.batch_size, lr_scaling=b.lr_scaling, precision=b.precision or "auto",
                               max_minutes=b.pretrain_minutes, extra={"val_reference_choices": 3})

    def run_folder(self) -> Path:
        o = self.pretraining_options()
        return run_folder(self.paths.results, o.datasets[0], o.trainer, o.plans_name, o.configuration, o.tag)

    def stage_pretrain(self) -> None:
        if self.budget is GPU and not torch.cuda.is_available():
            raise SystemExit("--gpu: no CUDA device here; run the pretrain stage where there is one")
        if not checkpoint_path(self.run_folder(), "final").is_file():
            summary = run_training(self.pretraining_options(), self.paths)
            if summary["stopped_early"]:
                raise SystemExit("pretraining stopped by a signal; re-run to continue it")
            state = self.state()
            state["pretrain_device"] = (torch.cuda.get_device_name() if torch.cuda.is_available()
                                        else "CPU (" + machine_description() + ")")
            self.save_state(state)

    def untrained_checkpoint(self) -> Path:
        """The recipe's network freshly initialised (same architecture and plans): the baseline that shows what
        pretraining added."""
        path = self.workspace / "untrained.pt"
        if not path.is_file():
            save_untrained_copy(checkpoint_path(self.run_folder(), "final"), path)
        return path

    def untrained_in_context_folder(self, key: str, method: str, seed: int) -> Path:
        return self.workspace / "compare" / key / f"untrained_{method}" / f"1shot_seed{seed}"

    def untrained_validation(self) -> dict:
        """The curve's in-context validation (same references, same val patients) of the untrained network: the
        curve's step-0 point, kept in untrained_validation.json."""
        path = self.workspace / "untrained_validation.json"
        if path.is_file():
            return read_json(path)
        network, plans, _ = load_in_context_checkpoint(self.untrained_checkpoint())
        options = self.pretraining_options()
        validations = [InContextValidation.from_dataset(d, self.paths, plans, self.plans_name, CONFIGURATION,
                                                        reference_choices=options.extra["val_reference_choices"],
                                                        seed=options.seed) for d in options.val_dataset]
        metrics = PretrainingValidation(None, validations).run(network, torch.device("cpu"))
        write_json_atomic(metrics, path)
        return metrics

    def stage_compare(self) -> None:
        b = self.budget
        self.untrained_validation()
        for key in EVALUATION:
            for seed in b.seeds:
                for method in ("in_context", "in_context_calibrated"):
                    folder = self.untrained_in_context_folder(key, method, seed)
                    if finished_evaluation(folder) is None:
                        in_context_evaluation(self.untrained_checkpoint(), self.datasets()[key], self.paths, 1, seed,
                                              folder, self.plans_name, CONFIGURATION, hd95=False,
                                              calibrate_threshold=method == "in_context_calibrated")
            protocol = FewShotProtocol(dataset=self.datasets()[key],
                                       checkpoint=checkpoint_path(self.run_folder(), "final"), shots=[1],
                                       seeds=list(b.seeds),
                                       methods=["in_context", "in_context_calibrated", "finetune", "scratch"],
                                       configuration=CONFIGURATION, plans_name=self.plans_name,
                                       epochs=b.finetune_epochs, iters_per_epoch=b.finetune_iters_per_epoch,
                                       tag="curve", hd95=False)
            run_few_shot_protocol(protocol, self.paths, self.workspace / "compare" / key)

    def stage_report(self) -> None:
        write_curve_report(self, self.page)

    def run(self, stages: list[str], redo: bool) -> None:
        state = self.state()
        budget = json.loads(json.dumps(asdict(self.budget)))  # as state.json holds it (tuples become lists)
        if state["budget"] is not None and _set_fields(state["budget"]) != _set_fields(budget):
            raise SystemExit(f"{self.workspace} holds runs of budget {state['budget']}, not {budget}: pass "
                             f"--workspace with a new folder, or delete {self.workspace} to start over")
        state["budget"] = budget
        self.save_state(state)
        run_stages(self, stages, redo, self.state_path, logger)


def _set_fields(budget: dict) -> dict:
    """The budget without the fields left at their default: workspaces written before a field existed still match."""
    defaults = {f.name: f.default for f in fields(CurveBudget) if f.default is not MISSING}
    return {key: value for key, value in budget.items() if key not in defaults or value != defaults[key]}


def _with_val_cases(pool: ReplicationDataset) -> ReplicationDataset:
    """The pool with POOL_VAL_CASES seeded cases moved to its val split, for the pretext Dice on held-out auto
    masks; CHAOS cases stay in training (only 6 patients)."""
    candidates = sorted(c for c in pool.splits["train"] if not c.startswith("chaos_"))
    held_out = set(np.random.default_rng(POOL_VAL_SEED).choice(candidates, size=min(POOL_VAL_CASES, len(candidates)),
                                                                 replace=False).tolist())
    splits = {"train": sorted(set(pool.splits["train"]) - held_out), "val": sorted(held_out), "test": []}
    return ReplicationDataset(pool.dataset_id, pool.name, pool.modality, pool.labelled, splits)


def _few_per_source(images: list[tuple[str, Path]], count: int) -> list[tuple[str, Path]]:
    """The first `count` images of every source folder (quick mode: a pool that preprocesses in seconds)."""
    kept, seen = [], {}
    for case_id, path in images:
        source = case_id.split("_")[0]  # STS, brats, pyradiomics, totalseg, chaos, mscmrseg
        if seen.get(source, 0) < count:
            kept.append((case_id, path))
            seen[source] = seen.get(source, 0) + 1
    return kept


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shared-data", type=Path, default=REPOSITORY.parent / "shared" / "data")
    parser.add_argument("--workspace", type=Path, help="default: benchmarks/_work/in_context_curve[_quick]")
    parser.add_argument("--quick", action="store_true", help="token budget; the report stays in the workspace")
    parser.add_argument("--stages", nargs="+", choices=STAGES, default=list(STAGES))
    parser.add_argument("--redo", action="store_true", help="run the given stages again even if finished")
    parser.add_argument("--gpu", action="store_true",
                        help="the GPU budget (the recipe at batch 16, 900 steps); needs a CUDA device for pretraining")
    parser.add_argument("--batch16", action="store_true",
                        help="the GPU budget's batch 16 on the CPU: 600 steps (about an hour on a 2-core AVX-512 "
                             "machine), its own section")
    parser.add_argument("--batch8", action="store_true",
                        help="with --bf16: the bf16 hour at batch 8 in 120-step epochs (twice the steps of "
                             "--batch16 --bf16 in the same minutes), its own section")
    parser.add_argument("--bf16", action="store_true",
                        help="with --batch16 or --batch8: pretrain with --precision bf16 (CPUs with native bf16) for "
                             "as many epochs as fit in 58 minutes of training here (mass_train --max-minutes 58: "
                             "steps, loading, validation), at most 17, on the 17 epochs' lr schedule: the hour's "
                             "worth, its own section")
    parser.add_argument("--grid-6mm", action="store_true",
                        help="with --batch16 --bf16: on the 6 mm grid with a 32³ patch (preset cpu_in_context_6mm, "
                             "the same field of view at a third of the voxels), as many epochs as fit in the 58 "
                             "minutes, at most 40; its own section")
    parser.add_argument("--reuse-datasets-from", type=Path, metavar="WORKSPACE",
                        help="copy the finished datasets and masks stages of another workspace (same code, same "
                             "data: identical arrays) instead of running them again")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    if args.quick + args.gpu + args.batch16 + args.batch8 > 1:
        raise SystemExit("--quick, --gpu, --batch16 and --batch8 are four budgets: pass one")
    if args.bf16 and not (args.batch16 or args.batch8):
        raise SystemExit("--bf16 goes with --batch16 or --batch8 (the GPU budget already trains in bf16)")
    if args.batch8 and not args.bf16:
        raise SystemExit("--batch8 goes with --bf16 (the batch-8 hour is a bf16 budget)")
    if args.grid_6mm and not (args.bf16 and args.batch16):
        raise SystemExit("--grid-6mm goes with --batch16 --bf16")
    budget = (QUICK if args.quick else GPU if args.gpu else CPU_BATCH16_BF16_6MM if args.grid_6mm
              else CPU_BATCH8_BF16 if args.batch8 else CPU_BATCH16_BF16 if args.bf16
              else CPU_BATCH16 if args.batch16 else FULL)
    suffix = "" if budget is FULL else f"_{budget.name}"
    workspace = args.workspace or REPOSITORY / "benchmarks" / "_work" / f"in_context_curve{suffix}"
    workspace.mkdir(parents=True, exist_ok=True)
    page = None if args.quick else REPOSITORY / "documentation" / "benchmarks.md"
    curve = LearningCurve(workspace, args.shared_data.resolve(), budget, page)
    if args.reuse_datasets_from is not None:
        curve.reuse_datasets(args.reuse_datasets_from.resolve())
    curve.run(args.stages, args.redo)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
