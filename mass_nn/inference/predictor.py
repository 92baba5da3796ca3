"""Segmenting whole cases: preprocess like the plans say, sliding window under a task embedding, label map,
and back to the input's own geometry (crop box, spacing, origin, direction)."""
from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from mass_nn.errors import MassError
from mass_nn.inference.label_maps import label_claims, probabilities_to_label_map
from mass_nn.inference.sliding_window import sliding_window_probabilities
from mass_nn.io.dataset_json import CaseFiles
from mass_nn.io.image_io import write_image
from mass_nn.networks.in_context.task_ops import TaskEmbedding, chunk_task_embedding, concat_task_embeddings
from mass_nn.planning.plans import Plans
from mass_nn.preprocessing.preprocessor import PreprocessedCase, preprocess_in_memory
from mass_nn.preprocessing.restore import to_original_grid

logger = logging.getLogger(__name__)


# in context, windows that see a structure near their centre decide it: 0.75 overlap gave +2.8 / +0.8 Dice points
# on the CHAOS / MS-CMRSeg val patients over 0.5 (documentation/in_context_segmentation.md#window-overlap)
IN_CONTEXT_OVERLAP = 0.75


@dataclass
class InferenceSettings:
    """How a volume is segmented (defaults as the release's inference, except the in-context overlap and label
    fusion)."""

    # sliding-window overlap; None: IN_CONTEXT_OVERLAP in context, 0.5 (the release's) for a fixed-class network
    overlap: float | None = None
    blend: str = "gaussian"
    threshold: float = 0.5  # used for every label unless per-label thresholds are set on the predictor
    keep_largest_component: bool = False
    # voxels claimed by several labels (label_maps.py); None: smallest_volume in context, most_probable for a
    # fixed-class network (measured in documentation/in_context_segmentation.md, "Overlapping labels")
    label_fusion: str | None = None
    max_labels_per_forward: int = 0  # 0: all labels in one pass (labels interact in the decoder, see the docs)
    windows_per_batch: int = 1


class SegmentationPredictor:
    """Segments with either an in-context network plus a task embedding [1, K, T, C_i], or (task_embedding None)
    a fixed-class network whose forward(image) gives K logit maps; K = len(label_values), same order.

    In context, `context_embedding` [1, E, T, C_i] (context_tasks.py) joins every pass after the labelled tasks;
    its E outputs are discarded."""

    def __init__(self, network: torch.nn.Module, task_embedding: TaskEmbedding | None, label_values: list[int],
                 plans: Plans, configuration: str, device: torch.device | str = "cpu",
                 settings: InferenceSettings | None = None, context_embedding: TaskEmbedding | None = None):
        if task_embedding is not None and task_embedding[0].shape[1] != len(label_values):
            raise ValueError(f"task embedding has {task_embedding[0].shape[1]} tasks for {len(label_values)} labels")
        self.network = network.to(device).eval()
        self.device = torch.device(device)
        self.task_embedding = None if task_embedding is None else [t.detach().to(self.device) for t in task_embedding]
        if context_embedding is not None and task_embedding is None:
            raise ValueError("context tasks need an in-context task embedding")
        self.context_embedding = (None if context_embedding is None
                                  else [t.detach().to(self.device) for t in context_embedding])
        self.label_values = [int(v) for v in label_values]
        self.plans, self.configuration = plans, configuration
        self.window = list(plans.configuration(configuration).patch_size_zyx)
        self.settings = settings or InferenceSettings()
        self.thresholds: list[float] | None = None  # per label (reference calibration), replacing the settings' one

    def _logits(self, windows: Tensor) -> Tensor:
        if self.task_embedding is None:
            return self.network(windows)
        size = self.settings.max_labels_per_forward or len(self.label_values)
        outputs = []
        for chunk in chunk_task_embedding(self.task_embedding, size):
            tasks = chunk[0].shape[1]
            outputs.append(self.network.segment(windows, self.with_context(chunk))[:, :tasks])
        return torch.cat(outputs, dim=1)

    def with_context(self, embedding: TaskEmbedding) -> TaskEmbedding:
        """`embedding` followed by the context tasks, as one pass of this predictor segments it."""
        if self.context_embedding is None:
            return embedding
        return concat_task_embeddings([embedding, self.context_embedding])

    @property
    def overlap(self) -> float:
        """The sliding-window overlap (the settings' choice, else the mode's default)."""
        if self.settings.overlap is not None:
            return self.settings.overlap
        return 0.5 if self.task_embedding is None else IN_CONTEXT_OVERLAP

    def probabilities(self, data: np.ndarray, progress=None) -> Tensor:
        """Probabilities [K, D, H, W] of a preprocessed image (c, D, H, W)."""
        s = self.settings
        return sliding_window_probabilities(self._logits, data, self.window, len(self.label_values), self.overlap,
                                            s.blend, self.device, s.windows_per_batch, progress)

    def label_map(self, data: np.ndarray) -> np.ndarray:
        """Label map (D, H, W) int16 of a preprocessed image, on the preprocessed grid."""
        return self.label_map_of(self.probabilities(data))

    def label_map_of(self, probabilities: Tensor) -> np.ndarray:
        """Label map (D, H, W) int16 of probabilities [K, D, H, W]: thresholds, label fusion, components."""
        return probabilities_to_label_map(probabilities, self.label_values, self._threshold,
                                          self.settings.keep_largest_component, self.label_fusion)

    def structure_claims(self, probabilities: Tensor) -> Tensor:
        """[K, D, H, W] bool: each label's own claim (its probability at its threshold) before the labels are
        fused, so claims may overlap; the release's in-context evaluator scores these, one structure at a time."""
        return label_claims(probabilities, self._threshold)

    @property
    def _threshold(self) -> float | list[float]:
        return self.thresholds if self.thresholds is not None else self.settings.threshold

    @property
    def label_fusion(self) -> str:
        """How voxels claimed by several labels are resolved (the settings' choice, else the mode's default)."""
        if self.settings.label_fusion is not None:
            return self.settings.label_fusion
        return "most_probable" if self.task_embedding is None else "smallest_volume"

    def preprocess(self, case: CaseFiles) -> PreprocessedCase:
        expected = len(self.plans.channels)
        if len(case.images) != expected:
            raise MassError(f"case {case.case_id}: {len(case.images)} image channel(s) "
                            f"({', '.join(str(p) for p in case.images)}), the model expects {expected} "
                            f"({', '.join(c.name for c in self.plans.channels)}); name them <case>_0000, _0001, ...")
        return preprocess_in_memory(case, self.plans, self.configuration)

    def predict_case(self, case: CaseFiles, output_path: Path,
                     on_structure_masks: Callable[[dict[int, np.ndarray]], None] | None = None) -> dict:
        """Segment one raw case and write its label map in the case's own geometry; returns timings.
        `on_structure_masks`, when given, gets each label's own claim in that geometry ({label value: bool
        (z, y, x)}, see structure_claims) before the label map is written, so a case whose label map exists
        has had its claims handled (resumable callers rely on it)."""
        started = time.perf_counter()
        preprocessed = self.preprocess(case)
        prepared = time.perf_counter()
        probabilities = self.probabilities(preprocessed.data)
        label_map = self.label_map_of(probabilities)
        predicted = time.perf_counter()
        props = preprocessed.properties
        if on_structure_masks is not None:
            claims = self.structure_claims(probabilities).numpy()
            on_structure_masks({value: to_original_grid(claim.view(np.uint8), props, is_label=True) > 0
                                for value, claim in zip(self.label_values, claims)})
        write_image(to_original_grid(label_map, props, is_label=True).astype(np.uint8 if max(self.label_values) < 256
                                                                            else np.int16),
                    props.geometry, output_path)
        return {"case_id": case.case_id, "output": str(output_path),
                "preprocess_seconds": prepared - started, "predict_seconds": predicted - prepared,
                "export_seconds": time.perf_counter() - predicted}
