"""Which fixed-class segmentation network a FINETUNE run trains, and which weights it starts from.

- no checkpoint: a FixedClassSegmenter (the in-context model with class embeddings) configured from the plans;
- a MASS checkpoint (InContextSegmenter, or an earlier FixedClassSegmenter): the same network, every in-context
  weight loaded (missing, unexpected or reshaped keys are an error);
- a baseline checkpoint: its network class names the downstream network (`downstream_network`, a NETWORKS name)
  whose builder (encoder_transfer_into_fixed_class below, or pretrained_networks.py) makes it and loads what
  transfers - CNN encoders into the FixedClassSegmenter's encoder (decoder and task encoder re-initialised), ViT
  or hybrid backbones into their own downstream networks.
"""
from __future__ import annotations

from mass_nn.errors import MassError
from mass_nn.model.checkpoint import Checkpoint, model_state_dict
from mass_nn.model.pretrained import WeightTransfer, transfer_weights
from mass_nn.model.pretrained_networks import SEGMENTERS_FROM_PRETRAINED
from mass_nn.networks.in_context.config import InContextNetworkConfig
from mass_nn.networks.in_context.fixed_class_segmenter import FixedClassConfig, FixedClassSegmenter
from mass_nn.networks.in_context.in_context_model import InContextSegmenter
from mass_nn.networks.network_base import Network
from mass_nn.registry import NETWORKS



def in_context_weights(checkpoint: Checkpoint) -> dict:
    """The in-context network's weights of a MASS or finetuned checkpoint (EMA when saved), keyed as
    InContextSegmenter names them."""
    state = model_state_dict(checkpoint)
    prefix = "segmenter."
    if any(key.startswith(prefix) for key in state):
        return {key[len(prefix):]: value for key, value in state.items() if key.startswith(prefix)}
    return state


def is_in_context_checkpoint(checkpoint: Checkpoint) -> bool:
    return issubclass(NETWORKS.get(checkpoint.meta.network_class), (InContextSegmenter, FixedClassSegmenter))


def build_downstream_network(checkpoint: Checkpoint | None, source: str, plans_config, in_channels: int,
                             class_names: list[str], label_values: list[int]
                             ) -> tuple[Network, WeightTransfer | None]:
    """(network, weight-transfer report or None) for a run with these classes."""
    if checkpoint is None:
        config = InContextNetworkConfig.from_configuration(plans_config, in_channels)
        return FixedClassSegmenter(FixedClassConfig(config, class_names, label_values)), None
    if is_in_context_checkpoint(checkpoint):
        stored = checkpoint.meta.network_config
        config = InContextNetworkConfig.from_dict(stored.get("network", stored))
        network = FixedClassSegmenter(FixedClassConfig(config, class_names, label_values))
        report = transfer_weights(network.segmenter, in_context_weights(checkpoint), source, allow_missing=False,
                                  allow_unexpected=False)
        return network, report
    pretraining_class = NETWORKS.get(checkpoint.meta.network_class)
    downstream = pretraining_class.downstream_network
    if downstream is None:
        raise MassError(f"{source}: a {checkpoint.meta.network_class} checkpoint has no downstream segmentation "
                        f"network; use a MASS or baseline pretraining checkpoint")
    builders = {NETWORKS.name_of(FixedClassSegmenter): encoder_transfer_into_fixed_class, **SEGMENTERS_FROM_PRETRAINED}
    return builders[downstream](checkpoint, class_names, label_values, source)


def encoder_transfer_into_fixed_class(checkpoint: Checkpoint, class_names: list[str], label_values: list[int],
                                      source: str) -> tuple[FixedClassSegmenter, WeightTransfer]:
    """A FixedClassSegmenter whose ResUNet encoder takes a CNN baseline's encoder weights (every encoder key must
    load; the decoder, task encoder and head start fresh). The baseline's configuration must hold the encoder's
    InContextNetworkConfig under "encoder"."""
    stored = checkpoint.meta.network_config
    if "encoder" not in stored:
        raise MassError(f"{source}: the {checkpoint.meta.network_class} configuration has no 'encoder' entry; "
                        f"its encoder cannot be placed in the downstream ResUNet")
    config = InContextNetworkConfig.from_dict(stored["encoder"])
    network = FixedClassSegmenter(FixedClassConfig(config, class_names, label_values))
    prefix = checkpoint.meta.encoder_key_prefix
    weights = {key[len(prefix):]: value for key, value in model_state_dict(checkpoint).items()
               if key.startswith(prefix)}
    report = transfer_weights(network.segmenter.encoder, weights, source, allow_missing=False,
                              allow_unexpected=False)
    return network, report
