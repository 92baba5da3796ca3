"""Few-shot segmentation finetuning of the in-context model for a dataset's fixed classes.

`SegmentationFinetuner` trains everything (the paper's protocol: AdamW lr 1e-4, 50 epochs, early stopping on
validation Dice); `EmbeddingTuner` freezes encoder, decoder and task encoder and trains only the class
embeddings and the mask head (the release's "probing" mode, i.e. in-context tuning). Without --pretrained the
network starts from random weights (the scratch baseline). Class embeddings start as the task embeddings of the
k shot cases, averaged per class (the release's initialisation).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import torch

from mass_nn.datasets.labelled_data import resolve_labelled_dataset, select_shots
from mass_nn.errors import MassError
from mass_nn.inference.reference_encoding import encode_reference_labels
from mass_nn.io.artifact_layout import checkpoint_path
from mass_nn.io.atomic import write_json_atomic
from mass_nn.model.downstream_network import build_downstream_network, is_in_context_checkpoint
from mass_nn.model.pretrained import load_pretrained_checkpoint
from mass_nn.networks.in_context.fixed_class_segmenter import FixedClassSegmenter
from mass_nn.threads import default_loader_workers
from mass_nn.training.data.labelled_patch_loader import make_labelled_loader
from mass_nn.training.finetune.segmentation_scores import dice_on_preprocessed, evaluate_on_raw_cases
from mass_nn.training.losses import SegmentationLoss
from mass_nn.training.run_folder import finetune_run_tag
from mass_nn.training.trainer import Trainer
from mass_nn.training.trainer_settings import check_range

logger = logging.getLogger(__name__)


@dataclass
class FinetuneSettings:
    """-s settings of the segmentation finetuners. foreground_probability: share of training patches centred on a
    labelled voxel (the rest anywhere); weight_decay: AdamW's; max_val_cases: labelled val cases scored per
    validation."""

    foreground_probability: float = 1 / 3
    weight_decay: float = 1e-3
    max_val_cases: int = 8

    def validate(self) -> None:
        check_range("foreground_probability", self.foreground_probability, 0.0, 1.0, high_inclusive=True)
        check_range("weight_decay", self.weight_decay, 0.0, float("inf"))
        if self.max_val_cases < 1:
            raise MassError(f"setting max_val_cases={self.max_val_cases}: expected a positive integer")


class SegmentationFinetuner(Trainer):
    """Full finetuning (or training from scratch) of a FixedClassSegmenter on k labelled cases."""

    mode: ClassVar[str] = "FINETUNE"
    default_epochs: ClassVar[int] = 50
    default_iters_per_epoch: ClassVar[int] = 100
    default_lr: ClassVar[float] = 1e-4
    best_metric_key: ClassVar[str] = "val_dice"
    best_metric_mode: ClassVar[str] = "max"
    ema_warmup: ClassVar[bool] = True
    freeze_backbone: ClassVar[bool] = False
    settings_class: ClassVar[type] = FinetuneSettings

    def run_tag(self) -> str:
        o = self.options
        return finetune_run_tag(o.pretrained, o.shots, o.seed, o.tag)

    def resolve_data(self) -> None:
        o = self.options
        self.data = resolve_labelled_dataset(o.datasets[0], self.paths, o.plans_name, o.configuration)
        source = self.data.source
        self.plans, self.configuration_plan, self.dataset_name = source.plans, source.configuration, source.dataset_name
        self.shot_cases = select_shots(self.data.labelled_cases("train"), o.shots, o.seed)

    def setup(self) -> None:
        o = self.options
        o.batch_size = o.batch_size or self.configuration_plan.batch_size
        if o.num_workers is None:
            o.num_workers = default_loader_workers(self.device.type)
        if self.freeze_backbone and not o.pretrained:
            raise MassError(f"{self.name} tunes class embeddings of a frozen pretrained network; give --pretrained "
                            f"CHECKPOINT (or use SegmentationFinetuner to train from scratch)")
        self.classes = dict(self.data.classes)
        checkpoint = None
        if o.pretrained:
            checkpoint = load_pretrained_checkpoint(o.pretrained, self.plans, o.configuration, self.dataset_name)
            if self.freeze_backbone and not is_in_context_checkpoint(checkpoint):
                raise MassError(f"{o.pretrained}: {self.name} freezes a pretrained in-context network, and a "
                                f"{checkpoint.meta.network_class} has none; use SegmentationFinetuner")
        self.network, self.weight_transfer = build_downstream_network(
            checkpoint, str(o.pretrained), self.configuration_plan, len(self.plans.channels), list(self.classes),
            list(self.classes.values()))
        if isinstance(self.network, FixedClassSegmenter):
            self._initialise_class_embeddings()
        if self.freeze_backbone:
            for module in (self.network.segmenter.encoder, self.network.segmenter.decoder,
                           self.network.segmenter.task_encoder):
                module.requires_grad_(False)
        self.loss = SegmentationLoss(dice=o.dice)
        self._write_selection()

    def _initialise_class_embeddings(self) -> None:
        references = self.data.preprocessed_pairs(self.shot_cases)
        present = self.data.classes_present(references)
        missing = [n for n in self.classes if n not in present]
        if missing:
            logger.warning("classes %s occur in none of the %d shot case(s); their embeddings start random",
                           missing, len(references))
        if not present:
            return
        self.network.eval()
        embedding = encode_reference_labels(self.network.segmenter, references, list(present.values()),
                                            self.network.config.network.input_size_zyx, names=list(present))
        index = [list(self.classes).index(n) for n in present]
        with torch.no_grad():
            for parameter, stage in zip(self.network.class_embeddings, embedding):
                parameter[:, index] = stage

    def _write_selection(self) -> None:
        occupied = checkpoint_path(self.output_folder, "latest").is_file() and not self.options.continue_training
        if not self.context.is_main or occupied:  # an occupied folder is refused right after setup
            return
        selection = {"dataset": self.dataset_name, "seed": self.options.seed, "shots": self.options.shots,
                     "training_cases": self.shot_cases, "classes": self.classes,
                     "pretrained": self.options.pretrained,
                     "weights": self.weight_transfer.to_dict() if self.weight_transfer else None}
        write_json_atomic(selection, self.output_folder / "shots.json")
        self._start_message = f"training cases ({len(self.shot_cases)}, seed {self.options.seed}): " \
                              f"{', '.join(self.shot_cases)}"

    def build_optimizer(self) -> torch.optim.Optimizer:
        parameters = [p for p in self.network.parameters() if p.requires_grad]
        return torch.optim.AdamW(parameters, lr=self.options.lr, weight_decay=self.settings.weight_decay)

    def make_train_loader(self, start_batch: int):
        return make_labelled_loader([self.data.patch_case(c) for c in self.shot_cases], list(self.classes.values()),
                                    self.configuration_plan.patch_size_zyx, self.options.batch_size,
                                    seed=self.options.seed, num_workers=self.options.num_workers,
                                    foreground_probability=self.settings.foreground_probability,
                                    start_batch=start_batch, rank=self.context.rank,
                                    world_size=self.context.world_size)

    def compute_loss(self, batch) -> tuple[torch.Tensor, dict[str, float]]:
        image = torch.as_tensor(batch["image"]).to(self.device, dtype=torch.float32)
        masks = torch.as_tensor(batch["masks"]).to(self.device, dtype=torch.float32)
        return self.loss(self.model(image), masks)

    def validate(self) -> dict[str, float]:
        cases = self.data.labelled_cases("val")[: self.settings.max_val_cases]
        if not cases:
            return {}
        return dice_on_preprocessed(self.ema.module, [self.data.patch_case(c) for c in cases], self.classes,
                                    self.plans, self.options.configuration, self.device)

    def on_train_end(self) -> dict:
        cases = self.data.labelled_cases("test")
        if not cases:
            logger.warning("%s has no labelled test cases; no test evaluation", self.dataset_name)
            return {}
        best = checkpoint_path(self.output_folder, "best")
        summary = evaluate_on_raw_cases(best if best.is_file() else checkpoint_path(self.output_folder, "final"),
                                        self.data.raw_cases(cases), self.classes, Path(self.output_folder) / "test",
                                        self.device)
        logger.info("test Dice (%d cases): %.4f -> %s", summary["num_cases"], summary["mean_dice"],
                    Path(self.output_folder) / "test" / "summary.json")
        return {"test_mean_dice": summary["mean_dice"]}


class EmbeddingTuner(SegmentationFinetuner):
    """Class embeddings and mask head trained on a frozen pretrained encoder, decoder and task encoder."""

    freeze_backbone: ClassVar[bool] = True
