"""Hi-End-MAE: the ViT pieces, the masked autoencoder's invariants (no leakage, loss locality, norm-pix targets),
learning on one volume, weight transfer into UNETRSegmenter and ViTClassifier, and the trainer end to end on the
phantom (resume, FINETUNE segmentation, ClassificationProbe)."""
from __future__ import annotations

import dataclasses
import json
import math
import os
import shutil
import signal
from types import SimpleNamespace

import pytest
import torch

from dataset_conversion.phantom_case_labels import write_phantom_case_labels
from mass_nn.cli.train import main as train_main
from mass_nn.errors import MassError
from mass_nn.model.checkpoint import Checkpoint, CheckpointMeta, encoder_state_dict, load_checkpoint
from mass_nn.model.pretrained_networks import unetr_from_pretrained, vit_classifier_from_pretrained
from mass_nn.networks.baselines.hi_end_mae import HiEndMAE, HiEndMAEConfig
from mass_nn.networks.baselines.vit import (ViTConfig, ViTEncoder, default_hierarchy, patchify,
                                            sincos_position_embedding, unpatchify)
from mass_nn.networks.build import build_network
from mass_nn.paths import MassPaths
from mass_nn.training.options import TrainingOptions
from mass_nn.training.pretrain.hi_end_mae_pretrainer import (HiEndMAEPretrainer, HiEndMAESettings, hi_end_mae_loss,
                                                             mask_noise, masked_patch_loss, network_config,
                                                             norm_pix_target)
from mass_nn.training.run_training import run_training
from tests.conftest import single_folder

PHANTOM = "Dataset990_PhantomCT"
RUN = "HiEndMAEPretrainer__MassPlans__3d_cpu"


def tiny_config(**changes) -> HiEndMAEConfig:
    """The reference's tiny CPU configuration: 32³, patch 8 (64 tokens, 16 visible), dim 48 / depth 4 / 3 heads,
    layers (3, 2, 1), decoder 24 / 3 heads with 1 self-attention block."""
    encoder = ViTConfig(in_channels=1, input_size_zyx=[32, 32, 32], patch_size=8, dim=48, depth=4, heads=3)
    values = dict(encoder=encoder, hier_layers=[3, 2, 1], decoder_dim=24, decoder_heads=3, decoder_self_depth=1,
                  downstream_feature_size=8)
    values.update(changes)
    return HiEndMAEConfig(**values)


def smooth_volume(seed: int, size: int = 32) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    coarse = torch.randn(1, 1, 4, 4, 4, generator=generator)
    return torch.nn.functional.interpolate(coarse, size=(size,) * 3, mode="trilinear", align_corners=True)


# ----------------------------------------------------------------- ViT pieces
def test_patchify_round_trip_and_sincos_embedding():
    volume = torch.randn(2, 2, 16, 24, 8)
    patches = patchify(volume, 8)
    assert patches.shape == (2, 2 * 3 * 1, 8 ** 3 * 2)
    torch.testing.assert_close(patches[0, 1].reshape(8, 8, 8, 2)[..., 1], volume[0, 1, :8, 8:16, :8])
    torch.testing.assert_close(unpatchify(patches, (2, 3, 1), 8, 2), volume)
    embedding = sincos_position_embedding((2, 3, 4), 12)
    assert embedding.shape == (24, 12) and len({tuple(row.tolist()) for row in embedding}) == 24
    torch.testing.assert_close(embedding[:, 1::2].abs().max(), torch.tensor(1.0))
    assert default_hierarchy(12) == [9, 6, 3] and default_hierarchy(4) == [3, 2, 1]
    with pytest.raises(ValueError, match="divisible by 6"):
        ViTConfig(in_channels=1, input_size_zyx=[32] * 3, patch_size=8, dim=32, depth=2, heads=2).validate()
    with pytest.raises(MassError, match="multiples of 8"):
        patchify(torch.zeros(1, 1, 20, 16, 16), 8)


def test_paper_configuration_is_the_released_vit_large():
    config = HiEndMAEConfig.paper()
    assert (config.encoder.dim, config.encoder.depth, config.encoder.heads, config.encoder.patch_size) == (
        1536, 12, 16, 12)
    assert config.encoder.grid() == (8, 8, 8) and config.num_visible(512) == 128
    assert (config.hier_layers, config.decoder_dim, config.decoder_heads, config.decoder_self_depth) == (
        [9, 6, 3], 528, 16, 2)
    with torch.device("meta"):
        encoder = ViTEncoder(config.encoder)
    assert 340e6 < sum(p.numel() for p in encoder.parameters()) < 345e6  # the released ~1.37 GB checkpoint


def test_network_size_and_patch_follow_the_plans_configuration():
    settings = HiEndMAESettings()
    cpu = network_config(SimpleNamespace(name="3d_cpu", baseline_size="cpu", patch_size_zyx=[64, 48, 48]), 1, settings)
    assert (cpu.encoder.dim, cpu.encoder.patch_size, cpu.encoder.input_size_zyx) == (96, 8, [64, 48, 48])
    paper_plan = SimpleNamespace(name="3d_paper", baseline_size="paper", patch_size_zyx=[128, 128, 128])
    paper = network_config(paper_plan, 1, settings)
    assert (paper.encoder.dim, paper.encoder.patch_size, paper.encoder.grid()) == (1536, 16, (8, 8, 8))
    paper_96 = network_config(SimpleNamespace(name="3d_cpu", baseline_size="cpu", patch_size_zyx=[96, 96, 96]), 1,
                              dataclasses.replace(settings, network="paper"))
    assert paper_96.encoder.patch_size == 12 and paper_96 == HiEndMAEConfig.paper()
    with pytest.raises(MassError, match="-s patch_size"):
        network_config(SimpleNamespace(name="3d_cpu", baseline_size="cpu", patch_size_zyx=[64, 48, 48]), 1,
                       dataclasses.replace(settings, patch_size=7))
    with pytest.raises(MassError, match="mask_ratio"):
        network_config(SimpleNamespace(name="3d_cpu", baseline_size="cpu", patch_size_zyx=[64, 48, 48]), 1,
                       dataclasses.replace(settings, mask_ratio=1.0))


# ----------------------------------------------------------------- the masked autoencoder
def test_decoder_output_shape_visible_count_and_config_round_trip():
    network = HiEndMAE(tiny_config())
    prediction, visible = network(torch.randn(2, 1, 32, 32, 32), torch.rand(2, 64))
    assert prediction.shape == (2, 1 + 64, 8 ** 3)
    assert visible.sum(1).tolist() == [16.0, 16.0]
    rebuilt = build_network("HiEndMAE", network.config.to_dict())
    assert rebuilt.config == network.config


def test_masked_patches_do_not_leak_into_the_encoder_or_the_prediction():
    network = HiEndMAE(tiny_config()).eval()
    volume, noise = torch.randn(1, 1, 32, 32, 32), torch.rand(1, 64)
    keep = network.visible_tokens(noise)
    masked = torch.ones(64, dtype=torch.bool)
    masked[keep[0]] = False
    patches = patchify(volume, 8)
    patches[0, masked] += 10 * torch.randn(int(masked.sum()), 8 ** 3)
    perturbed = unpatchify(patches, (4, 4, 4), 8, 1)
    assert not torch.equal(perturbed, volume)
    with torch.no_grad():
        final_a, hidden_a = network.encoder(volume, keep)
        final_b, hidden_b = network.encoder(perturbed, keep)
        prediction_a, _ = network(volume, noise)
        prediction_b, _ = network(perturbed, noise)
    assert torch.equal(final_a, final_b) and all(torch.equal(a, b) for a, b in zip(hidden_a, hidden_b))
    assert torch.equal(prediction_a, prediction_b)


def test_loss_ignores_visible_patches_and_padding():
    prediction, target = torch.randn(2, 6, 10), torch.randn(2, 6, 10)
    visible = torch.tensor([[1, 0, 1, 0, 0, 1], [0, 1, 1, 1, 0, 0]], dtype=torch.float32)
    valid = torch.ones(2, 6, 10)
    valid[0, 1, 5:] = 0
    loss = masked_patch_loss(prediction, target, visible, valid)
    changed = prediction.clone()
    changed[visible.bool()] += 5.0
    changed[0, 1, 5:] += 5.0  # padding voxels of a masked patch
    torch.testing.assert_close(masked_patch_loss(changed, target, visible, valid), loss)
    changed[0, 1, 0] += 1.0  # a valid voxel of a masked patch
    assert not torch.isclose(masked_patch_loss(changed, target, visible, valid), loss)


def test_norm_pix_target_has_zero_mean_and_unit_variance_per_patch():
    patches = 3.0 + 2.0 * torch.randn(4, 16, 512)
    target = norm_pix_target(patches, torch.ones_like(patches))
    torch.testing.assert_close(target.mean(-1), torch.zeros(4, 16), atol=1e-5, rtol=0)
    torch.testing.assert_close(target.var(-1, unbiased=False), torch.ones(4, 16), atol=1e-4, rtol=0)
    valid = torch.ones_like(patches)
    valid[..., 256:] = 0  # statistics of the valid half only
    target = norm_pix_target(patches, valid)[..., :256]
    torch.testing.assert_close(target.mean(-1), torch.zeros(4, 16), atol=1e-5, rtol=0)
    torch.testing.assert_close(target.var(-1, unbiased=False), torch.ones(4, 16), atol=1e-4, rtol=0)


def test_masks_are_a_function_of_seed_and_batch_index():
    a = mask_noise(0, 5, (2, 64), torch.device("cpu"))
    assert torch.equal(a, mask_noise(0, 5, (2, 64), torch.device("cpu")))
    assert not torch.equal(a, mask_noise(0, 6, (2, 64), torch.device("cpu")))
    assert not torch.equal(a, mask_noise(1, 5, (2, 64), torch.device("cpu")))
    assert not torch.equal(a[0], a[1])  # every sample of a batch gets its own mask


def textured_volume(size: int = 32) -> torch.Tensor:
    """A texture of period 8 (one patch) whose phase drifts along z, on a smooth random background."""
    z, y, x = (torch.arange(size, dtype=torch.float32).reshape(shape) for shape in
               ((-1, 1, 1), (1, -1, 1), (1, 1, -1)))
    texture = torch.sin(2 * math.pi * z / 8) * torch.cos(2 * math.pi * y / 8) + 0.5 * torch.sin(
        2 * math.pi * x / 8 + z / 4)
    return texture[None, None] + smooth_volume(seed=1, size=size)


def test_thirty_steps_on_one_volume_lower_the_loss():
    torch.manual_seed(0)
    network = HiEndMAE(tiny_config())
    optimizer = torch.optim.AdamW(network.parameters(), lr=1e-3, betas=(0.9, 0.95), weight_decay=0.05)
    volume = textured_volume()
    valid = torch.ones_like(volume)
    losses = []
    for step in range(30):  # a new random mask at every step
        loss, _ = hi_end_mae_loss(network, volume, valid, mask_noise(0, step, (1, 64), volume.device), 8)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
    first, last = sum(losses[:3]) / 3, sum(losses[-3:]) / 3
    assert last < 0.7 * first, losses


# ----------------------------------------------------------------- transfer
def _checkpoint_of(network: HiEndMAE) -> Checkpoint:
    meta = CheckpointMeta(trainer="HiEndMAEPretrainer", network_class="HiEndMAE",
                          network_config=network.config.to_dict(), plans={}, configuration="3d_cpu",
                          encoder_key_prefix=HiEndMAE.encoder_key_prefix, epoch=1, global_step=1)
    return Checkpoint(meta=meta, model=network.state_dict())


def test_vit_keys_load_into_unetr_and_classifier():
    pretrained = HiEndMAE(tiny_config())
    checkpoint = _checkpoint_of(pretrained)
    vit_keys = set(encoder_state_dict(checkpoint))
    assert vit_keys == set(pretrained.encoder.state_dict())
    unetr, report = unetr_from_pretrained(checkpoint, ["liver", "lesion"], [1, 2], "ckpt.pt")
    assert set(report.loaded) == {f"vit.{k}" for k in vit_keys} and not report.unexpected
    assert report.missing and not any(k.startswith("vit.") for k in report.missing)
    assert unetr.vit.config.learned_pos_embed and unetr.config.skip_layers == [3, 2, 1]
    torch.testing.assert_close(unetr.vit.pos_embed.detach(), pretrained.encoder.pos_embed)
    assert unetr(torch.randn(1, 1, 32, 32, 32)).shape == (1, 2, 32, 32, 32)
    classifier, report = vit_classifier_from_pretrained(checkpoint, 3, [32, 48, 32], 0.1, "c.pt")
    assert len(report.loaded) == len(vit_keys) and not report.unexpected
    assert report.missing and all(k.startswith("head.") for k in report.missing)
    assert classifier.deepest_features(torch.randn(2, 1, 32, 48, 32)).shape == (2, 48, 4, 6, 4)
    assert classifier(torch.randn(2, 1, 32, 48, 32)).shape == (2, 3)
    with pytest.raises(MassError, match="c.pt.*multiples of 8"):
        vit_classifier_from_pretrained(checkpoint, 3, [36, 32, 32], 0.1, "c.pt")
    checkpoint.model["encoder.blocks.9.norm1.weight"] = torch.ones(48)
    with pytest.raises(MassError, match="unexpected"):
        unetr_from_pretrained(checkpoint, ["liver"], [1], "ckpt.pt")


@pytest.mark.parametrize("patch, size", [(12, 48), (16, 32)])
def test_unetr_reaches_full_resolution_for_other_patch_sizes(patch, size):
    config = tiny_config(encoder=ViTConfig(in_channels=1, input_size_zyx=[size] * 3, patch_size=patch, dim=12,
                                           depth=4, heads=2), decoder_dim=12, decoder_heads=2)
    unetr, _ = unetr_from_pretrained(_checkpoint_of(HiEndMAE(config)), ["a"], [1], "x.pt")
    assert unetr(torch.randn(1, 1, size, size, size)).shape == (1, 1, size, size, size)


# ----------------------------------------------------------------- the trainer on the phantom
def _options(**changes) -> TrainingOptions:
    values = dict(mode="PRETRAIN", datasets=["990"], trainer="HiEndMAEPretrainer", configuration="3d_cpu", epochs=1,
                  iters_per_epoch=2, batch_size=1, num_workers=0, device="cpu", val_batches=1)
    values.update(changes)
    return TrainingOptions(**values)


@pytest.fixture(scope="module")
def pretrained(phantom_with_masks, tmp_path_factory):
    """(paths with a fresh results root and a raw copy holding labels.csv, checkpoint of a 2-step run)."""
    root = tmp_path_factory.mktemp("hi_end_mae")
    paths = MassPaths(raw=root / "raw", preprocessed=phantom_with_masks.preprocessed, results=root / "results")
    shutil.copytree(phantom_with_masks.raw / PHANTOM, paths.raw / PHANTOM)
    write_phantom_case_labels(paths.raw / PHANTOM, ["large_liver"])
    summary = run_training(_options(), paths)
    return paths, summary["output_folder"] + "/checkpoint_final.pt"


def test_pretraining_run_records_the_network_and_settings(pretrained):
    paths, checkpoint_file = pretrained
    checkpoint = load_checkpoint(checkpoint_file)
    assert checkpoint.meta.network_class == "HiEndMAE" and checkpoint.meta.encoder_key_prefix == "encoder."
    config = HiEndMAEConfig.from_dict(checkpoint.meta.network_config)
    patch = checkpoint.meta.plans["configurations"]["3d_cpu"]["patch_size_zyx"]
    assert config.encoder.input_size_zyx == patch and config.encoder.patch_size == 8
    assert (config.encoder.dim, config.encoder.depth, config.hier_layers) == (96, 4, [3, 2, 1])
    run_config = json.loads((paths.results / PHANTOM / RUN / "run_config.json").read_text())
    assert run_config["lr"] == 1e-4 and run_config["extra"]["mask_ratio"] == 0.75
    groups = checkpoint.optimizer["param_groups"]
    assert [g["weight_decay"] for g in groups] == [0.05, 0.0] and list(groups[0]["betas"]) == [0.9, 0.95]
    records = [json.loads(line) for line in (paths.results / PHANTOM / RUN / "metrics.jsonl").read_text().splitlines()]
    assert "train_reconstruction_loss" in records[0] and "val_loss" in records[0]
    with pytest.raises(MassError, match="network='big'"):
        run_training(_options(tag="bad", extra={"network": "big"}), paths)


def test_continue_after_a_stop_equals_an_uninterrupted_run(pretrained, monkeypatch):
    paths, _ = pretrained
    straight = run_training(_options(tag="straight", iters_per_epoch=3), paths)
    original = HiEndMAEPretrainer.compute_loss

    def stop_in_the_second_step(self, batch):
        if self.global_step == 1:
            os.kill(os.getpid(), signal.SIGTERM)
        return original(self, batch)
    monkeypatch.setattr(HiEndMAEPretrainer, "compute_loss", stop_in_the_second_step)
    stopped = run_training(_options(tag="resumed", iters_per_epoch=3), paths)
    assert stopped["stopped_early"] and stopped["global_step"] == 2
    monkeypatch.undo()
    resumed = run_training(_options(tag="resumed", iters_per_epoch=3, continue_training=True), paths)
    assert resumed["global_step"] == 3 and not resumed["stopped_early"]
    a = load_checkpoint(straight["output_folder"] + "/checkpoint_final.pt")
    b = load_checkpoint(resumed["output_folder"] + "/checkpoint_final.pt")
    for key in a.model:
        torch.testing.assert_close(a.model[key], b.model[key], rtol=0, atol=1e-6, msg=key)
    for key in a.ema["module"]:
        torch.testing.assert_close(a.ema["module"][key], b.ema["module"][key], rtol=0, atol=1e-6, msg=key)


def _finetune(paths, checkpoint: str, *args) -> int:
    return train_main(["FINETUNE", "-d", "990", "-c", "3d_cpu", "--pretrained", checkpoint, "--epochs", "1",
                       "--iters-per-epoch", "2", "--batch-size", "1", "--num-workers", "0", "--device", "cpu",
                       "--raw", str(paths.raw), "--preprocessed", str(paths.preprocessed), "--results",
                       str(paths.results), *args])


def test_finetune_segmentation_from_the_checkpoint(pretrained):
    paths, checkpoint = pretrained
    assert _finetune(paths, checkpoint, "-shots", "1") == 0
    folder = single_folder(paths.results / PHANTOM,
                           "SegmentationFinetuner__MassPlans__3d_cpu__pretrained-*_1shot_seed0")
    weights = json.loads((folder / "shots.json").read_text())["weights"]
    vit_keys = len(encoder_state_dict(load_checkpoint(checkpoint)))
    assert weights["loaded"] == vit_keys and weights["unexpected"] == [] and weights["mismatched"] == []
    assert weights["missing"] and not any(k.startswith("vit.") for k in weights["missing"])
    summary = json.loads((folder / "test" / "summary.json").read_text())
    assert summary["per_case"]  # the test split was predicted through the sliding-window predictor
    assert load_checkpoint(folder / "checkpoint_final.pt").meta.network_class == "UNETRSegmenter"


def test_classification_probe_from_the_checkpoint(pretrained):
    paths, checkpoint = pretrained
    assert _finetune(paths, checkpoint, "-tr", "ClassificationProbe") == 0
    folder = single_folder(paths.results / PHANTOM, "ClassificationProbe__MassPlans__3d_cpu__pretrained-*_frac1_seed0")
    initialisation = json.loads((folder / "encoder_initialisation.json").read_text())
    vit = encoder_state_dict(load_checkpoint(checkpoint))
    assert initialisation["loaded"] == len(vit) and not initialisation["unexpected"]
    assert initialisation["missing"] and all(k.startswith("head.") for k in initialisation["missing"])
    final = load_checkpoint(folder / "checkpoint_final.pt")
    assert final.meta.network_class == "ViTClassifier"
    for key, value in vit.items():  # the frozen encoder did not move
        assert torch.equal(final.model[f"vit.{key}"], value), key
    assert (folder / "test_summary.json").is_file()
