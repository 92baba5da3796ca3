"""MASS with nnU-Net's ResEnc encoder, and the export that nnU-Net v2 itself loads (-pretrained_weights).

The plans files here are written in nnU-Net v2's format (what nnUNetv2_plan_experiment -pl nnUNetPlannerResEncM
writes, scaled down to a CPU-size network); nnU-Net's own code (nnunetv2, the optional `nnunet` extra that CI
installs) builds its network from them and loads the export.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import torch

from mass_nn.cli.export_nnunet import main as export_main
from mass_nn.cli.train import main as train_main
from mass_nn.errors import MassError
from mass_nn.export.nnunet_export import export_to_nnunet
from mass_nn.model.checkpoint import load_checkpoint, model_state_dict
from mass_nn.model.downstream_network import in_context_weights
from mass_nn.networks.in_context.config import InContextNetworkConfig
from mass_nn.networks.in_context.in_context_model import InContextSegmenter
from mass_nn.networks.in_context.resenc_architecture import read_nnunet_plans

nnunet_plans_handler = pytest.importorskip("nnunetv2.utilities.plans_handling.plans_handler",
                                           reason="nnunetv2 (the `nnunet` extra) is not installed")
from nnunetv2.run.load_pretrained_weights import load_pretrained_weights  # noqa: E402
from nnunetv2.utilities.get_network_from_plans import get_network_from_plans  # noqa: E402

RUN = "MASSPretrainer__MassPlans__3d_cpu__resenc"


def write_nnunet_plans(folder: Path, widths=(8, 32, 64, 128), channels: int = 1, name: str = "Dataset990_Phantom",
                       network_class: str = "dynamic_network_architectures.architectures.unet.ResidualEncoderUNet"
                       ) -> Path:
    """An nnU-Net v2 ResEnc plans file (+ the dataset.json nnU-Net keeps beside it) for a 4-stage network."""
    folder.mkdir(parents=True, exist_ok=True)
    stages = len(widths)
    arch_kwargs = {"n_stages": stages, "features_per_stage": list(widths),
                   "conv_op": "torch.nn.modules.conv.Conv3d",
                   "kernel_sizes": [[1, 3, 3]] + [[3, 3, 3]] * (stages - 1),
                   "strides": [[1, 1, 1]] + [[2, 2, 2]] * (stages - 1),
                   "n_blocks_per_stage": [1, 2, 2, 2][:stages] + [2] * max(0, stages - 4),
                   "n_conv_per_stage_decoder": [1] * (stages - 1), "conv_bias": True,
                   "norm_op": "torch.nn.modules.instancenorm.InstanceNorm3d",
                   "norm_op_kwargs": {"eps": 1e-05, "affine": True}, "dropout_op": None, "dropout_op_kwargs": None,
                   "nonlin": "torch.nn.LeakyReLU", "nonlin_kwargs": {"inplace": True}}
    configuration = {"data_identifier": "nnUNetResEncUNetMPlans_3d_fullres", "preprocessor_name": "DefaultPreprocessor",
                     "batch_size": 2, "patch_size": [32, 48, 48], "median_image_size_in_voxels": [40, 60, 60],
                     "spacing": [3.0, 3.0, 3.0], "normalization_schemes": ["CTNormalization"] * channels,
                     "use_mask_for_norm": [False] * channels,
                     "resampling_fn_data": "resample_data_or_seg_to_shape",
                     "resampling_fn_seg": "resample_data_or_seg_to_shape",
                     "resampling_fn_data_kwargs": {"is_seg": False, "order": 3, "order_z": 0,
                                                   "force_separate_z": None},
                     "resampling_fn_seg_kwargs": {"is_seg": True, "order": 1, "order_z": 0, "force_separate_z": None},
                     "resampling_fn_probabilities": "resample_data_or_seg_to_shape",
                     "resampling_fn_probabilities_kwargs": {"is_seg": False, "order": 1, "order_z": 0,
                                                            "force_separate_z": None},
                     "architecture": {"network_class_name": network_class, "arch_kwargs": arch_kwargs,
                                      "_kw_requires_import": ["conv_op", "norm_op", "dropout_op", "nonlin"]},
                     "batch_dice": False}
    plans = {"dataset_name": name, "plans_name": "nnUNetResEncUNetMPlans",
             "original_median_spacing_after_transp": [3.0, 3.0, 3.0],
             "original_median_shape_after_transp": [40, 60, 60], "image_reader_writer": "SimpleITKIO",
             "transpose_forward": [0, 1, 2], "transpose_backward": [0, 1, 2],
             "configurations": {"3d_fullres": configuration}, "experiment_planner_used": "nnUNetPlannerResEncM",
             "label_manager": "LabelManager", "foreground_intensity_properties_per_channel": {}}
    path = folder / "nnUNetResEncUNetMPlans.json"
    path.write_text(json.dumps(plans, indent=2))
    (folder / "dataset.json").write_text(json.dumps({
        "channel_names": {str(i): "CT" for i in range(channels)}, "labels": {"background": 0, "organ": 1},
        "numTraining": 6, "file_ending": ".nii.gz"}))
    return path


def nnunet_network(plans_path: Path, input_channels: int, output_channels: int = 2):
    """nnU-Net's network for these plans, built the way nnUNetTrainer.build_network_architecture builds it."""
    plans = nnunet_plans_handler.PlansManager(str(plans_path))
    configuration = plans.get_configuration("3d_fullres")
    return get_network_from_plans(configuration.network_arch_class_name, configuration.network_arch_init_kwargs,
                                  configuration.network_arch_init_kwargs_req_import, input_channels, output_channels,
                                  allow_init=True, deep_supervision=True)


@pytest.fixture(scope="module")
def resenc_checkpoint(phantom_with_masks, tmp_path_factory) -> tuple[Path, Path]:
    """(checkpoint, plans file): two MASS steps on the phantom with the ResEnc of a 4-stage nnU-Net plans file."""
    root = tmp_path_factory.mktemp("resenc")
    plans_path = write_nnunet_plans(root / "nnunet")
    code = train_main(["PRETRAIN", "-d", "990", "-c", "3d_cpu", "--epochs", "1", "--iters-per-epoch", "2",
                       "--tag", "resenc", "-s", f"nnunet_plans={plans_path}", "--raw", str(phantom_with_masks.raw),
                       "--preprocessed", str(phantom_with_masks.preprocessed), "--results", str(root / "results")])
    assert code == 0
    return root / "results" / "Dataset990_PhantomCT" / RUN / "checkpoint_final.pt", plans_path


def test_resenc_encoder_is_nnunets_encoder_key_for_key(tmp_path):
    plans_path = write_nnunet_plans(tmp_path / "nnunet")
    architecture, _ = read_nnunet_plans(plans_path)
    config = InContextNetworkConfig(in_channels=1, channels=architecture.features_per_stage,
                                    num_blocks=architecture.n_conv_per_stage_decoder, input_size_zyx=[16, 48, 48],
                                    num_prior_stages=2, num_queries=4, head_dim=16, resenc=architecture)
    ours = InContextSegmenter(config)
    theirs = nnunet_network(plans_path, input_channels=1)
    our_encoder = {k: v.shape for k, v in ours.state_dict().items() if k.startswith("encoder.")}
    their_encoder = {k: v.shape for k, v in theirs.state_dict().items() if k.startswith("encoder.")}
    assert our_encoder == their_encoder and len(our_encoder) > 20
    query = torch.randn(2, 1, 16, 48, 48)
    masks = (torch.rand(2, 3, 16, 48, 48) > 0.7).float()
    logits = ours(query, query, masks)
    assert logits.shape == (2, 3, 16, 48, 48)
    logits.float().mean().backward()
    assert ours.encoder.stem.convs[0].conv.weight.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="multiples of \\[8, 8, 8\\]"):
        ours(torch.randn(1, 1, 16, 44, 48), query[:1], masks[:1])


def test_pretrain_export_and_nnunet_loads_it(resenc_checkpoint, tmp_path, capsys):
    checkpoint, plans_path = resenc_checkpoint
    meta = load_checkpoint(checkpoint).meta
    assert meta.network_config["resenc"]["features_per_stage"] == [8, 32, 64, 128]
    output = tmp_path / "export" / "mass_resenc.pth"
    assert export_main(["--checkpoint", str(checkpoint), "--nnunet-plans", str(plans_path), "-o", str(output)]) == 0
    assert "encoder tensors" in capsys.readouterr().out
    network = nnunet_network(plans_path, input_channels=1, output_channels=3)
    load_pretrained_weights(network, str(output))
    ours = model_state_dict(load_checkpoint(checkpoint))
    loaded = network.state_dict()
    encoder_keys = [k for k in loaded if k.startswith("encoder.")]
    assert encoder_keys and all(torch.equal(loaded[k], ours[k]) for k in encoder_keys)
    exported = torch.load(output, weights_only=True)["network_weights"]
    assert not any(".seg_layers." in k for k in exported)
    assert any(k.startswith("decoder.stages.") for k in exported)


def test_export_names_every_mismatch(resenc_checkpoint, tmp_path, capsys):
    checkpoint, _ = resenc_checkpoint
    wider = write_nnunet_plans(tmp_path / "wider", widths=(8, 32, 64, 96), channels=2)
    with pytest.raises(MassError, match="input channels: checkpoint 1, nnU-Net dataset.json 2.*stage widths: "
                                        "checkpoint \\[8, 32, 64, 128\\], plans \\[8, 32, 64, 96\\]"):
        export_to_nnunet(checkpoint, wider, "3d_fullres", tmp_path / "never.pth")
    deeper = write_nnunet_plans(tmp_path / "deeper", widths=(8, 32, 64, 128, 128))
    code = export_main(["--checkpoint", str(checkpoint), "--nnunet-plans", str(deeper), "-o",
                        str(tmp_path / "never.pth")])
    err = capsys.readouterr().err
    assert code == 1 and "stage count: checkpoint 4, plans 5" in err and "Traceback" not in err
    assert not (tmp_path / "never.pth").exists()


def test_resunet_checkpoints_and_foreign_plans_are_refused(pretraining_roots, tmp_path, capsys):
    code = train_main(["PRETRAIN", "-d", "990", "-c", "3d_cpu", "--epochs", "1", "--iters-per-epoch", "1",
                       "--raw", str(pretraining_roots.raw), "--preprocessed", str(pretraining_roots.preprocessed),
                       "--results", str(pretraining_roots.results)])
    assert code == 0
    checkpoint = pretraining_roots.results / "Dataset990_PhantomCT" / "MASSPretrainer__MassPlans__3d_cpu" / \
        "checkpoint_final.pt"
    plans_path = write_nnunet_plans(tmp_path / "nnunet")
    with pytest.raises(MassError, match="not nnU-Net's ResEnc.*-s nnunet_plans="):
        export_to_nnunet(checkpoint, plans_path, "3d_fullres", tmp_path / "never.pth")
    plain_unet = write_nnunet_plans(tmp_path / "plain",
                                    network_class="dynamic_network_architectures.architectures.unet.PlainConvUNet")
    with pytest.raises(MassError, match="not nnU-Net's ResidualEncoderUNet; plan with -pl nnUNetPlannerResEncM"):
        read_nnunet_plans(plain_unet)
    with pytest.raises(MassError, match="no configuration '2d'"):
        read_nnunet_plans(plans_path, "2d")
    capsys.readouterr()
    code = train_main(["PRETRAIN", "-d", "990", "-c", "3d_cpu", "--epochs", "1", "--iters-per-epoch", "1",
                       "--tag", "deep", "-s", f"nnunet_plans={write_nnunet_plans(tmp_path / 'deep', (32,) * 7)}",
                       "--raw", str(pretraining_roots.raw), "--preprocessed", str(pretraining_roots.preprocessed),
                       "--results", str(pretraining_roots.results)])
    err = capsys.readouterr().err
    assert code == 1 and "multiples of [64, 64, 64]" in err and "Traceback" not in err


def test_resenc_checkpoint_finetunes_and_predicts_in_mass_nn(resenc_checkpoint, phantom_with_masks, tmp_path):
    checkpoint, _ = resenc_checkpoint
    results = tmp_path / "results"
    code = train_main(["FINETUNE", "-d", "990", "-c", "3d_cpu", "--epochs", "1", "--iters-per-epoch", "1",
                       "--batch-size", "1", "-shots", "1", "--pretrained", str(checkpoint),
                       "--raw", str(phantom_with_masks.raw), "--preprocessed", str(phantom_with_masks.preprocessed),
                       "--results", str(results)])
    assert code == 0
    finetuned = load_checkpoint(next(results.rglob("checkpoint_final.pt")))
    assert finetuned.meta.network_config["network"]["resenc"]["features_per_stage"] == [8, 32, 64, 128]
    shapes = lambda state: {k: v.shape for k, v in state.items() if k.startswith("encoder.")}  # noqa: E731
    finetuned_encoder = shapes(in_context_weights(finetuned))
    assert finetuned_encoder == shapes(model_state_dict(load_checkpoint(checkpoint)))
    assert "encoder.stages.3.blocks.1.conv2.conv.weight" in finetuned_encoder


@pytest.mark.slow  # about 18 s on 2 cores: keeps the default run under 10 minutes
def test_simclr_trains_the_resenc_and_nnunet_loads_its_export(phantom_with_masks, tmp_path, capsys):
    """SimCLR on the same ResEnc: its checkpoint exports like MASS's and finetunes in mass_nn."""
    plans_path = write_nnunet_plans(tmp_path / "nnunet")
    roots = ["--raw", str(phantom_with_masks.raw), "--preprocessed", str(phantom_with_masks.preprocessed),
             "--results", str(tmp_path / "results")]
    code = train_main(["PRETRAIN", "-d", "990", "-c", "3d_cpu", "-tr", "SimCLRPretrainer", "--epochs", "1",
                       "--iters-per-epoch", "2", "--batch-size", "2", "-s", f"nnunet_plans={plans_path}", *roots])
    assert code == 0
    checkpoint = tmp_path / "results" / "Dataset990_PhantomCT" / "SimCLRPretrainer__MassPlans__3d_cpu" / \
        "checkpoint_final.pt"
    assert load_checkpoint(checkpoint).meta.network_config["encoder"]["resenc"]["features_per_stage"] == \
        [8, 32, 64, 128]
    output = tmp_path / "simclr_resenc.pth"
    assert export_main(["--checkpoint", str(checkpoint), "--nnunet-plans", str(plans_path), "-o", str(output)]) == 0
    network = nnunet_network(plans_path, input_channels=1, output_channels=3)
    load_pretrained_weights(network, str(output))
    ours, loaded = model_state_dict(load_checkpoint(checkpoint)), network.state_dict()
    encoder_keys = [k for k in loaded if k.startswith("encoder.")]
    assert encoder_keys and all(torch.equal(loaded[k], ours[k]) for k in encoder_keys)
    assert not any(k.startswith("projector.") for k in torch.load(output, weights_only=True)["network_weights"])
    capsys.readouterr()
    code = train_main(["FINETUNE", "-d", "990", "-c", "3d_cpu", "--epochs", "1", "--iters-per-epoch", "1",
                       "--batch-size", "1", "-shots", "1", "--pretrained", str(checkpoint), "--tag", "simclr",
                       *roots])
    assert code == 0, capsys.readouterr().err
    finetuned = load_checkpoint(next((tmp_path / "results").rglob("*simclr/checkpoint_final.pt")))
    finetuned_encoder = {k: v for k, v in in_context_weights(finetuned).items() if k.startswith("encoder.")}
    assert finetuned_encoder.keys() == {k for k in ours if k.startswith("encoder.")}


def test_simclr_refuses_a_resenc_that_does_not_fit_the_patch(pretraining_roots, tmp_path, capsys):
    deep = write_nnunet_plans(tmp_path / "deep", (32,) * 7)
    code = train_main(["PRETRAIN", "-d", "990", "-c", "3d_cpu", "-tr", "SimCLRPretrainer", "--epochs", "1",
                       "--iters-per-epoch", "1", "--tag", "deep", "-s", f"nnunet_plans={deep}",
                       "--raw", str(pretraining_roots.raw), "--preprocessed", str(pretraining_roots.preprocessed),
                       "--results", str(pretraining_roots.results)])
    err = capsys.readouterr().err
    assert code == 1 and "no contrastive encoder on its ResEnc" in err and "Traceback" not in err


@pytest.mark.slow
def test_nnunet_trains_from_the_export_on_cpu(resenc_checkpoint, phantom_with_masks, tmp_path):
    """nnU-Net's own pipeline on the phantom: fingerprint, preprocessing with the ResEnc plans, then one epoch of
    nnUNetv2_train (250 iterations and validation, a few minutes on 2 cores) from the export."""
    checkpoint, _ = resenc_checkpoint
    env = {**os.environ, "nnUNet_raw": str(phantom_with_masks.raw),
           "nnUNet_preprocessed": str(tmp_path / "nnUNet_preprocessed"), "nnUNet_results": str(tmp_path / "nnres"),
           "nnUNet_n_proc_DA": "1"}
    subprocess.run(["nnUNetv2_extract_fingerprint", "-d", "990", "-np", "1"], env=env, check=True)
    target = tmp_path / "nnUNet_preprocessed" / "Dataset990_PhantomCT"
    fingerprint = json.loads((target / "dataset_fingerprint.json").read_text())
    plans_path = write_nnunet_plans(target, name="Dataset990_PhantomCT")
    shutil.copy(phantom_with_masks.raw / "Dataset990_PhantomCT" / "dataset.json", target / "dataset.json")
    plans = json.loads(plans_path.read_text())
    plans["foreground_intensity_properties_per_channel"] = fingerprint["foreground_intensity_properties_per_channel"]
    plans["configurations"]["3d_fullres"]["spacing"] = fingerprint["spacings"][0]
    plans_path.write_text(json.dumps(plans))
    subprocess.run(["nnUNetv2_preprocess", "-d", "990", "-plans_name", "nnUNetResEncUNetMPlans", "-c", "3d_fullres",
                    "-np", "1"], env=env, check=True)
    export = tmp_path / "mass_resenc.pth"
    assert export_main(["--checkpoint", str(checkpoint), "--nnunet-plans", str(plans_path), "-o", str(export)]) == 0
    run = subprocess.run(["nnUNetv2_train", "990", "3d_fullres", "0", "-p", "nnUNetResEncUNetMPlans", "-tr",
                          "nnUNetTrainer_1epoch", "-device", "cpu", "-pretrained_weights", str(export)],
                         env=env, capture_output=True, text=True)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    assert "Loading pretrained weights from file" in run.stdout
    assert next((tmp_path / "nnres").rglob("checkpoint_final.pth")).is_file()
