"""The -s settings that put nnU-Net's own ResEnc encoder into a pretrainer's network (documentation/nnunet.md):
shared by every pretrainer whose encoder may be the ResEnc (MASS, SimCLR), so the keys, their reading and the
error for a ResEnc that does not fit the plans are one."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, TypeVar

from mass_nn.errors import MassError
from mass_nn.networks.in_context.resenc_architecture import ResEncArchitecture, read_nnunet_plans
from mass_nn.planning.plans import ConfigurationPlan

Config = TypeVar("Config")


@dataclass
class NnUNetEncoderSettings:
    """nnunet_plans: an nnU-Net ResEnc plans file (nnUNetResEncUNet{M,L,XL}Plans.json) whose encoder the network
    trains instead of our ResUNet ("" = ours); nnunet_configuration: that file's configuration."""

    nnunet_plans: str = ""
    nnunet_configuration: str = "3d_fullres"

    def resenc_architecture(self) -> ResEncArchitecture | None:
        """The ResEnc of the plans file, or None for our ResUNet encoder."""
        if not self.nnunet_plans:
            return None
        return read_nnunet_plans(self.nnunet_plans, self.nnunet_configuration)[0]

    def network_config(self, build: Callable[[ResEncArchitecture | None], Config], network: str,
                       configuration_plan: ConfigurationPlan) -> Config:
        """`build(resenc)` with the plans file's ResEnc (None: ours). A ResEnc the network cannot be built on (its
        ValueError) becomes one MassError naming the plans file, the total stride and the patch."""
        resenc = self.resenc_architecture()
        try:
            return build(resenc)
        except ValueError as err:
            if resenc is None:
                raise
            raise MassError(f"{self.nnunet_plans}: no {network} on its ResEnc (total stride "
                            f"{resenc.cumulative_strides()[-1]}) with the {configuration_plan.name} plans (patch "
                            f"{configuration_plan.patch_size_zyx}): {err}") from err
