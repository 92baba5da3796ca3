"""Does a MASS-pretrained encoder help nnU-Net? nnU-Net v2 finetuned from a MASS export vs trained from scratch,
same nnU-Net budget, on the CHAOS and MS-CMRSeg test patients.

    python benchmarks/nnunet_finetune_evidence.py --datasets-from benchmarks/_work/in_context_curve
                                                  # about 70 min on 2 cores; writes the nnunet_finetune section
                                                  # of documentation/benchmarks.md

The datasets come from a finished in-context learning curve workspace (its datasets and masks stages: raw CHAOS MR
705 and MS-CMRSeg 706 with their patient splits, and the MR pool 712 with supervoxel masks), read in place.

Stages (each resumable; re-running the command skips what is finished):
  plans     nnU-Net's fingerprint and its ResEnc-M planner on CHAOS at a CPU size: the planner's target spacing
            in-plane coarsened to 3 mm and its memory target to 1 GB (so the patch, stage count and strides are
            the planner's own at that size), and the stage widths set to those of our 3d_cpu network (8-128);
            the same plans moved to MS-CMRSeg with nnU-Net's own nnUNetv2_move_plans_between_datasets (nnU-Net's
            pretraining path: one architecture, many targets); fold 0 = the train patients, val patients as
            nnU-Net's val; nnU-Net's preprocessing of both
  pretrain  MASSCPUPretrainer with that ResEnc as its encoder (-s nnunet_plans=...) on the MR pool
  export    mass_export_nnunet of the pretrained checkpoint for each dataset's plans
  finetune  per dataset, nnU-Net's own trainer from scratch and from the export (-pretrained_weights), the same
            epochs x iterations, then nnU-Net's predictions of the test patients (benchmarks/nnunet_budget_training.py)
  report    Dice per structure on the test patients -> benchmarks.md
"""
from __future__ import annotations

import argparse
import logging
import os
import shutil
import subprocess
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

REPOSITORY = Path(__file__).resolve().parents[1]
if str(REPOSITORY) not in sys.path:  # run as a script from anywhere
    sys.path.insert(0, str(REPOSITORY))

from benchmarks.measure import machine_description, replace_section  # noqa: E402
from benchmarks.staged_run import run_stages  # noqa: E402
from mass_nn.evaluation.metrics import label_map_metrics  # noqa: E402
from mass_nn.evaluation.tables import markdown_table  # noqa: E402
from mass_nn.export.nnunet_export import export_to_nnunet  # noqa: E402
from mass_nn.io.artifact_layout import checkpoint_path  # noqa: E402
from mass_nn.io.atomic import read_json, write_json_atomic  # noqa: E402
from mass_nn.io.image_io import read_image  # noqa: E402
from mass_nn.paths import MassPaths  # noqa: E402
from mass_nn.training.metrics_log import read_metrics  # noqa: E402
from mass_nn.training.options import TrainingOptions  # noqa: E402
from mass_nn.training.run_folder import run_folder  # noqa: E402
from mass_nn.training.run_training import run_training  # noqa: E402

logger = logging.getLogger("nnunet_evidence")
STAGES = ("plans", "pretrain", "export", "finetune", "report")
PLANS_NAME = "nnUNetResEncUNetMPlans_cpu"
NNUNET_CONFIGURATION = "3d_fullres"
SOURCE, TARGETS = "chaos_mr", ("chaos_mr", "mscmrseg")  # plans made on CHAOS, moved to MS-CMRSeg
CPU_IN_PLANE_SPACING_MM = 3.0
CPU_MEMORY_TARGET_GB = 1
CPU_STAGE_WIDTHS = [8, 16, 32, 64, 128]  # our 3d_cpu network's widths; MASS needs widths divisible by 32 deep down
MASS_PLANS, MASS_CONFIGURATION, MASS_TRAINER = "MassPlansInContextCPU", "3d_cpu", "MASSCPUPretrainer"
ARMS = ("scratch", "mass")
ARM_TITLES = {"scratch": "scratch", "mass": "MASS export"}
TRAINER = "nnUNetTrainerFixedBudget"  # benchmarks/nnunet_budget_training.py


@dataclass(frozen=True)
class EvidenceBudget:
    pretrain_epochs: int = 20
    pretrain_iters_per_epoch: int = 50
    finetune_epochs: int = 10
    finetune_iters_per_epoch: int = 50


class NnUNetEvidence:
    def __init__(self, workspace: Path, datasets_from: Path, budget: EvidenceBudget, page: Path | None):
        self.workspace, self.budget, self.page = workspace, budget, page
        curve_state = read_json(datasets_from / "state.json")
        if not {"datasets", "masks"} <= set(curve_state["finished"]):
            raise SystemExit(f"{datasets_from}: its datasets and masks stages are not finished; run "
                             f"benchmarks/in_context_learning_curve.py --stages datasets masks there first")
        self.dataset_names: dict[str, str] = curve_state["datasets"]
        self.mass_paths = MassPaths.resolve(raw=str(datasets_from / "raw"), preprocessed=str(datasets_from /
                                            "preprocessed"), results=str(workspace / "results"))
        self.nnunet_preprocessed = workspace / "nnunet_preprocessed"
        self.state_path = workspace / "state.json"

    # --- bookkeeping -------------------------------------------------------------------------------------------
    def state(self) -> dict:
        return read_json(self.state_path) if self.state_path.is_file() else {"finished": []}

    def nnunet_env(self, arm: str = "scratch") -> dict:
        return {**os.environ, "nnUNet_raw": str(self.mass_paths.raw),
                "nnUNet_preprocessed": str(self.nnunet_preprocessed),
                "nnUNet_results": str(self.workspace / "nnunet_results" / arm), "nnUNet_n_proc_DA": "1"}

    def nnunet(self, *command: str) -> None:
        logger.info("%s", " ".join(command))
        subprocess.run(list(command), env=self.nnunet_env(), check=True, stdout=subprocess.DEVNULL)

    def plans_path(self, key: str) -> Path:
        return self.nnunet_preprocessed / self.dataset_names[key] / f"{PLANS_NAME}.json"

    def splits(self, key: str) -> dict[str, list[str]]:
        return read_json(self.mass_paths.preprocessed / self.dataset_names[key] / "splits.json")

    # --- stages -------------------------------------------------------------------------------------------------
    def stage_plans(self) -> None:
        ids = [self.dataset_names[key].split("_")[0].removeprefix("Dataset") for key in TARGETS]
        self.nnunet("nnUNetv2_extract_fingerprint", "-d", *ids, "-np", "2")
        source = self.nnunet_preprocessed / self.dataset_names[SOURCE]
        fingerprint = read_json(source / "dataset_fingerprint.json")
        z_spacing = float(np.median([spacing[0] for spacing in fingerprint["spacings"]]))
        self.nnunet("nnUNetv2_plan_experiment", "-d", ids[0], "-pl", "nnUNetPlannerResEncM", "-gpu_memory_target",
                    str(CPU_MEMORY_TARGET_GB), "-overwrite_target_spacing", str(z_spacing),
                    str(CPU_IN_PLANE_SPACING_MM), str(CPU_IN_PLANE_SPACING_MM), "-overwrite_plans_name", PLANS_NAME)
        plans = read_json(self.plans_path(SOURCE))
        configuration = plans["configurations"][NNUNET_CONFIGURATION]
        arch = configuration["architecture"]["arch_kwargs"]
        if arch["n_stages"] != len(CPU_STAGE_WIDTHS):
            raise SystemExit(f"{self.plans_path(SOURCE)}: nnU-Net planned {arch['n_stages']} stages, the CPU widths "
                             f"are for {len(CPU_STAGE_WIDTHS)}")
        arch["features_per_stage"] = CPU_STAGE_WIDTHS
        configuration["data_identifier"] = f"{PLANS_NAME}_{NNUNET_CONFIGURATION}"
        write_json_atomic(plans, self.plans_path(SOURCE))
        for key in TARGETS:
            if key != SOURCE:  # nnU-Net's planner copies dataset.json beside its plans; moving plans does not
                shutil.copyfile(self.mass_paths.raw / self.dataset_names[key] / "dataset.json",
                                self.nnunet_preprocessed / self.dataset_names[key] / "dataset.json")
                self.nnunet("nnUNetv2_move_plans_between_datasets", "-s", ids[0], "-t", ids[TARGETS.index(key)],
                            "-sp", PLANS_NAME, "-tp", PLANS_NAME)
            splits = self.splits(key)
            write_json_atomic([{"train": splits["train"], "val": splits["val"]}],
                              self.nnunet_preprocessed / self.dataset_names[key] / "splits_final.json")
        self.nnunet("nnUNetv2_preprocess", "-d", *ids, "-plans_name", PLANS_NAME, "-c", NNUNET_CONFIGURATION,
                    "-np", "2")

    def pretraining_options(self) -> TrainingOptions:
        b = self.budget
        return TrainingOptions(mode="PRETRAIN", datasets=[self.dataset_names["pool"]], trainer=MASS_TRAINER,
                               configuration=MASS_CONFIGURATION, plans_name=MASS_PLANS, epochs=b.pretrain_epochs,
                               iters_per_epoch=b.pretrain_iters_per_epoch, masks="supervoxel", tag="resenc_cpu",
                               continue_training=True, extra={"nnunet_plans": str(self.plans_path(SOURCE))})

    def mass_run_folder(self) -> Path:
        o = self.pretraining_options()
        return run_folder(self.mass_paths.results, o.datasets[0], o.trainer, o.plans_name, o.configuration, o.tag)

    def mass_checkpoint(self) -> Path:
        return checkpoint_path(self.mass_run_folder(), "final")

    def stage_pretrain(self) -> None:
        if not self.mass_checkpoint().is_file():
            if run_training(self.pretraining_options(), self.mass_paths)["stopped_early"]:
                raise SystemExit("pretraining stopped by a signal; re-run to continue it")

    def export_path(self, key: str) -> Path:
        return self.workspace / "exports" / f"{key}.pth"

    def stage_export(self) -> None:
        for key in TARGETS:
            export_to_nnunet(self.mass_checkpoint(), self.plans_path(key), NNUNET_CONFIGURATION, self.export_path(key))

    def test_cases(self, key: str) -> list[str]:
        return self.splits(key)["test"]

    def predictions(self, key: str, arm: str) -> Path:
        return self.workspace / "predictions" / key / arm

    def stage_finetune(self) -> None:
        b = self.budget
        for key in TARGETS:
            images = self.mass_paths.raw / self.dataset_names[key] / "imagesTr"
            for arm in ARMS:
                command = [sys.executable, str(REPOSITORY / "benchmarks" / "nnunet_budget_training.py"),
                           "--dataset", self.dataset_names[key], "--plans", PLANS_NAME,
                           "--epochs", str(b.finetune_epochs), "--iters-per-epoch", str(b.finetune_iters_per_epoch),
                           "--predictions", str(self.predictions(key, arm)), "--test-images",
                           *[str(images / f"{case}_0000.nii.gz") for case in self.test_cases(key)]]
                if arm == "mass":
                    command += ["--pretrained-weights", str(self.export_path(key))]
                logger.info("finetune %s %s", key, arm)
                subprocess.run(command, env=self.nnunet_env(arm), check=True)

    def scores(self, key: str, arm: str) -> dict[str, dict[str, float]]:
        """case -> structure -> Dice of nnU-Net's test predictions against the raw labels."""
        labels = {name: value for name, value in read_json(self.mass_paths.raw / self.dataset_names[key] /
                                                           "dataset.json")["labels"].items() if value != 0}
        scores = {}
        for case in self.test_cases(key):
            reference, geometry = read_image(self.mass_paths.raw / self.dataset_names[key] / "labelsTr" /
                                             f"{case}.nii.gz", np.int64)
            prediction, _ = read_image(self.predictions(key, arm) / f"{case}.nii.gz", np.int64)
            metrics = label_map_metrics(prediction, reference, labels, geometry.spacing_zyx, hd95=False)
            scores[case] = {name: metrics[name]["dice"] for name in labels}
        return scores

    def pseudo_dice(self, key: str, arm: str) -> list[float]:
        """nnU-Net's own log of the training: mean foreground pseudo Dice on the val patients after each epoch."""
        checkpoint = (self.workspace / "nnunet_results" / arm / self.dataset_names[key] /
                      f"{TRAINER}__{PLANS_NAME}__{NNUNET_CONFIGURATION}" / "fold_0" / "checkpoint_final.pth")
        logged = torch.load(checkpoint, map_location="cpu", weights_only=False)["logging"]  # nnU-Net's pickle
        return [float(value) for value in logged["mean_fg_dice"]]

    def stage_report(self) -> None:
        results = {key: {arm: {"test_dice": self.scores(key, arm), "val_pseudo_dice": self.pseudo_dice(key, arm)}
                         for arm in ARMS} for key in TARGETS}
        write_json_atomic(results, self.workspace / "results.json")
        if self.page is not None:
            replace_section(self.page, "nnunet_finetune", report_markdown(self, results))

    def run(self, stages: list[str], redo: bool) -> None:
        state, budget = self.state(), asdict(self.budget)
        if state.get("budget", budget) != budget:
            raise SystemExit(f"{self.workspace} holds runs of budget {state['budget']}, not {budget}: pass "
                             f"--workspace with a new folder, or delete {self.workspace} to start over")
        write_json_atomic({**state, "budget": budget}, self.state_path)
        run_stages(self, stages, redo, self.state_path, logger)

def _mean(values) -> str:
    """Percent, over the defined values (a structure absent from both prediction and label has no Dice)."""
    return f"{100 * float(np.nanmean(values)):.1f}"


def report_markdown(evidence: NnUNetEvidence, results: dict) -> str:
    b = evidence.budget
    pretrain_minutes = sum(r.get("epoch_seconds", 0.0) for r in read_metrics(evidence.mass_run_folder())) / 60
    finetune_steps = b.finetune_epochs * b.finetune_iters_per_epoch
    plans = read_json(evidence.plans_path(SOURCE))["configurations"][NNUNET_CONFIGURATION]
    arch = plans["architecture"]["arch_kwargs"]
    lines = [
        "## nnU-Net finetuned from a MASS-pretrained ResEnc vs from scratch (issue 19)",
        "",
        f"Machine: {machine_description()}. Command: `python benchmarks/nnunet_finetune_evidence.py "
        "--datasets-from benchmarks/_work/in_context_curve`.",
        "",
        f"- **nnU-Net plans** (`{PLANS_NAME}`): nnU-Net's ResEnc-M planner on CHAOS at a CPU size — spacing "
        f"{[round(s, 2) for s in plans['spacing']]} mm, patch {plans['patch_size']}, batch {plans['batch_size']}, "
        f"{arch['n_stages']} stages, strides {arch['strides']}, blocks {arch['n_blocks_per_stage']}, as the planner "
        f"chose them; widths {arch['features_per_stage']} (ours, for the CPU). The same plans moved to MS-CMRSeg "
        "with `nnUNetv2_move_plans_between_datasets`.",
        f"- **MASS**: `{MASS_TRAINER}` with that ResEnc as its encoder, {b.pretrain_epochs} x "
        f"{b.pretrain_iters_per_epoch} steps ({pretrain_minutes:.0f} min) on the MR pool (no CHAOS or MS-CMRSeg test "
        "or val patient in it), exported with `mass_export_nnunet`.",
        f"- **nnU-Net**: its own trainer, loss, augmentation and predictor; both arms {b.finetune_epochs} epochs x "
        f"{b.finetune_iters_per_epoch} iterations ({finetune_steps} = {100 * finetune_steps / 250_000:.1f} % of "
        "nnU-Net's default 1000 x 250) on fold 0 = the train patients; the final weights predict the test patients "
        "(sliding window, no test-time mirroring). One run per arm (nnU-Net does not seed its training).",
        "",
    ]
    for key in TARGETS:
        structures = list(next(iter(results[key]["scratch"]["test_dice"].values())))
        rows = []
        for arm in ARMS:
            dice = np.array([[case[s] for s in structures]
                             for case in results[key][arm]["test_dice"].values()])  # case x structure
            rows.append([ARM_TITLES[arm], _mean(dice)] + [_mean(dice[:, i]) for i in range(len(structures))])
        epochs = len(results[key]["scratch"]["val_pseudo_dice"])
        curve = [[ARM_TITLES[arm]] + [f"{100 * v:.0f}" for v in results[key][arm]["val_pseudo_dice"]]
                 for arm in ARMS]
        lines += [f"**{evidence.dataset_names[key]}**: Dice % on the {len(evidence.test_cases(key))} test patients "
                  "(per structure, mean over the patients):", "",
                  markdown_table(["nnU-Net from", "mean"] + structures, rows), "",
                  "nnU-Net's own pseudo Dice on the val patients after each epoch (mean over structures, %):", "",
                  markdown_table(["nnU-Net from"] + [str(e + 1) for e in range(epochs)], curve), ""]
    lines.append(reading(evidence, results))
    return "\n".join(lines)


def reading(evidence: NnUNetEvidence, results: dict) -> str:
    """The paragraph under the tables: the comparison in words and what this budget can and cannot say."""
    means = {key: {arm: float(np.nanmean([list(case.values()) for case in results[key][arm]["test_dice"].values()]))
                   for arm in ARMS} for key in TARGETS}
    first = {key: {arm: next((e + 1 for e, v in enumerate(results[key][arm]["val_pseudo_dice"]) if v > 0), None)
                   for arm in ARMS} for key in TARGETS}
    compared = "; ".join(f"{evidence.dataset_names[key]} {100 * means[key]['mass']:.1f} vs "
                         f"{100 * means[key]['scratch']:.1f} % (pseudo Dice above 0 from epoch "
                         f"{first[key]['mass'] or 'never'} vs {first[key]['scratch'] or 'never'})" for key in TARGETS)
    return (f"Reading: at this budget nnU-Net from the MASS export against nnU-Net from scratch: {compared}. The "
            "budget is what two cores allow for four nnU-Net trainings in an hour, so the table measures how fast "
            "the pretrained encoder gets nnU-Net going, not where either arm ends: a scratch nnU-Net needs far "
            "more of its 250,000 default iterations before it leaves zero, and whether the gap stays at nnU-Net's "
            "full budget is not measured here.")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--datasets-from", type=Path, required=True, metavar="CURVE_WORKSPACE",
                        help="a workspace of benchmarks/in_context_learning_curve.py with datasets and masks finished")
    parser.add_argument("--workspace", type=Path, default=REPOSITORY / "benchmarks" / "_work" / "nnunet_evidence")
    parser.add_argument("--stages", nargs="+", choices=STAGES, default=list(STAGES))
    parser.add_argument("--redo", action="store_true", help="run the given stages again even if finished")
    parser.add_argument("--no-page", action="store_true", help="keep the report in the workspace's results.json")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    args.workspace.mkdir(parents=True, exist_ok=True)
    page = None if args.no_page else REPOSITORY / "documentation" / "benchmarks.md"
    NnUNetEvidence(args.workspace.resolve(), args.datasets_from.resolve(), EvidenceBudget(), page).run(
        args.stages, args.redo)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
