"""The -s settings that put nnU-Net's own ResEnc encoder into a pretrainer's network (documentation/nnunet.md):
shared by every pretrainer whose encoder may be the ResEnc (MASS, SimCLR), so the keys and their reading are one."""
from __future__ import annotations

from dataclasses import dataclass

from mass_nn.networks.in_context.resenc_architecture import ResEncArchitecture, read_nnunet_plans


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
