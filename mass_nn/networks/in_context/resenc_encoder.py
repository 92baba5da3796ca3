"""nnU-Net's own residual encoder, from the dynamic-network-architectures package, as the in-context network's
encoder: the same modules and state-dict keys as the `encoder.` part of nnU-Net's ResidualEncoderUNet, so that
its weights export to nnU-Net unchanged (mass_nn/export/nnunet_export.py)."""
from __future__ import annotations

from dynamic_network_architectures.architectures.unet import ResidualEncoderUNet
from dynamic_network_architectures.building_blocks.residual_encoders import ResidualEncoder
from torch import Tensor, nn

from mass_nn.networks.in_context.resenc_architecture import ResEncArchitecture


def resenc_kwargs(architecture: ResEncArchitecture, in_channels: int) -> dict:
    """Keyword arguments of dynamic-network-architectures' ResidualEncoder / ResidualEncoderUNet, as nnU-Net
    builds them from a plans file's arch_kwargs (operators resolved to classes)."""
    return {"input_channels": in_channels, "n_stages": architecture.n_stages,
            "features_per_stage": list(architecture.features_per_stage), "conv_op": nn.Conv3d,
            "kernel_sizes": [list(k) for k in architecture.kernel_sizes],
            "strides": [list(s) for s in architecture.strides],
            "n_blocks_per_stage": list(architecture.n_blocks_per_stage), "conv_bias": architecture.conv_bias,
            "norm_op": nn.InstanceNorm3d,
            "norm_op_kwargs": {"eps": architecture.norm_eps, "affine": architecture.norm_affine},
            "dropout_op": None, "dropout_op_kwargs": None, "nonlin": nn.LeakyReLU, "nonlin_kwargs": {"inplace": True}}


class ResEncEncoder(ResidualEncoder):
    """ResidualEncoder with skips, initialised as nnU-Net initialises it (He init, last norm of each residual
    block zeroed); returns the stage outputs deepest first, like ResUNetEncoder."""

    def __init__(self, architecture: ResEncArchitecture, in_channels: int):
        super().__init__(**resenc_kwargs(architecture, in_channels), return_skips=True)
        self.apply(ResidualEncoderUNet.initialize)

    def forward(self, x: Tensor) -> list[Tensor]:
        """[B, in, D, H, W] → one map per stage, deepest first."""
        return super().forward(x)[::-1]
