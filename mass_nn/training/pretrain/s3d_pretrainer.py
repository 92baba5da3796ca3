"""S3DPretrainer: SparK-3D (Wald et al., CVPR 2025; nnssl SparkMAETrainer) on the MASS ResUNet.

The same block mask, loss, optimiser and augmentation as MAEPretrainer, but the encoder only computes on the
visible blocks (sparse convolutions, pooling and InstanceNorm; the input itself is masked too, so unlike nnssl no
hidden voxel reaches the stem convolution) and a densify step per level fills the hidden positions with learned
mask tokens before the plain decoder (S3DNetwork). The encoder keeps the dense ResUNet's keys and transfers to the
downstream ResUNet; mask tokens and densify projections stay behind.
"""
from __future__ import annotations

from torch import Tensor, nn

from mass_nn.networks.baselines.s3d_network import S3DNetwork
from mass_nn.networks.network_base import Network
from mass_nn.training.pretrain.mae_pretrainer import MAEPretrainer


class S3DPretrainer(MAEPretrainer):
    """-s settings: block_size, mask_ratio (as MAEPretrainer)."""

    def build_network(self) -> Network:
        config = self.reconstruction_config()
        return S3DNetwork(config)

    def reconstruct(self, network: nn.Module, image: Tensor, grid_mask: Tensor) -> Tensor:
        """The prediction of the whole crop by the sparse network, which masks the input itself."""
        return network(image, grid_mask)
