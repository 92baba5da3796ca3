"""ClassificationProbe: case-level classification on top of a (pretrained) encoder - the MASS frozen-encoder probe.

Protocol (MASS supplement 6.4 and the release): the pretrained ResUNet encoder's deepest feature map goes through
attention pooling and a linear layer; only this head is trained, with AdamW (lr 5e-4, weight decay 1e-4) for 50
epochs on class-weighted cross-entropy. Because the encoder is frozen, each case is encoded once and the head
trains on the cached features. `-s finetune_encoder=true` trains the encoder as well (full finetuning, the encoder
runs at every step). Without --pretrained the encoder is random: the "scratch" baseline.

Cases: the labelled cases (labels.csv next to the raw dataset.json) of the train split, or a seeded stratified
share of them (--train-fraction); validation on the labelled val split (val_auc picks checkpoint_best.pt); at the
end the test split is predicted with the best weights (test_predictions.csv, test_summary.json).
"""
from __future__ import annotations

import logging
import math
import time
from collections import Counter
from typing import ClassVar

import numpy as np
import torch

from mass_nn.datasets.preprocessed_sources import resolve_source
from mass_nn.errors import MassError
from mass_nn.io.artifact_layout import checkpoint_path
from mass_nn.io.atomic import write_json_atomic
from mass_nn.io.case_labels import CASE_LABELS_FILE, read_case_labels
from mass_nn.model.checkpoint import load_network
from mass_nn.model.classifier_initialisation import encoder_config, load_pretrained_encoder
from mass_nn.model.pretrained import load_pretrained_checkpoint
from mass_nn.model.pretrained_networks import CLASSIFIERS_FROM_PRETRAINED
from mass_nn.networks.heads.encoder_classifier import EncoderClassifier, EncoderClassifierConfig
from mass_nn.registry import NETWORKS
from mass_nn.training.finetune.classification.batches import ClassificationBatches
from mass_nn.training.finetune.classification.case_selection import select_training_cases, stratum_of
from mass_nn.training.finetune.classification.inputs import load_case_input, map_cases, warn_about_coverage
from mass_nn.training.finetune.classification.loss import ClassificationLoss, probabilities
from mass_nn.training.finetune.classification.report import auc_defined, score_probabilities, write_test_results
from mass_nn.training.finetune.classification.settings import DEFAULT_BATCH_SIZE, ClassificationSettings
from mass_nn.training.run_folder import probe_run_tag
from mass_nn.training.trainer import Trainer

logger = logging.getLogger(__name__)

TRAINING_CASES_FILE = "training_cases.json"
INITIALISATION_FILE = "encoder_initialisation.json"
FEATURE_CHUNK = 64  # cached feature maps moved to the device at a time during validation


class ClassificationProbe(Trainer):
    """Attention-pooling classifier on the deepest encoder features; frozen encoder unless finetune_encoder."""

    mode: ClassVar[str] = "FINETUNE"
    default_epochs: ClassVar[int] = 50
    default_iters_per_epoch: ClassVar[int] = 1  # resolve_data sets one pass over the training cases instead
    default_lr: ClassVar[float] = 5e-4
    best_metric_key: ClassVar[str] = "val_auc"
    best_metric_mode: ClassVar[str] = "max"
    settings_class: ClassVar[type] = ClassificationSettings

    def __init__(self, options, paths):
        super().__init__(options, paths)
        self.labels = None
        self.data_folder = None
        self.labels_path = None
        self.unknown_label_cases: list[str] = []  # in labels.csv but in no split
        self.labelled_train: list[str] = []  # every labelled train case, before --train-fraction
        self.train_cases: list[str] = []
        self.val_cases: list[str] = []
        self.test_cases: list[str] = []  # the whole test split, labelled or not (all are predicted)
        self.initialisation: dict = {"initialisation": "scratch", "checkpoint": None}
        self.cached_features: dict[str, torch.Tensor] = {}

    @property
    def frozen(self) -> bool:
        return not self.settings.finetune_encoder

    def run_tag(self) -> str:
        o = self.options
        return probe_run_tag(o.pretrained, o.train_fraction, o.seed, o.extra.get("finetune_encoder") is True, o.tag)

    # ----------------------------------------------------------------- data
    def resolve_data(self) -> None:
        o = self.options
        source = resolve_source(o.datasets[0], self.paths, o.plans_name, o.configuration)
        self.plans, self.configuration_plan, self.dataset_name = source.plans, source.configuration, source.dataset_name
        self.data_folder = source.data_folder
        self.labels_path = self.paths.raw / self.dataset_name / CASE_LABELS_FILE
        self.labels = read_case_labels(self.labels_path)
        self.labelled_train = [c for c in source.cases("train") if c in self.labels.targets]
        if self.labels.kind == "multiclass" and len({self.labels.targets[c] for c in self.labelled_train}) < 2:
            raise MassError(f"{self.labels_path}: the labelled cases of the train split ({len(self.labelled_train)}) "
                            f"hold fewer than two classes, so there is nothing to learn; label more train cases "
                            f"(splits: {self.paths.preprocessed / self.dataset_name / 'splits.json'})")
        o.train_fraction = 1.0 if o.train_fraction is None else o.train_fraction
        self.train_cases = select_training_cases(self.labelled_train, self.labels, o.train_fraction, o.seed)
        self.val_cases = [c for c in source.cases("val") if c in self.labels.targets]
        self.test_cases = source.cases("test")
        self.unknown_label_cases = sorted(set(self.labels.targets) - {c for s in source.splits.values()
                                                                      if isinstance(s, list) for c in s})
        self.settings.input_size = self.settings.input_size or list(self.configuration_plan.patch_size_zyx)
        o.batch_size = o.batch_size or min(DEFAULT_BATCH_SIZE, len(self.train_cases))
        one_pass = math.ceil(len(self.train_cases) / (o.batch_size * self.context.world_size))
        o.iters_per_epoch = o.iters_per_epoch or one_pass
        o.ema_decay = 0.0  # the protocol keeps no weight average: validation and test use the trained weights
        if self.val_cases and not auc_defined(self.labels, self.val_cases):
            # an AUC needs both outcomes among the val cases; the class-weighted loss is the next best judge
            self.best_metric_key, self.best_metric_mode = "val_loss", "min"

    def setup(self) -> None:
        o = self.options
        checkpoint = None
        if o.pretrained:
            checkpoint = load_pretrained_checkpoint(o.pretrained, self.plans, o.configuration, self.dataset_name)
        report = self._build_network(checkpoint)
        if checkpoint is not None:
            self.initialisation = {"initialisation": "pretrained", "checkpoint": str(o.pretrained),
                                   "checkpoint_trainer": checkpoint.meta.trainer,
                                   "checkpoint_epoch": checkpoint.meta.epoch, **report.to_dict()}
        if self.frozen:
            self.network.freeze_encoder()
        targets = self.labels.target_array(self.train_cases)
        self.train_targets = torch.as_tensor(targets)
        self.loss = ClassificationLoss(self.labels.kind, targets, len(self.labels.class_names))

    def _build_network(self, checkpoint):
        """The classifier (self.network): the ResUNet EncoderClassifier, or the classification network a
        baseline's network class names (`classification_network`, e.g. a ViT's); returns the weight-transfer
        report (None without a checkpoint). Every classifier offers deepest_features, classify_features,
        forward(inputs, from_features) and freeze_encoder."""
        o = self.options
        num_classes = len(self.labels.class_names)
        special = NETWORKS.get(checkpoint.meta.network_class).classification_network \
            if checkpoint is not None else None
        if special is not None:
            self.network, report = CLASSIFIERS_FROM_PRETRAINED[special](
                checkpoint, num_classes, list(self.settings.input_size), float(self.settings.dropout), o.pretrained)
            return report
        config = EncoderClassifierConfig(
            encoder=encoder_config(checkpoint, o.pretrained, self.configuration_plan, len(self.plans.channels),
                                   self.settings.input_size),
            num_classes=num_classes, dropout=float(self.settings.dropout))
        self.network = EncoderClassifier(config)
        return load_pretrained_encoder(self.network, checkpoint, o.pretrained) if checkpoint is not None else None

    def build_optimizer(self) -> torch.optim.Optimizer:
        trainable = [p for p in self.network.parameters() if p.requires_grad]
        return torch.optim.AdamW(trainable, lr=self.options.lr, weight_decay=float(self.settings.weight_decay))

    def make_train_loader(self, start_batch: int):
        # the first hook after the base trainer has checked and created the run folder: record the run here
        if self.context.is_main:
            self._record_run()
        if self.frozen:
            self._cache_features()
        fetch = self._fetch_features if self.frozen else self._fetch_volumes
        return ClassificationBatches(fetch, len(self.train_cases), self.options.batch_size, self.options.seed,
                                     start_batch=start_batch, rank=self.context.rank,
                                     world_size=self.context.world_size)

    def _fetch_features(self, indices: np.ndarray) -> dict:
        index = torch.as_tensor(indices)
        return {"inputs": self.cached_features["train"][index], "targets": self.train_targets[index]}

    def _fetch_volumes(self, indices: np.ndarray) -> dict:
        volumes = [load_case_input(self.data_folder, self.train_cases[i], self.settings.input_size) for i in indices]
        return {"inputs": torch.from_numpy(np.stack(volumes)), "targets": self.train_targets[torch.as_tensor(indices)]}

    def _cache_features(self) -> None:
        """Encode the train and val cases once with the frozen encoder (the head is all that changes)."""
        start = time.time()
        self.network.eval()
        for split, cases in (("train", self.train_cases), ("val", self.val_cases)):
            self.cached_features[split] = map_cases(self.network.deepest_features, self.data_folder, cases,
                                                    self.settings.input_size, self.device, self.autocast)
        shape = list(self.cached_features["train"].shape[1:])
        logger.info("frozen encoder: cached deepest features %s of %d train and %d val cases in %.1f s", shape,
                    len(self.train_cases), len(self.val_cases), time.time() - start)

    # ----------------------------------------------------------------- steps and validation
    def compute_loss(self, batch) -> tuple[torch.Tensor, dict[str, float]]:
        inputs = batch["inputs"].to(self.device, non_blocking=True)
        logits = self.model(inputs, from_features=self.frozen)
        return self.loss(logits, batch["targets"].to(self.device)), {}

    @torch.no_grad()
    def _val_logits(self, network: EncoderClassifier) -> torch.Tensor:
        if self.frozen:
            chunks = [network.classify_features(features.to(self.device)).float().cpu()
                      for features in self.cached_features["val"].split(FEATURE_CHUNK)]
            return torch.cat(chunks)
        return map_cases(network, self.data_folder, self.val_cases, self.settings.input_size, self.device,
                         self.autocast)

    def validate(self) -> dict[str, float]:
        """val_loss (class-weighted, as in training), val_auc (mean AUC) and val_accuracy on the labelled val cases."""
        if not self.val_cases:
            return {}
        logits = self._val_logits(self.ema.module)
        targets = self.labels.target_array(self.val_cases)
        scores = score_probabilities(probabilities(logits, self.labels.kind).numpy(), self.labels, self.val_cases)
        return {"val_loss": float(self.loss(logits, torch.as_tensor(targets))), "val_auc": scores["mean_auc"],
                "val_accuracy": scores["accuracy"]}

    # ----------------------------------------------------------------- records and the test split
    def _record_run(self) -> None:
        o, labels = self.options, self.labels
        counts = dict(sorted(Counter(stratum_of(labels, case) for case in self.train_cases).items()))
        write_json_atomic({"dataset": self.dataset_name, "labels": str(self.labels_path), "kind": labels.kind,
                           "class_names": labels.class_names, "train_fraction": o.train_fraction, "seed": o.seed,
                           "labelled_train_cases": len(self.labelled_train), "num_selected": len(self.train_cases),
                           "selected_per_stratum": counts, "selected": self.train_cases,
                           "val_cases": self.val_cases, "test_cases": self.test_cases},
                          self.output_folder / TRAINING_CASES_FILE)
        write_json_atomic(self.initialisation, self.output_folder / INITIALISATION_FILE)
        logger.info("labels %s (%s: %s); training on %d of %d labelled train cases (fraction %g, seed %d): %s",
                    self.labels_path, labels.kind, ", ".join(labels.class_names), len(self.train_cases),
                    len(self.labelled_train), o.train_fraction, o.seed, counts)
        self._log_situation()

    def _log_situation(self) -> None:
        if self.initialisation["initialisation"] == "pretrained":
            logger.info("encoder from %s: %d keys loaded, head keys left initialised: %d",
                        self.initialisation["checkpoint"], self.initialisation["loaded"],
                        len(self.initialisation["missing"]))
        else:
            logger.info("no --pretrained: the encoder is randomly initialised (scratch baseline)")
        logger.info("%s; input window %s", "frozen encoder, head only" if self.frozen else
                    "full finetuning (encoder trained too)", self.settings.input_size)
        if not self.val_cases:
            logger.warning("no labelled val cases: no validation, no checkpoint_best.pt; the test split is predicted "
                           "with the final weights")
        elif self.best_metric_key != "val_auc":
            logger.warning("the labelled val cases hold a single class, so no val AUC: %s chooses the best "
                           "checkpoint", self.best_metric_key)
        if self.unknown_label_cases:
            logger.warning("%d case(s) of %s are in no split of the preprocessed dataset (ignored): %s",
                           len(self.unknown_label_cases), self.labels_path, self.unknown_label_cases[:5])
        warn_about_coverage(self.data_folder, self.train_cases + self.val_cases + self.test_cases,
                            self.settings.input_size)

    def on_train_end(self) -> dict:
        """Predict the test split with the best weights (the final ones without validation); write
        test_predictions.csv and test_summary.json; return test_mean_auc and test_accuracy for the summary."""
        if not self.test_cases:
            logger.warning("the test split is empty: no test predictions")
            return {}
        best = checkpoint_path(self.output_folder, "best")
        path = best if best.is_file() else checkpoint_path(self.output_folder, "final")
        network, checkpoint = load_network(path, map_location=self.device)
        logits = map_cases(network.to(self.device), self.data_folder, self.test_cases, self.settings.input_size,
                           self.device, self.autocast)
        probs = probabilities(logits, self.labels.kind).numpy()
        summary = write_test_results(self.output_folder, self.test_cases, probs, self.labels, path.name,
                                     checkpoint.meta.epoch)
        logger.info("test split (%d cases, %d labelled) with %s (epoch %d): mean AUC %.4f, accuracy %.4f -> %s",
                    summary["num_test_cases"], summary["num_labelled"], path.name, checkpoint.meta.epoch,
                    summary["mean_auc"], summary["accuracy"], self.output_folder / "test_summary.json")
        return {key: value if math.isfinite(value) else None  # undefined (one class in the test split): None
                for key, value in (("test_mean_auc", summary["mean_auc"]), ("test_accuracy", summary["accuracy"]))}
