"""Pretrained weights for nnU-Net v2: a file that `nnUNetv2_train ... -pretrained_weights FILE` loads.

nnU-Net's `load_pretrained_weights` reads `torch.load(FILE)['network_weights']` and insists that every key of
its network except the segmentation layers (`.seg_layers.`) is present with the same shape. So the export is a
whole ResidualEncoderUNet state dict: the encoder from the MASS checkpoint (EMA weights when it has them, key for
key: our in-context network's ResEnc encoder is nnU-Net's own module) and the decoder as nnU-Net initialises it
(our task-conditioned decoder has no counterpart in nnU-Net's plain U-Net decoder, so none of it transfers), the
segmentation layers left out. Before anything is written, the checkpoint's encoder is compared with the one the
nnU-Net plans describe, and every mismatch is named.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from dynamic_network_architectures.architectures.unet import ResidualEncoderUNet

from mass_nn.errors import MassError
from mass_nn.io.atomic import atomic_path, read_json
from mass_nn.model.checkpoint import load_checkpoint, model_state_dict
from mass_nn.networks.in_context.resenc_architecture import ResEncArchitecture, read_nnunet_plans
from mass_nn.networks.in_context.resenc_encoder import resenc_kwargs

SEGMENTATION_LAYER_KEY = ".seg_layers."  # what nnU-Net's load_pretrained_weights never transfers


@dataclass(frozen=True)
class ExportSummary:
    output: Path
    encoder_tensors: int  # encoder entries taken from the checkpoint
    decoder_tensors: int  # decoder entries at nnU-Net's initialisation
    input_channels: int


def export_to_nnunet(checkpoint: str | Path, nnunet_plans: str | Path, configuration: str, output: str | Path,
                     seed: int = 0) -> ExportSummary:
    """Write `output` for nnU-Net's -pretrained_weights from a checkpoint with a ResEnc encoder (MASS or SimCLR)."""
    loaded = load_checkpoint(checkpoint)
    encoder_config = _encoder_config(loaded.meta.network_config)
    ours = _checkpoint_architecture(encoder_config, checkpoint)
    target, _ = read_nnunet_plans(nnunet_plans, configuration)
    in_channels = int(encoder_config["in_channels"])
    target_channels = _nnunet_input_channels(Path(nnunet_plans), in_channels)
    mismatches = architecture_mismatches(ours, target)
    if target_channels != in_channels:
        mismatches.insert(0, f"input channels: checkpoint {in_channels}, nnU-Net dataset.json {target_channels}")
    if mismatches:
        raise MassError(f"{checkpoint} does not fit {nnunet_plans} ({configuration}): " + "; ".join(mismatches)
                        + " - pretrain with -s nnunet_plans= that plans file, or export to the plans it was "
                          "pretrained with")
    network = nnunet_resenc_unet(target, in_channels, seed)
    encoder = {k.removeprefix("encoder."): v for k, v in model_state_dict(loaded).items() if k.startswith("encoder.")}
    network.encoder.load_state_dict(encoder, strict=True)
    weights = {k: v.detach().clone() for k, v in network.state_dict().items() if SEGMENTATION_LAYER_KEY not in k}
    provenance = {"source_checkpoint": str(Path(checkpoint).resolve()), "nnunet_plans": str(Path(nnunet_plans)),
                  "configuration": configuration, "trainer": loaded.meta.trainer,
                  "global_step": loaded.meta.global_step, "decoder": f"nnU-Net initialisation, seed {seed}"}
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(output) as tmp:
        torch.save({"network_weights": weights, "mass_nn_export": provenance}, tmp)
    return ExportSummary(output, encoder_tensors=len(encoder),
                         decoder_tensors=sum(k.startswith("decoder.") and not k.startswith("decoder.encoder.")
                                             for k in weights), input_channels=in_channels)


def nnunet_resenc_unet(architecture: ResEncArchitecture, in_channels: int, seed: int = 0) -> ResidualEncoderUNet:
    """nnU-Net's network for these plans, initialised as nnU-Net does (the segmentation layers, which depend on the
    target's labels, get one output and are never exported)."""
    torch.manual_seed(seed)
    network = ResidualEncoderUNet(**resenc_kwargs(architecture, in_channels), num_classes=1,
                                  n_conv_per_stage_decoder=list(architecture.n_conv_per_stage_decoder),
                                  deep_supervision=False)
    network.apply(network.initialize)
    return network


def architecture_mismatches(ours: ResEncArchitecture, target: ResEncArchitecture) -> list[str]:
    """Every difference that changes an encoder weight's shape or meaning, as 'field: checkpoint X, plans Y'."""
    if ours.n_stages != target.n_stages:
        return [f"stage count: checkpoint {ours.n_stages}, plans {target.n_stages}"]
    out = []
    for field, title in (("features_per_stage", "stage widths"), ("kernel_sizes", "kernel sizes"),
                         ("strides", "strides"), ("n_blocks_per_stage", "residual blocks per stage"),
                         ("conv_bias", "conv bias"), ("norm_affine", "affine norm")):
        mine, theirs = getattr(ours, field), getattr(target, field)
        if mine != theirs:
            out.append(f"{title}: checkpoint {mine}, plans {theirs}")
    return out


def _encoder_config(network_config) -> dict:
    """The encoder's part of a checkpoint's network configuration: the in-context network's own configuration, or
    the `encoder` field of a network that wraps that encoder (SimCLR's ContrastiveEncoder)."""
    if not isinstance(network_config, dict):
        return {}
    nested = network_config.get("encoder")
    return nested if isinstance(nested, dict) and "resenc" in nested else network_config


def _checkpoint_architecture(encoder_config: dict, checkpoint: str | Path) -> ResEncArchitecture:
    if not encoder_config.get("resenc"):
        raise MassError(f"{checkpoint}: its encoder is not nnU-Net's ResEnc (our ResUNet or another network); "
                        f"pretrain with `mass_train PRETRAIN ... -s nnunet_plans=<nnUNetResEncUNetMPlans.json>` "
                        f"(MASSPretrainer, MASSCPUPretrainer or SimCLRPretrainer) to get weights nnU-Net can load")
    return ResEncArchitecture.from_dict(encoder_config["resenc"])


def _nnunet_input_channels(plans: Path, fallback: int) -> int:
    """Input channels of nnU-Net's network: the channel_names of the dataset.json beside the plans file (where
    nnUNetv2_plan_experiment puts it); the checkpoint's own count when there is none."""
    dataset_json = plans.parent / "dataset.json"
    if not dataset_json.is_file():
        return fallback
    return len(read_json(dataset_json).get("channel_names") or {}) or fallback
