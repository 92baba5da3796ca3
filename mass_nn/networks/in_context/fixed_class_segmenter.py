"""The in-context segmenter turned into a fixed-class segmenter for finetuning: one learnable task embedding
per class (all stages) replaces the reference, so a query is segmented for the dataset's classes with no
reference at inference (the release's finetuning design)."""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from mass_nn.networks.in_context.config import InContextNetworkConfig
from mass_nn.networks.in_context.in_context_model import InContextSegmenter
from mass_nn.networks.in_context.task_ops import TaskEmbedding
from mass_nn.networks.network_base import Network, NetworkConfig


@dataclass
class FixedClassConfig(NetworkConfig):
    """The in-context network's configuration plus the classes (names and label values, same order)."""

    network: InContextNetworkConfig
    class_names: list[str]
    label_values: list[int]

    def validate(self) -> None:
        self.network.validate()
        if len(self.class_names) != len(self.label_values) or not self.class_names:
            raise ValueError(f"need one label value per class name, got {self.class_names} / {self.label_values}")


class FixedClassSegmenter(Network):
    """Logits [B, num_classes, D, H, W] of a query image under the learnable class embeddings.

    `class_embeddings[i]` is stage i's [1, num_classes, num_queries + 1, C_i] parameter; initialise it from
    reference embeddings with `set_class_embeddings`. State-dict keys of the wrapped network keep the
    in-context model's names behind the prefix "segmenter.", so pretrained weights map one to one.
    """

    encoder_key_prefix = "segmenter.encoder."
    config_class = FixedClassConfig

    def __init__(self, config: FixedClassConfig):
        super().__init__()
        config.validate()
        self.config = config
        self.segmenter = InContextSegmenter(config.network)
        tokens = config.network.num_queries + 1
        self.class_embeddings = nn.ParameterList([
            nn.Parameter(torch.zeros(1, len(config.class_names), tokens, channels))
            for channels in config.network.prior_channels()])
        for parameter in self.class_embeddings:
            nn.init.xavier_uniform_(parameter.data.view(-1, parameter.shape[-1]))

    @property
    def num_classes(self) -> int:
        return len(self.config.class_names)

    def task_embedding(self) -> TaskEmbedding:
        """The class embeddings as a task embedding (batch 1, K = num_classes)."""
        return list(self.class_embeddings)

    @torch.no_grad()
    def set_class_embeddings(self, embedding: TaskEmbedding) -> None:
        """Copy a [1, num_classes, T, C_i] task embedding (e.g. averaged references) into the parameters."""
        for parameter, value in zip(self.class_embeddings, embedding, strict=True):
            if tuple(value.shape) != tuple(parameter.shape):
                raise ValueError(f"class embedding of shape {list(value.shape)}, expected {list(parameter.shape)}")
            parameter.copy_(value)

    def forward(self, image: Tensor) -> Tensor:
        return self.segmenter.segment(image, self.task_embedding())
