"""The in-context segmenter (Iris architecture as released with MASS): encode a reference image and its masks
once into a task embedding, then segment any number of query images with it."""
from __future__ import annotations

import copy

from torch import Tensor

from mass_nn.networks.in_context.config import InContextNetworkConfig
from mass_nn.networks.in_context.decoder import MaskDecoder
from mass_nn.networks.in_context.encoder import check_spatial_size
from mass_nn.networks.in_context.image_encoder import build_image_encoder
from mass_nn.networks.in_context.mask_head import DynamicMaskHead
from mass_nn.networks.in_context.task_encoder import TaskEmbedding, TaskEncoder
from mass_nn.networks.network_base import Network


class InContextSegmenter(Network):
    """Encoder (our ResUNet, or nnU-Net's ResEnc when config.resenc is set) + task encoder + task-conditioned
    decoder + dynamic mask head.

    Images are [B, in_channels, D, H, W] with every side a multiple of config.size_divisors() and at least
    config.min_sizes() (16 and 32 for the ResUNet). Reference images may not exceed `config.input_size_zyx` in any
    axis (the positional maps have that size); query images may be larger.
    Masks are [B, K, D, H, W], one channel per task; logits are [B, K, D, H, W], one sigmoid channel per task.
    """

    encoder_key_prefix = "encoder."
    config_class = InContextNetworkConfig  # how checkpoints rebuild the network from its saved configuration

    def __init__(self, config: InContextNetworkConfig):
        super().__init__()
        config.validate()
        self.config = copy.deepcopy(config)
        self.encoder = build_image_encoder(config)
        self.task_encoder = TaskEncoder(config)
        self.decoder = MaskDecoder(config)
        self.head = DynamicMaskHead(sum(config.prior_channels()), config.channels[0])

    def encode_image(self, x: Tensor) -> list[Tensor]:
        """Encoder feature maps of x, deepest first (ResUNet: [B, c4, /16], [B, c3, /8], ..., [B, c0, /1])."""
        self._check_image(x, "image")
        return self.encoder(x)

    def encode_task(self, reference_image: Tensor, reference_masks: Tensor) -> TaskEmbedding:
        """Task embedding of K reference masks: num_prior_stages tensors [B, K, num_queries + 1, C_i] (deepest
        stage first). Task k's embedding depends only on the image and mask k."""
        self._check_reference(reference_image, reference_masks)
        return self._embed_tasks(self.encoder(reference_image), reference_masks)

    def segment(self, query_image: Tensor, task_embedding: TaskEmbedding) -> Tensor:
        """Logits [B, K, D, H, W] for the query under a (possibly cached) task embedding. An embedding with batch
        size 1 is applied to every query in the batch."""
        self._check_image(query_image, "query_image")
        task_embedding = self._broadcast_embedding(task_embedding, query_image.shape[0])
        dense, posteriors = self.decoder(self.encoder(query_image), task_embedding)
        return self.head(dense, posteriors)

    def forward(self, query_image: Tensor, reference_image: Tensor, reference_masks: Tensor) -> Tensor:
        """Logits [B, K, D, H, W] for the query, one channel per reference mask."""
        return self.segment(query_image, self.encode_task(reference_image, reference_masks))

    def dense_features(self, image: Tensor, masks: Tensor | None = None) -> Tensor:
        """The last decoder feature map [B, c0, D, H, W] of image, decoded under the task embedding of the image's
        own masks (one all-ones "whole view" mask when masks is None)."""
        if masks is None:
            masks = image.new_ones(image.shape[0], 1, *image.shape[2:])
        self._check_reference(image, masks)
        features = self.encoder(image)
        dense, _ = self.decoder(features, self._embed_tasks(features, masks))
        return dense

    def _embed_tasks(self, features: list[Tensor], masks: Tensor) -> TaskEmbedding:
        masks = masks if masks.is_floating_point() else masks.float()
        return self.task_encoder(features[: self.config.num_prior_stages], masks)

    def _check_image(self, x: Tensor, name: str) -> None:
        check_spatial_size(x, name, self.config.size_divisors(), self.config.min_sizes())
        if x.shape[1] != self.config.in_channels:
            raise ValueError(f"{name} of shape {list(x.shape)} has {x.shape[1]} channels; the network expects "
                             f"{self.config.in_channels}")

    def _check_reference(self, image: Tensor, masks: Tensor) -> None:
        self._check_image(image, "reference_image")
        if masks.dim() != 5 or masks.shape[0] != image.shape[0] or masks.shape[2:] != image.shape[2:] \
                or masks.shape[1] < 1:
            raise ValueError(f"reference_masks of shape {list(masks.shape)} must be [B, K >= 1, D, H, W] matching "
                             f"reference_image {list(image.shape)}")
        size, limit = list(image.shape[2:]), list(self.config.input_size_zyx)
        if any(side > most for side, most in zip(size, limit)):
            raise ValueError(f"reference of spatial size {size} is larger than the training patch input_size_zyx "
                             f"{limit} in at least one axis; crop the reference to at most {limit}")

    def _broadcast_embedding(self, task_embedding: TaskEmbedding, batch: int) -> TaskEmbedding:
        expected = self.config.prior_channels()
        shapes = [list(t.shape) for t in task_embedding]
        tokens = self.config.num_queries + 1
        valid = len(shapes) == len(expected) and all(
            len(s) == 4 and s[0] in (1, batch) and s[:2] == shapes[0][:2] and s[2] == tokens and s[3] == c
            for s, c in zip(shapes, expected))
        if not valid:
            raise ValueError(f"task embedding shapes {shapes} do not fit a query batch of {batch}: expected "
                             f"[[{batch} or 1, K, {tokens}, C] for C in {expected}]")
        return [t.expand(batch, *t.shape[1:]) for t in task_embedding]
