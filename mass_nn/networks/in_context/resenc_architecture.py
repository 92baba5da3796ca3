"""nnU-Net's residual encoder (ResEnc) as an nnU-Net plans file describes it, read without nnU-Net installed.

An nnU-Net v2 plans file (e.g. nnUNetResEncUNetMPlans.json, written by `nnUNetv2_plan_experiment -pl
nnUNetPlannerResEncM`) holds, per configuration, `architecture.network_class_name` and `architecture.arch_kwargs`.
`ResEncArchitecture` keeps the part of those kwargs that fixes the encoder's weights (stage widths, strides, kernel
sizes, residual blocks per stage, conv bias, norm settings) plus the decoder's convs per stage, so that a MASS
network built on it has exactly nnU-Net's encoder, key for key, and an export can rebuild nnU-Net's whole network.
Only the combination nnU-Net's ResEnc planners write is accepted (Conv3d, InstanceNorm3d, LeakyReLU, no dropout,
basic residual blocks); anything else is refused naming the field.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from mass_nn.errors import MassError
from mass_nn.networks.conv_blocks import as_triple
from mass_nn.networks.network_base import NetworkConfig

RESENC_CLASS = "dynamic_network_architectures.architectures.unet.ResidualEncoderUNet"
# arch_kwargs that must name exactly these classes (as nnU-Net writes them) for the weights to mean the same
REQUIRED_OPERATORS = {"conv_op": ("torch.nn.modules.conv.Conv3d", "torch.nn.Conv3d"),
                      "norm_op": ("torch.nn.modules.instancenorm.InstanceNorm3d", "torch.nn.InstanceNorm3d"),
                      "nonlin": ("torch.nn.LeakyReLU", "torch.nn.modules.activation.LeakyReLU"),
                      "dropout_op": (None,)}


@dataclass
class ResEncArchitecture(NetworkConfig):
    """The weight-relevant arch_kwargs of nnU-Net's ResidualEncoderUNet (one entry per stage, shallow to deep;
    strides and kernel sizes in nnU-Net's axis order, which is the numpy (z, y, x) order of its arrays)."""

    features_per_stage: list[int]
    strides: list[list[int]]
    kernel_sizes: list[list[int]]
    n_blocks_per_stage: list[int]
    n_conv_per_stage_decoder: list[int]
    conv_bias: bool = True
    norm_eps: float = 1e-5
    norm_affine: bool = True

    @property
    def n_stages(self) -> int:
        return len(self.features_per_stage)

    def cumulative_strides(self) -> list[list[int]]:
        """Per stage, how many input voxels one feature voxel spans along each axis (shallow to deep)."""
        out, total = [], [1, 1, 1]
        for stride in self.strides:
            total = [t * s for t, s in zip(total, stride)]
            out.append(list(total))
        return out

    def validate(self) -> None:
        problems = self.problems()
        if problems:
            raise ValueError("invalid ResEncArchitecture: " + "; ".join(problems))

    def problems(self) -> list[str]:
        """What keeps this from building an encoder (empty when it can)."""
        n, out = self.n_stages, []
        if n < 2:
            out.append(f"features_per_stage needs at least 2 stages, got {self.features_per_stage}")
        for name in ("strides", "kernel_sizes"):
            value = getattr(self, name)
            if len(value) != n or any(len(v) != 3 or min(v) < 1 for v in value):
                out.append(f"{name} must hold {n} triples of positive integers, got {value}")
        if len(self.n_blocks_per_stage) != n or min(self.n_blocks_per_stage, default=0) < 1:
            out.append(f"n_blocks_per_stage must hold {n} integers >= 1, got {self.n_blocks_per_stage}")
        if len(self.n_conv_per_stage_decoder) != n - 1 or min(self.n_conv_per_stage_decoder, default=0) < 1:
            out.append(f"n_conv_per_stage_decoder must hold {n - 1} integers >= 1, got {self.n_conv_per_stage_decoder}")
        if min(self.features_per_stage, default=0) < 1:
            out.append(f"features_per_stage must be positive, got {self.features_per_stage}")
        if not out and any(k % 2 == 0 for ks in self.kernel_sizes for k in ks):
            out.append(f"kernel_sizes must be odd, got {self.kernel_sizes}")
        return out


def read_nnunet_plans(path: str | Path, configuration: str = "3d_fullres") -> tuple[ResEncArchitecture, dict]:
    """(architecture, configuration entry) of `configuration` in the nnU-Net plans file at `path`; a file that is
    not an nnU-Net ResEnc plans file raises MassError naming the file, the field and the fix."""
    path = Path(path)
    if not path.is_file():
        raise MassError(f"{path}: nnU-Net plans file not found; pass the nnUNetResEncUNet{{M,L}}Plans.json that "
                        f"nnUNetv2_plan_experiment wrote into nnUNet_preprocessed/<Dataset>/")
    try:
        plans = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise MassError(f"{path}: not readable as JSON ({err}); pass an nnU-Net plans file") from err
    configurations = plans.get("configurations") if isinstance(plans, dict) else None
    if not isinstance(configurations, dict) or configuration not in configurations:
        known = sorted(configurations) if isinstance(configurations, dict) else []
        raise MassError(f"{path}: no configuration {configuration!r} (has {known}); pass one of those, usually "
                        f"3d_fullres")
    entry = _resolved_configuration(configurations, configuration, path)
    architecture = entry.get("architecture", {})
    if architecture.get("network_class_name") != RESENC_CLASS:
        raise MassError(f"{path} ({configuration}): network {architecture.get('network_class_name')!r} is not "
                        f"nnU-Net's ResidualEncoderUNet; plan with -pl nnUNetPlannerResEncM (or L, XL)")
    return _architecture_from_kwargs(architecture.get("arch_kwargs", {}), f"{path} {configuration}"), entry


def _resolved_configuration(configurations: dict, name: str, path: Path) -> dict:
    """nnU-Net configurations may inherit from another one (`inherits_from`); merge them like nnU-Net does."""
    entry, seen = dict(configurations[name]), {name}
    while "inherits_from" in entry:
        parent = entry.pop("inherits_from")
        if parent in seen or parent not in configurations:
            raise MassError(f"{path}: configuration {name!r} inherits from {parent!r}, which is missing or circular")
        seen.add(parent)
        entry = {**configurations[parent], **entry}
    return entry


def _architecture_from_kwargs(kwargs: dict, source: str) -> ResEncArchitecture:
    for key, accepted in REQUIRED_OPERATORS.items():
        if kwargs.get(key) not in accepted:
            raise MassError(f"{source}: arch_kwargs {key}={kwargs.get(key)!r}; MASS builds nnU-Net's ResEnc with "
                            f"{accepted[0]} only - plan with nnU-Net's ResEnc planners")
    n = kwargs.get("n_stages")
    per_stage = {}
    for key in ("features_per_stage", "n_blocks_per_stage", "n_conv_per_stage_decoder"):
        value = kwargs.get(key)
        per_stage[key] = [int(value)] * (n if key != "n_conv_per_stage_decoder" else n - 1) \
            if isinstance(value, int) and isinstance(n, int) else value
    try:
        architecture = ResEncArchitecture(
            features_per_stage=[int(v) for v in per_stage["features_per_stage"]],
            strides=[as_triple(s) for s in kwargs["strides"]],
            kernel_sizes=[as_triple(k) for k in kwargs["kernel_sizes"]],
            n_blocks_per_stage=[int(v) for v in per_stage["n_blocks_per_stage"]],
            n_conv_per_stage_decoder=[int(v) for v in per_stage["n_conv_per_stage_decoder"]],
            conv_bias=bool(kwargs.get("conv_bias", False)),
            norm_eps=float((kwargs.get("norm_op_kwargs") or {}).get("eps", 1e-5)),
            norm_affine=bool((kwargs.get("norm_op_kwargs") or {}).get("affine", True)))
    except (KeyError, TypeError, ValueError) as err:
        raise MassError(f"{source}: arch_kwargs incomplete or malformed ({type(err).__name__}: {err}); re-plan "
                        f"with nnUNetv2_plan_experiment") from err
    problems = architecture.problems()
    if n != architecture.n_stages:
        problems.insert(0, f"n_stages {n} but {architecture.n_stages} widths")
    if problems:
        raise MassError(f"{source}: " + "; ".join(problems))
    return architecture
