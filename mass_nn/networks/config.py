"""Hyper-parameters of the in-context segmentation network, with presets and validation."""
from __future__ import annotations

from dataclasses import dataclass

from mass_nn.schema import from_dict, to_dict

FOREGROUND_POOLS = ("upsample", "adjoint")
# The encoder halves the resolution four times and InstanceNorm needs at least two voxels per axis at 1/16.
SIZE_DIVISOR = 16
MIN_SIZE = 32
MAX_PRIOR_STAGES = 4  # stage i uses pixel-shuffle factor 16 / 2**i; a fifth stage would be at full resolution


@dataclass
class InContextNetworkConfig:
    """Shape of an `InContextSegmenter`.

    channels: feature channels of the 5 encoder levels, shallow to deep. num_blocks: residual blocks in each of the
    4 down stages (mirrored by the 4 up stages). input_size_zyx: the training patch, which fixes the size of the
    learnable positional maps and therefore the largest reference image. num_prior_stages: how many of the deepest
    levels get a task embedding (and a fusion stage in the decoder). Attention uses channels / head_dim heads.
    foreground_pool: "upsample" (reference algorithm) or "adjoint" (same result, pooled at low resolution).
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

    def to_dict(self) -> dict:
        """A JSON-ready dict that `from_dict` turns back into an equal config."""
        return to_dict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "InContextNetworkConfig":
        """Build and validate a config; unknown, missing or ill-typed fields raise PlansValidationError."""
        config = from_dict(cls, d)
        config.validate()
        return config

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
    def from_configuration(cls, configuration, in_channels: int) -> "InContextNetworkConfig":
        """The network of a plans configuration (`mass_nn.planning.plans.ConfigurationPlan`)."""
        network = configuration.network
        config = cls(in_channels=in_channels, channels=list(network.channels), num_blocks=list(network.num_blocks),
                     input_size_zyx=list(configuration.patch_size_zyx), num_prior_stages=network.num_prior_stages,
                     num_queries=network.num_queries)
        config.validate()
        return config

    def prior_channels(self) -> list[int]:
        """Channels of the levels that get a task embedding, deepest first."""
        return [self.channels[-1 - i] for i in range(self.num_prior_stages)]

    def validate(self) -> None:
        """Raise ValueError naming the first field that cannot build a network."""
        problems = self._problems()
        if problems:
            raise ValueError("invalid InContextNetworkConfig: " + "; ".join(problems))

    def _problems(self) -> list[str]:
        problems = []
        if self.in_channels < 1:
            problems.append(f"in_channels must be >= 1, got {self.in_channels}")
        if len(self.channels) != 5 or min(self.channels, default=0) < 1:
            problems.append(f"channels must be 5 positive integers (shallow to deep), got {self.channels}")
        if len(self.num_blocks) != 4 or min(self.num_blocks, default=0) < 1:
            problems.append(f"num_blocks must be 4 integers >= 1, got {self.num_blocks}")
        if len(self.input_size_zyx) != 3 or any(s % SIZE_DIVISOR or s < MIN_SIZE for s in self.input_size_zyx):
            problems.append(f"input_size_zyx must be 3 sides, each divisible by {SIZE_DIVISOR} and >= {MIN_SIZE}, "
                            f"got {self.input_size_zyx}")
        if not 1 <= self.num_prior_stages <= MAX_PRIOR_STAGES:
            problems.append(f"num_prior_stages must be in [1, {MAX_PRIOR_STAGES}], got {self.num_prior_stages}")
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

    def _head_problems(self) -> list[str]:
        return [f"channels[{len(self.channels) - 1 - i}] = {c} (a prior stage) must be divisible by "
                f"head_dim = {self.head_dim}"
                for i, c in enumerate(self.prior_channels()) if c % self.head_dim]
