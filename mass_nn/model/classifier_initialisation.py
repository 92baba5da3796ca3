"""How a classification run's encoder starts: from a pretrained checkpoint's encoder, or randomly (scratch).

The encoder's shape comes from the pretrained checkpoint when there is one (it defines the encoder being
evaluated, whatever the target dataset's plans say), otherwise from the plans configuration. Only the input size
changes: the ResUNet encoder is fully convolutional, so the classifier may see larger or smaller windows than the
pretraining patches.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

from mass_nn.errors import MassError
from mass_nn.model.checkpoint import Checkpoint, encoder_state_dict
from mass_nn.model.pretrained import WeightTransfer, transfer_weights
from mass_nn.networks.in_context.config import InContextNetworkConfig
from mass_nn.networks.network_base import Network
from mass_nn.planning.plans import ConfigurationPlan
from mass_nn.registry import NETWORKS


def _encoder_part(config) -> InContextNetworkConfig | None:
    """The in-context network config inside a saved network config (itself, or one of its fields)."""
    if isinstance(config, InContextNetworkConfig):
        return config
    if dataclasses.is_dataclass(config):
        for field in dataclasses.fields(config):
            if isinstance(getattr(config, field.name), InContextNetworkConfig):
                return getattr(config, field.name)
    return None


def encoder_config(checkpoint: Checkpoint | None, checkpoint_path: str | None, configuration: ConfigurationPlan,
                   in_channels: int, input_size: list[int]) -> InContextNetworkConfig:
    """The encoder configuration of the classifier: the checkpoint's encoder, else the plans configuration's,
    with `input_size_zyx` set to `input_size`."""
    if checkpoint is None:
        config = InContextNetworkConfig.from_configuration(configuration, in_channels=in_channels)
    else:
        network_class = NETWORKS.get(checkpoint.meta.network_class)
        config = _encoder_part(network_class.config_class.from_dict(checkpoint.meta.network_config))
        if config is None:
            raise MassError(f"{checkpoint_path}: its network {checkpoint.meta.network_class} has no ResUNet encoder "
                            f"configuration; pass a checkpoint of mass_train PRETRAIN (or of another mass_nn run "
                            f"with the same encoder)")
    config = dataclasses.replace(config, input_size_zyx=list(input_size))
    config.validate()
    return config


def load_pretrained_encoder(network: Network, checkpoint: Checkpoint, source: str | Path) -> WeightTransfer:
    """Copy the checkpoint's encoder weights (its EMA copy when saved) into `network` under its
    `encoder_key_prefix` (the ResUNet classifier's encoder, a ViT, a MiM backbone).

    The report lists every key: the encoder's keys must all load (a missing or unexpected encoder key means
    another architecture and raises MassError naming the file); the head's keys are reported as missing and keep
    their random initialisation.
    """
    weights = {network.encoder_key_prefix + key: value for key, value in encoder_state_dict(checkpoint).items()}
    if not weights:
        raise MassError(f"{source}: no weights under the encoder prefix {checkpoint.meta.encoder_key_prefix!r}; "
                        f"pass a checkpoint of mass_train PRETRAIN")
    report = transfer_weights(network, weights, str(source), allow_missing=True, allow_unexpected=False)
    missing_encoder = [key for key in report.missing if key.startswith(network.encoder_key_prefix)]
    if missing_encoder:
        raise MassError(f"{source}: {len(missing_encoder)} encoder key(s) are not in the checkpoint (e.g. "
                        f"{missing_encoder[:3]}); the checkpoint was made for another encoder - use a matching one")
    return report
