"""MASSCPUPretrainer: MASS with the CPU recipe, the settings under which in-context segmentation starts to emerge
within about an hour on two cores (documentation/pretraining.md#the-cpu-recipe, measured in
documentation/benchmarks.md#in-context-learning-curve-on-organ-level-mr-cpu-recipe).

Use it with the `cpu_in_context` plans preset, whose coarser grid and smaller patch make a step about half as
expensive as `3d_cpu`'s. What differs from MASSPretrainer, and why:
- `min_mask_fraction` 0.01: masks under 1 % of the patch volume are never tasks. A weight-free bank is mostly
  small supervoxel parts (median about 190 voxels at 4 mm); drawn uniformly they fill nearly every channel with
  a speck, and the network first learns to predict nothing, which is also its answer to an organ reference.
- `distant_query` 0.5: half the samples place the query view anywhere in the volume, so the model must find a
  structure by its appearance rather than at the reference's position, as whole-volume inference asks (test
  1-shot at 0.5: CHAOS 17.0 vs 10.7 %, MS-CMRSeg 20.0 vs 17.4 % after the recipe's 1,200 steps;
  documentation/in_context_ablations.md, runs 9-11).
- `case_sampling` "volume": cases are drawn in proportion to their voxel count, so the pool's large abdominal
  volumes are drawn about as often as their share of its voxels (47 % of the MR pool's samples instead of 21 %) and
  its small tumour crops rarely (test 1-shot in context after the bf16 batch-16 hour: MS-CMRSeg 50.7 vs 42.6 %,
  CHAOS level at 41.5 vs 41.1 %; val patches 59.2 vs 41.9 % and 54.3 vs 46.3 %; documentation/
  in_context_ablations.md, run 25).
- `num_tasks` 16 instead of the paper's 13: more of each sample's masks become tasks, at about 5 % more per step
  (test 1-shot in context after the bf16 batch-16 run: CHAOS 52.0 vs 41.5 %, MS-CMRSeg 48.2 vs 50.7 %; val
  patches 64.2 vs 59.2 % and 53.7 vs 54.3 %; documentation/in_context_ablations.md, run 26).
- lr 2e-3 at a global batch of 2 (measured: it learns; MASSPretrainer's rule would scale the paper's 2e-3 at
  batch 32 down to 5e-4 here): other global batches scale from batch 2.
- 12 epochs of 100 steps (about 45 minutes on two cores at 4 mm, 48³): one curve point per 100 steps, and the poly
  decay spread over the run actually given.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from mass_nn.training.pretrain.mass_pretrainer import MASSPretrainer, MASSSettings


@dataclass
class MASSCPUSettings(MASSSettings):
    """MASSSettings with the recipe's mask floor, distant query views, cases drawn by volume and 16 tasks."""

    num_tasks: int = 16
    min_mask_fraction: float = 0.01
    distant_query: float = 0.5
    case_sampling: str = "volume"


class MASSCPUPretrainer(MASSPretrainer):
    """MASSPretrainer with the CPU recipe's defaults (every one can still be overridden on the command line)."""

    default_epochs: ClassVar[int] = 12
    default_iters_per_epoch: ClassVar[int] = 100
    lr_reference_batch: ClassVar[int | None] = 2
    settings_class: ClassVar[type] = MASSCPUSettings
