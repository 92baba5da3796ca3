"""Hyper-parameters of the in-context segmentation network, with presets and validation."""
from __future__ import annotations

import math
from dataclasses import dataclass

from mass_nn.networks.in_context.resenc_architecture import ResEncArchitecture
from mass_nn.networks.network_base import NetworkConfig

FOREGROUND_POOLS = ("upsample", "adjoint")
# The ResUNet encoder halves the resolution four times and InstanceNorm needs at least two voxels per axis at 1/16.
SIZE_DIVISOR = 16
MIN_SIZE = 32
MAX_PRIOR_STAGES = 4  # stage i uses pixel-shuffle factor 16 / 2**i; a fifth stage would be at full resolution


@dataclass
class InContextNetworkConfig(NetworkConfig):
    """Shape of an `InContextSegmenter`.

    channels: feature channels of the 5 encoder levels, shallow to deep. num_blocks: residual blocks in each of the
    4 down stages (mirrored by the 4 up stages). input_size_zyx: the training patch, which fixes the size of the
    learnable positional maps and therefore the largest reference image. num_prior_stages: how many of the deepest
    levels get a task embedding (and a fusion stage in the decoder). Attention uses channels / head_dim heads.
    foreground_pool: "upsample" (reference algorithm) or "adjoint" (same result, pooled at low resolution).

    resenc: None builds our ResUNet encoder (5 levels, stride 2 per stage). An nnU-Net ResEnc architecture builds
    nnU-Net's own ResidualEncoder instead (documentation/nnunet.md): then `channels` are its stage widths, one level
    per stage, `num_blocks` the decoder's residual blocks per up stage (one fewer than the levels), and every side
    of input_size_zyx a multiple of the encoder's total stride on that axis.
    """

    in_channels: int
    channels: list[int]
    num_blocks: list[int]
    input_size_zyx: list[int]
    num_prior_stages: int = 3
    num_queries: int = 10
    head_dim: int = 32
    mlp_ratio: int = 4
    task_depth: int = 2
    fusion_depth: int = 2
    norm_eps: float = 1e-4
    foreground_pool: str = "adjoint"
    resenc: ResEncArchitecture | None = None


    @classmethod
    def paper(cls) -> "InContextNetworkConfig":
        """The MASS paper network: 120,126,373 parameters, 128³ patches, one input channel."""
        return cls(in_channels=1, channels=[32, 64, 128, 256, 512], num_blocks=[2, 2, 2, 2],
                   input_size_zyx=[128, 128, 128])

    @classmethod
    def tiny(cls) -> "InContextNetworkConfig":
        """A CPU-sized network for tests (6,619,477 parameters, 32³ patches, one input channel)."""
        return cls(in_channels=1, channels=[8, 16, 32, 64, 128], num_blocks=[1, 1, 1, 1],
                   input_size_zyx=[32, 32, 32])

    @classmethod
    def from_configuration(cls, configuration, in_channels: int,
                           resenc: ResEncArchitecture | None = None) -> "InContextNetworkConfig":
        """The network of a plans configuration (`mass_nn.planning.plans.ConfigurationPlan`); with `resenc`, its
        encoder is nnU-Net's ResEnc (widths and decoder blocks from it, patch and task settings from the plans)."""
        network = configuration.network
        channels = list(network.channels) if resenc is None else list(resenc.features_per_stage)
        num_blocks = list(network.num_blocks) if resenc is None else list(resenc.n_conv_per_stage_decoder)
        config = cls(in_channels=in_channels, channels=channels, num_blocks=num_blocks,
                     input_size_zyx=list(configuration.patch_size_zyx), num_prior_stages=network.num_prior_stages,
                     num_queries=network.num_queries, resenc=resenc)
        config.validate()
        return config

    def prior_channels(self) -> list[int]:
        """Channels of the levels that get a task embedding, deepest first."""
        return [self.channels[-1 - i] for i in range(self.num_prior_stages)]

    def level_strides(self) -> list[list[int]]:
        """Per level (shallow to deep), input voxels per feature voxel along z, y, x."""
        if self.resenc is not None:
            return self.resenc.cumulative_strides()
        return [[2 ** level] * 3 for level in range(len(self.channels))]

    def size_divisors(self) -> list[int]:
        """Every image side must be a multiple of these (z, y, x): the deepest level's stride."""
        return self.level_strides()[-1]

    def min_sizes(self) -> list[int]:
        """The smallest image sides: two deepest-level voxels per axis for the ResUNet (InstanceNorm needs more
        than one value); one for ResEnc, whose plans nnU-Net sizes itself."""
        if self.resenc is not None:
            return self.size_divisors()
        return [MIN_SIZE] * 3

    def validate(self) -> None:
        """Raise ValueError naming the first field that cannot build a network."""
        problems = self._problems()
        if problems:
            raise ValueError("invalid InContextNetworkConfig: " + "; ".join(problems))

    def _problems(self) -> list[str]:
        problems = []
        if self.in_channels < 1:
            problems.append(f"in_channels must be >= 1, got {self.in_channels}")
        problems += self._level_problems() if self.resenc is None else self._resenc_problems()
        if problems:
            return problems
        divisors, smallest = self.size_divisors(), self.min_sizes()
        if len(self.input_size_zyx) != 3 or any(s % d or s < m for s, d, m in zip(self.input_size_zyx, divisors,
                                                                                   smallest)):
            problems.append(f"input_size_zyx must be 3 sides, multiples of {divisors} and at least {smallest}, "
                            f"got {self.input_size_zyx}")
        if self.resenc is not None and math.prod(s // d for s, d in zip(self.input_size_zyx, divisors)) < 2:
            problems.append(f"input_size_zyx {self.input_size_zyx} leaves one voxel at the deepest level (stride "
                            f"{divisors}); InstanceNorm needs more - use a larger patch")
        most = MAX_PRIOR_STAGES if self.resenc is None else len(self.channels) - 1
        if not 1 <= self.num_prior_stages <= most:
            problems.append(f"num_prior_stages must be in [1, {most}], got {self.num_prior_stages}")
        for name in ("num_queries", "head_dim", "mlp_ratio", "task_depth", "fusion_depth"):
            if getattr(self, name) < 1:
                problems.append(f"{name} must be >= 1, got {getattr(self, name)}")
        if not self.norm_eps > 0:
            problems.append(f"norm_eps must be > 0, got {self.norm_eps}")
        if self.foreground_pool not in FOREGROUND_POOLS:
            problems.append(f"foreground_pool must be one of {list(FOREGROUND_POOLS)}, got {self.foreground_pool!r}")
        if not problems:
            problems += self._head_problems()
        return problems

    def _level_problems(self) -> list[str]:
        problems = []
        if len(self.channels) != 5 or min(self.channels, default=0) < 1:
            problems.append(f"channels must be 5 positive integers (shallow to deep), got {self.channels}")
        if len(self.num_blocks) != 4 or min(self.num_blocks, default=0) < 1:
            problems.append(f"num_blocks must be 4 integers >= 1, got {self.num_blocks}")
        return problems

    def _resenc_problems(self) -> list[str]:
        problems = [f"resenc: {p}" for p in self.resenc.problems()]
        if problems:
            return problems
        if list(self.channels) != list(self.resenc.features_per_stage):
            problems.append(f"channels {self.channels} must be the ResEnc stage widths "
                            f"{self.resenc.features_per_stage}")
        if len(self.num_blocks) != len(self.channels) - 1 or min(self.num_blocks, default=0) < 1:
            problems.append(f"num_blocks (decoder blocks per up stage) must be {len(self.channels) - 1} integers "
                            f">= 1, got {self.num_blocks}")
        return problems

    def _head_problems(self) -> list[str]:
        return [f"channels[{len(self.channels) - 1 - i}] = {c} (a prior stage) must be divisible by "
                f"head_dim = {self.head_dim}"
                for i, c in enumerate(self.prior_channels()) if c % self.head_dim]
