"""Rebuilding a network from its registered class name and saved configuration (as checkpoints store them)."""
from __future__ import annotations

from torch import nn

from mass_nn.registry import NETWORKS


def build_network(class_name: str, config: dict) -> nn.Module:
    """A freshly initialised network of the class registered as `class_name`, configured by `config`."""
    network_class = NETWORKS.get(class_name)
    return network_class(network_class.config_class.from_dict(config))
