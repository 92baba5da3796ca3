"""One nnU-Net v2 training at a fixed budget on fold 0, then its predictions of the test images: the worker of
benchmarks/nnunet_finetune_evidence.py, run in a subprocess because nnU-Net reads nnUNet_raw / nnUNet_preprocessed
/ nnUNet_results once, when it is imported.

    nnUNet_preprocessed=... nnUNet_results=... python benchmarks/nnunet_budget_training.py \
        --dataset Dataset705_X --plans nnUNetResEncUNetMPlans_cpu --epochs 4 --iters-per-epoch 100 \
        [--pretrained-weights mass_export.pth] --test-images a_0000.nii.gz b_0000.nii.gz --predictions out/

Everything else is nnU-Net's own: its trainer (loss, deep supervision, augmentation, SGD with poly lr), its
`load_pretrained_weights`, and its sliding-window predictor. Only the epoch count and the iterations per epoch are
ours, so that both arms of the comparison get the same small budget on a CPU. A finished training
(checkpoint_final.pth) is not trained again, an interrupted one starts over; finished predictions are not made
again.
"""
from __future__ import annotations

import argparse
import os
from pathlib import Path

import torch
from batchgenerators.utilities.file_and_folder_operations import join, load_json
from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
from nnunetv2.paths import nnUNet_preprocessed
from nnunetv2.run.load_pretrained_weights import load_pretrained_weights
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

VAL_ITERATIONS_PER_EPOCH = 5  # nnU-Net's pseudo Dice on the val patients: a log line, it selects nothing here


class nnUNetTrainerFixedBudget(nnUNetTrainer):
    """nnUNetTrainer with the epoch count and iterations per epoch of the comparison (nnU-Net's: 1000 x 250)."""

    budget_epochs = 1000
    budget_iterations_per_epoch = 250

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cpu")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.num_epochs = self.budget_epochs
        self.num_iterations_per_epoch = self.budget_iterations_per_epoch
        self.num_val_iterations_per_epoch = VAL_ITERATIONS_PER_EPOCH


def trained_trainer(dataset: str, plans_name: str, configuration: str, pretrained_weights: str | None
                    ) -> nnUNetTrainerFixedBudget:
    folder = join(nnUNet_preprocessed, dataset)
    plans = {**load_json(join(folder, plans_name + ".json")), "continue_training": False}  # as nnU-Net's CLI sets it
    trainer = nnUNetTrainerFixedBudget(plans, configuration, 0, load_json(join(folder, "dataset.json")),
                                       torch.device("cpu"))
    trainer.initialize()
    final = Path(trainer.output_folder) / "checkpoint_final.pth"
    if final.is_file():
        trainer.load_checkpoint(str(final))
        return trainer
    if pretrained_weights:
        load_pretrained_weights(trainer.network, pretrained_weights, verbose=False)
    trainer.run_training()
    return trainer


def predict(trainer: nnUNetTrainerFixedBudget, test_images: list[str], predictions: Path) -> None:
    """nnU-Net's sliding-window prediction (Gaussian weighting, half-patch steps, no mirroring: the trainer's
    augmentation mirrors, but test-time mirroring would cost 8x on a CPU and helps both arms alike)."""
    predictions.mkdir(parents=True, exist_ok=True)
    todo = [image for image in test_images
            if not (predictions / Path(image).name.replace("_0000.nii.gz", ".nii.gz")).is_file()]
    if not todo:
        return
    predictor = nnUNetPredictor(tile_step_size=0.5, use_gaussian=True, use_mirroring=False,
                                perform_everything_on_device=False, device=torch.device("cpu"), verbose=False,
                                verbose_preprocessing=False, allow_tqdm=False)
    trainer.set_deep_supervision_enabled(False)  # as nnU-Net's own validation does: one output, full resolution
    predictor.manual_initialization(trainer.network, trainer.plans_manager, trainer.configuration_manager,
                                    [trainer.network.state_dict()],
                                    trainer.dataset_json, type(trainer).__name__,
                                    trainer.inference_allowed_mirroring_axes)
    outputs = [str(predictions / Path(image).name.replace("_0000.nii.gz", "")) for image in todo]
    predictor.predict_from_files([[image] for image in todo], outputs, save_probabilities=False, overwrite=True,
                                 num_processes_preprocessing=1, num_processes_segmentation_export=1)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", required=True, help="DatasetXXX_Name under nnUNet_preprocessed")
    parser.add_argument("--plans", required=True, help="plans name (the plans file without .json)")
    parser.add_argument("-c", "--configuration", default="3d_fullres")
    parser.add_argument("--epochs", type=int, required=True)
    parser.add_argument("--iters-per-epoch", type=int, required=True)
    parser.add_argument("--pretrained-weights", default=None, help="a -pretrained_weights file (none: scratch)")
    parser.add_argument("--test-images", nargs="+", required=True, help="raw test images (single channel _0000)")
    parser.add_argument("--predictions", type=Path, required=True, help="folder for the test predictions")
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    nnUNetTrainerFixedBudget.budget_epochs = args.epochs
    nnUNetTrainerFixedBudget.budget_iterations_per_epoch = args.iters_per_epoch
    trainer = trained_trainer(args.dataset, args.plans, args.configuration, args.pretrained_weights)
    predict(trainer, args.test_images, args.predictions)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
