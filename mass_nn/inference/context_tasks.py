"""Context tasks: fill an in-context pass up to the number of tasks the network was pretrained with.

Pretraining always decodes `num_tasks` tasks together (13 in the paper, 16 in the CPU recipe), and the tasks
exchange information in the decoder's fusion stages (task tokens attend to each other and to the query's voxels).
A pass that holds only the three or four labelled structures of a reference is a setting the network never saw.
Context tasks fill the pass the way a pretraining sample is filled: masks of the weight-free generator on the
reference image (the pretext's own kind of task, none of them overlapping a labelled structure) and, when
pretraining had one, the "everything in view" task. Their outputs are discarded; they only change what the
labelled tasks' tokens meet in the decoder. Measured in documentation/in_context_segmentation.md#context-tasks.
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from mass_nn.inference.reference_encoding import crop_around_box
from mass_nn.masks.generators.supervoxel import SupervoxelGenerator
from mass_nn.masks.proposal import CaseInput, MaskProposal
from mass_nn.networks.in_context.task_ops import TaskEmbedding
from mass_nn.preprocessing.crop_pad import centered_start, crop_or_pad

logger = logging.getLogger(__name__)

MAX_LABEL_OVERLAP = 0.1  # a generator mask sharing more than this share of its voxels with a label is not used


@dataclass(frozen=True)
class ContextTasks:
    """How a pass is filled: `total_tasks` tasks in all (labels first, then context; 0 or fewer than the labels:
    no context tasks), one of them the all-ones task when `everything_task`, generator masks of at least
    `min_voxels` voxels, chosen by `seed`."""

    total_tasks: int
    everything_task: bool = True
    min_voxels: int = 1
    seed: int = 0

    def count(self, num_labels: int) -> int:
        """Context tasks a pass with `num_labels` labelled tasks gets."""
        return max(0, self.total_tasks - num_labels)


NO_CONTEXT = ContextTasks(total_tasks=0)


def context_tasks_of_run(run_config: dict, patch_zyx) -> ContextTasks:
    """The context of a pretraining run's checkpoint (its run_config): its task count, everything task and mask
    floor (`min_mask_fraction` of the patch). A run that does not record a task count gets no context."""
    settings = run_config.get("extra", {}) if run_config else {}
    if "num_tasks" not in settings:
        return NO_CONTEXT
    floor = float(settings.get("min_mask_fraction", 0.0))
    return ContextTasks(total_tasks=int(settings["num_tasks"]),
                        everything_task=bool(settings.get("everything_task", True)),
                        min_voxels=max(1, math.ceil(floor * float(np.prod(patch_zyx)))))


@dataclass
class ContextReference:
    """A reference as the context needs it: its preprocessed image (c, z, y, x), its label map (z, y, x) and the
    generator's view of it (masks/case_loading.py: case_input_from_arrays)."""

    image: np.ndarray
    labels: np.ndarray
    generator_input: CaseInput


def eligible_context_masks(proposals: list[MaskProposal], labels: np.ndarray, min_voxels: int) -> list[MaskProposal]:
    """The proposals of at least `min_voxels` voxels that share at most MAX_LABEL_OVERLAP of them with a label."""
    labelled = np.asarray(labels) > 0
    eligible = []
    for proposal in proposals:
        voxels = proposal.voxels
        if voxels < min_voxels:
            continue
        inside = labelled[tuple(slice(a, b) for a, b in proposal.box)]
        if np.count_nonzero(inside & proposal.crop) <= MAX_LABEL_OVERLAP * voxels:
            eligible.append(proposal)
    return eligible


def split_count(count: int, parts: int) -> list[int]:
    """`count` spread over `parts` as evenly as possible, the first parts taking the remainder."""
    return [count // parts + (1 if i < count % parts else 0) for i in range(parts)]


def _encode(network: nn.Module, image_crop: np.ndarray, mask_crop: np.ndarray, device) -> TaskEmbedding:
    return network.encode_task(torch.from_numpy(np.ascontiguousarray(image_crop, dtype=np.float32))[None].to(device),
                               torch.from_numpy(np.ascontiguousarray(mask_crop, dtype=np.float32))[None, None]
                               .to(device))


def everything_crops(image: np.ndarray, patch_zyx) -> tuple[np.ndarray, np.ndarray]:
    """(image crop, all-ones mask crop) of the window centred on the volume: 1 inside the volume, 0 in padding,
    as pretraining's everything task."""
    centre = (np.asarray(image.shape[1:], dtype=np.float64) - 1) / 2.0
    start = centered_start(centre, patch_zyx)
    inside = np.ones((1, *image.shape[1:]), dtype=np.float32)
    return crop_or_pad(np.asarray(image, dtype=np.float32), start, patch_zyx), crop_or_pad(inside, start, patch_zyx)[0]


@torch.no_grad()
def encode_context_tasks(network: nn.Module, references: list[ContextReference], num_labels: int,
                         context: ContextTasks, patch_zyx, device: torch.device | str = "cpu"
                         ) -> TaskEmbedding | None:
    """The context tasks' embedding [1, E, T, C_i] per stage for a pass with `num_labels` labelled tasks, or
    None when the pass gets none. Generator masks are spread over the references; a reference with fewer
    eligible masks than its share gives what it has (logged)."""
    count = context.count(num_labels)
    if count == 0 or not references:
        return None
    shots: list[TaskEmbedding] = []
    if context.everything_task:
        shots.append(_encode(network, *everything_crops(references[0].image, patch_zyx), device))
        count -= 1
    rng = np.random.default_rng([context.seed, 104729])
    generator = SupervoxelGenerator()
    for reference, share in zip(references, split_count(count, len(references))):
        if share == 0:
            continue
        eligible = eligible_context_masks(generator.generate(reference.generator_input), reference.labels,
                                          context.min_voxels)
        if len(eligible) < share:
            logger.info("reference %s: %d context masks of %d wanted (masks of >= %d voxels away from the labels)",
                        reference.generator_input.case_id, len(eligible), share, context.min_voxels)
        for index in sorted(rng.permutation(len(eligible))[:share]):
            proposal = eligible[int(index)]
            full = proposal.full(reference.labels.shape)[None].astype(np.float32)
            shots.append(_encode(network, crop_around_box(reference.image, proposal.box, patch_zyx),
                                 crop_around_box(full, proposal.box, patch_zyx)[0], device))
    if not shots:
        return None
    return [torch.cat(stage, dim=1) for stage in zip(*shots)]
