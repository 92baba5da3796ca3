"""MiM (Mask in Mask): nested masked volumes, masked convolutions without leakage, the masked-patch loss, a short
overfit, backbone transfer, and the trainer end to end on the phantom (resume, FINETUNE, ClassificationProbe)."""
from __future__ import annotations

import json
import os
import shutil
import signal

import pytest
import torch

from dataset_conversion.phantom_case_labels import write_phantom_case_labels
from mass_nn.cli.train import main as train_main
from mass_nn.errors import MassError
from mass_nn.model.checkpoint import encoder_state_dict, load_checkpoint
from mass_nn.model.pretrained_networks import mim_classifier_from_pretrained, mim_segmenter_from_pretrained
from mass_nn.networks.baselines.mim_backbone import MiMBackboneConfig, sincos_position_embedding
from mass_nn.networks.baselines.mim_network import MiMNetwork, MiMNetworkConfig, patchify
from mass_nn.paths import MassPaths
from mass_nn.training.options import TrainingOptions
from mass_nn.training.pretrain.mim_levels import MiMLevelSettings, build_levels, region_of_token, resize_volume
from mass_nn.training.pretrain.mim_pretrainer import MiMPretrainer, batch_generator, masked_patch_loss, mim_loss
from mass_nn.training.run_training import run_training
from tests.conftest import single_folder

PHANTOM = "Dataset990_PhantomCT"
INPUT = [32, 32, 32]
PATCH = 8


def tiny_network(seed: int = 0) -> MiMNetwork:
    torch.manual_seed(seed)
    return MiMNetwork(MiMNetworkConfig.cpu(INPUT))


def smooth_crops(batch: int, seed: int = 0) -> torch.Tensor:
    """Level-1 crops [batch, 1, 64, 64, 64] with structure at every scale."""
    generator = torch.Generator().manual_seed(seed)
    coarse = torch.randn(batch, 1, 8, 8, 8, generator=generator)
    return resize_volume(coarse, (64, 64, 64)) + 0.1 * torch.randn(batch, 1, 64, 64, 64, generator=generator)


def make_levels(batch: int = 2, seed: int = 0, valid=None):
    crops = smooth_crops(batch, seed)
    valid = torch.ones_like(crops) if valid is None else valid
    return crops, build_levels(crops, valid, INPUT, PATCH, MiMLevelSettings(), batch_generator(seed, 0))


# ----------------------------------------------------------------- levels
def test_level_counts_and_one_backbone_pass_per_volume():
    network = tiny_network()
    batch_sizes = []
    network.backbone.register_forward_hook(lambda module, args, output: batch_sizes.append(args[0].shape[0]))
    _, levels = make_levels(batch=2)
    outputs = network([level.network_input() for level in levels])
    assert [level.images.shape[0] for level in levels] == [2, 2 * 2, 2 * 2 * 2]  # B, B*K2, B*K2*K3
    assert batch_sizes == [2, 4, 8] and sum(batch_sizes) == 2 * (1 + 2 + 2 * 2)
    assert [tuple(o.prediction.shape) for o in outputs] == [(m, 64, PATCH ** 3) for m in (2, 4, 8)]
    assert outputs[0].regions.shape == (2, 8, 24) and outputs[1].regions.shape == (4, 64, 24)
    assert levels[0].visible.sum(1).tolist() == [3 * 8] * 2  # 3 of 8 regions of 8 tokens stay visible
    assert levels[1].visible.sum(1).tolist() == [int(64 * 0.4)] * 4


def test_regions_are_spatial_blocks_of_the_token_grid():
    regions = region_of_token((4, 6, 6), (2, 2, 2)).reshape(4, 6, 6)
    for z, y, x in [(0, 0, 0), (1, 2, 2), (2, 0, 5), (3, 5, 3)]:
        assert regions[z, y, x] == (z // 2) * 4 + (y // 3) * 2 + x // 3


def test_children_are_the_masked_regions_of_their_parents():
    crops, (level1, level2, level3) = make_levels(batch=2, seed=3)
    for i in range(level2.images.shape[0]):
        parent, region = int(level2.parent[i]), int(level2.parent_region[i])
        assert not level1.visible[parent, level1.region_of_token == region].any()  # the whole region was masked
        z, y, x = region // 4, (region // 2) % 2, region % 2
        native = crops[parent, :, 32 * z:32 * z + 32, 32 * y:32 * y + 32, 32 * x:32 * x + 32]
        assert torch.equal(level2.images[i], resize_volume(native[None], INPUT)[0])
        # the same place in the level-1 input (the crop at half resolution) is this volume at half resolution
        seen_by_parent = level1.images[parent, :, 16 * z:16 * z + 16, 16 * y:16 * y + 16, 16 * x:16 * x + 16]
        torch.testing.assert_close(seen_by_parent, resize_volume(level2.images[i][None], (16, 16, 16))[0])
    for j in range(level3.images.shape[0]):
        parent, token = int(level3.parent[j]), int(level3.parent_region[j])
        assert not level2.visible[parent, token]
        block = patchify(level2.native[parent][None], PATCH)[0, token]  # the parent's voxels of that token
        assert torch.equal(block, patchify(level3.native[j][None], PATCH)[0, 0])
        assert torch.equal(level3.images[j], resize_volume(level3.native[j][None], INPUT)[0])


def test_children_prefer_regions_inside_the_scan_and_settings_are_checked():
    valid = torch.zeros(2, 1, 64, 64, 64)
    valid[:, :, :32, :32, :] = 1  # only regions 0 and 1 (z = 0, y = 0) hold image voxels
    for seed in range(4):
        _, (level1, level2, _) = make_levels(batch=2, seed=seed, valid=valid)
        for parent in range(2):
            masked_with_content = [r for r in (0, 1) if not level1.visible[parent, level1.region_of_token == r].any()]
            picks = level2.parent_region[level2.parent == parent].tolist()
            assert len([r for r in picks if r in (0, 1)]) == min(2, len(masked_with_content))
    with pytest.raises(MassError, match="k2=1..5"):
        MiMLevelSettings(children=(6, 2)).check((4, 4, 4))
    with pytest.raises(MassError, match="region_grid"):
        MiMLevelSettings(region_grid=3).check((4, 4, 4))


# ----------------------------------------------------------------- network
def test_sincos_embedding_and_backbone_config():
    embedding = sincos_position_embedding((2, 3, 4), 24)
    assert embedding.shape == (24, 24)  # [sin z, cos z, sin y, cos y, sin x, cos x], 4 frequencies each
    assert torch.equal(embedding[0], torch.tensor([0.0] * 4 + [1.0] * 4).repeat(3))
    assert embedding[1, 16] == pytest.approx(torch.sin(torch.tensor(1.0)).item())  # x = 1, omega_0 = 1
    assert embedding[4, 8] == pytest.approx(torch.sin(torch.tensor(1.0)).item())  # y = 1
    assert MiMBackboneConfig.paper().token_grid() == (6, 6, 6) and MiMBackboneConfig.paper().patch_size == 16
    with pytest.raises(ValueError, match="divisible by 2"):
        MiMBackboneConfig.cpu([36, 32, 32]).validate()


def test_masked_content_does_not_leak_into_visible_features():
    network = tiny_network().eval()
    _, levels = make_levels(batch=2, seed=2)
    images, visible = levels[1].images, levels[1].visible
    token_mask = visible.reshape(-1, 1, 4, 4, 4).float()
    voxel_visible = token_mask.repeat_interleave(8, 2).repeat_interleave(8, 3).repeat_interleave(8, 4)
    perturbed = images + 5.0 * torch.randn_like(images) * (1 - voxel_visible)
    with torch.no_grad():
        a, b = network.backbone(images, visible), network.backbone(perturbed, visible)
        for stage, (map_a, map_b) in enumerate(zip(a.stage_maps, b.stage_maps)):
            factor = 2 ** (2 - stage)  # stage maps at 1/2 and 1/4 of the input, tokens at 1/8
            gate = token_mask.repeat_interleave(factor, 2).repeat_interleave(factor, 3).repeat_interleave(factor, 4)
            torch.testing.assert_close(map_a * gate, map_b * gate, rtol=0, atol=1e-5)
            assert not torch.allclose(map_a, map_b)  # masked positions did change
        torch.testing.assert_close(a.tokens, b.tokens, rtol=0, atol=1e-5)
        prediction_a, _ = network.reconstruct(images, visible)
        prediction_b, _ = network.reconstruct(perturbed, visible)
        torch.testing.assert_close(prediction_a, prediction_b, rtol=0, atol=1e-5)
        changed = images + 5.0 * voxel_visible * torch.randn_like(images)
        assert not torch.allclose(network.backbone(changed, visible).tokens, a.tokens, atol=1e-3)


def test_reconstruction_loss_covers_exactly_the_masked_patches():
    torch.manual_seed(0)
    images, valid = torch.randn(2, 1, 32, 32, 32), torch.ones(2, 1, 32, 32, 32)
    visible = torch.rand(2, 64) < 0.4
    target = patchify(images, PATCH)
    normalised = (target - target.mean(-1, keepdim=True)) / torch.sqrt(target.var(-1, unbiased=False, keepdim=True)
                                                                         + 1e-6)
    assert masked_patch_loss(normalised, images, valid, visible, PATCH) < 1e-8  # norm-pix targets
    prediction = torch.randn(2, 64, PATCH ** 3)
    loss = masked_patch_loss(prediction, images, valid, visible, PATCH)
    at_visible = prediction + 3.0 * visible.unsqueeze(-1)
    assert torch.equal(masked_patch_loss(at_visible, images, valid, visible, PATCH), loss)
    at_masked = prediction + 3.0 * (~visible).unsqueeze(-1)
    assert masked_patch_loss(at_masked, images, valid, visible, PATCH) > loss + 1
    outside = valid.clone()
    outside[:, :, :8, :8, :8] = 0  # token 0 lies outside the scan: never counted
    hidden = visible.clone()
    hidden[:, 0] = False
    moved = prediction.clone()
    moved[:, 0] += 100.0
    assert torch.equal(masked_patch_loss(moved, images, outside, hidden, PATCH),
                       masked_patch_loss(prediction, images, outside, hidden, PATCH))


def test_a_short_overfit_lowers_the_loss():
    network = tiny_network(seed=1)
    crops = smooth_crops(1, seed=4)
    levels = build_levels(crops, torch.ones_like(crops), INPUT, PATCH, MiMLevelSettings(children=(1, 1)),
                          batch_generator(4, 0))
    optimizer = torch.optim.AdamW(network.parameters(), lr=1e-2)
    losses, reconstruction = [], []
    for _ in range(30):
        loss, parts = mim_loss(levels, network([level.network_input() for level in levels]), PATCH, 0.1, 1.0)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
        reconstruction.append(sum(v for k, v in parts.items() if k.startswith("rec")))
    assert losses[-1] < 0.7 * losses[0] and reconstruction[-1] < 0.7 * reconstruction[0], losses


# ----------------------------------------------------------------- the trainer on the phantom
def options(**overrides) -> TrainingOptions:
    values = dict(mode="PRETRAIN", datasets=["990"], trainer="MiMPretrainer", configuration="3d_cpu", epochs=2,
                  iters_per_epoch=2, batch_size=1, num_workers=0, device="cpu", val_batches=1)
    values.update(overrides)
    return TrainingOptions(**values)


@pytest.fixture(scope="module")
def mim_run(phantom_with_masks, tmp_path_factory):
    """(paths with labels.csv in a copied raw folder, summary of an uninterrupted 4-step MiM run)."""
    root = tmp_path_factory.mktemp("mim")
    paths = MassPaths(raw=root / "raw", preprocessed=phantom_with_masks.preprocessed, results=root / "results")
    shutil.copytree(phantom_with_masks.raw / PHANTOM, paths.raw / PHANTOM)
    write_phantom_case_labels(paths.raw / PHANTOM, ["large_liver"])
    return paths, run_training(options(tag="straight"), paths)


def test_pretraining_writes_a_mim_checkpoint(mim_run):
    paths, summary = mim_run
    final = load_checkpoint(os.path.join(summary["output_folder"], "checkpoint_final.pt"))
    assert final.meta.network_class == "MiMNetwork" and final.meta.encoder_key_prefix == "backbone."
    assert final.meta.network_config["backbone"]["input_size_zyx"] == [64, 48, 48]  # the 3d_cpu patch
    assert final.meta.run_config["extra"]["preset"] == "cpu" and final.meta.run_config["extra"]["k2"] == 2
    records = [json.loads(line) for line in open(os.path.join(summary["output_folder"], "metrics.jsonl"))]
    for key in ("train_rec1_loss", "train_rec3_loss", "train_align12_loss", "train_align23_loss", "val_loss"):
        assert key in records[-1], key


def test_continue_equals_an_uninterrupted_run(mim_run, monkeypatch):
    paths, straight = mim_run
    original = MiMPretrainer.compute_loss

    def compute_loss(self, batch):
        if self.global_step == 2:
            os.kill(os.getpid(), signal.SIGTERM)
        return original(self, batch)
    monkeypatch.setattr(MiMPretrainer, "compute_loss", compute_loss)
    stopped = run_training(options(tag="resumed"), paths)
    assert stopped["stopped_early"] and stopped["global_step"] == 3 and stopped["epochs_done"] == 1
    monkeypatch.undo()
    resumed = run_training(options(tag="resumed", continue_training=True), paths)
    assert resumed["global_step"] == 4 and not resumed["stopped_early"]
    a = load_checkpoint(os.path.join(straight["output_folder"], "checkpoint_final.pt"))
    b = load_checkpoint(os.path.join(resumed["output_folder"], "checkpoint_final.pt"))
    for key in a.model:
        torch.testing.assert_close(a.model[key], b.model[key], rtol=0, atol=1e-6, msg=key)


def test_backbone_loads_into_segmenter_and_classifier_with_no_unexpected_key(mim_run):
    _, summary = mim_run
    checkpoint = load_checkpoint(os.path.join(summary["output_folder"], "checkpoint_final.pt"))
    backbone_keys = set(encoder_state_dict(checkpoint))
    segmenter, report = mim_segmenter_from_pretrained(checkpoint, ["liver", "kidney"], [1, 2], "ckpt")
    assert not report.unexpected and {k.removeprefix("backbone.") for k in report.loaded} == backbone_keys
    assert report.missing and not any(k.startswith("backbone.") for k in report.missing)
    assert segmenter(torch.zeros(1, 1, 64, 48, 48)).shape == (1, 2, 64, 48, 48)
    classifier, report = mim_classifier_from_pretrained(checkpoint, 3, [32, 48, 48], 0.1, "ckpt")
    assert not report.unexpected and len(report.loaded) == len(backbone_keys)
    assert all(k.startswith("head.") for k in report.missing)
    features = classifier.deepest_features(torch.zeros(2, 1, 32, 48, 48))
    assert features.shape == (2, 48, 4, 6, 6) and classifier(features, from_features=True).shape == (2, 3)
    for key, value in checkpoint.ema["module"].items():
        if key.startswith("backbone."):
            assert torch.equal(segmenter.state_dict()[key], value) and torch.equal(classifier.state_dict()[key], value)


def _cli(paths: MassPaths, *args) -> int:
    return train_main(["FINETUNE", "-d", "990", "-c", "3d_cpu", "--raw", str(paths.raw), "--preprocessed",
                       str(paths.preprocessed), "--results", str(paths.results), "--device", "cpu", "--num-workers",
                       "0", "--epochs", "1", *args])


def test_finetune_and_classification_probe_from_the_checkpoint(mim_run):
    paths, summary = mim_run
    checkpoint = os.path.join(summary["output_folder"], "checkpoint_final.pt")
    assert _cli(paths, "-shots", "1", "--iters-per-epoch", "2", "--batch-size", "1", "--pretrained", checkpoint) == 0
    folder = single_folder(paths.results / PHANTOM,
                           "SegmentationFinetuner__MassPlans__3d_cpu__pretrained-*_1shot_seed0")
    weights = json.loads((folder / "shots.json").read_text())["weights"]
    assert weights["loaded"] > 0 and not weights["unexpected"] and not weights["mismatched"]
    assert not any(k.startswith("backbone.") for k in weights["missing"])
    assert load_checkpoint(folder / "checkpoint_final.pt").meta.network_class == "MiMSegmenter"
    assert json.loads((folder / "test" / "summary.json").read_text())["num_cases"] == 1  # sliding-window test
    assert _cli(paths, "-tr", "ClassificationProbe", "--pretrained", checkpoint) == 0
    folder = single_folder(paths.results / PHANTOM, "ClassificationProbe__MassPlans__3d_cpu__pretrained-*_frac1_seed0")
    initialisation = json.loads((folder / "encoder_initialisation.json").read_text())
    assert initialisation["loaded"] == weights["loaded"] and not initialisation["unexpected"]
    assert all(k.startswith("head.") for k in initialisation["missing"])
    assert load_checkpoint(folder / "checkpoint_final.pt").meta.network_class == "MiMClassifier"
    assert (folder / "test_predictions.csv").is_file()


def test_unusable_settings_are_clear_errors(mim_run):
    paths, _ = mim_run
    with pytest.raises(MassError, match="preset"):
        run_training(options(tag="bad1", extra={"preset": "huge"}), paths)
    with pytest.raises(MassError, match="k3=1"):
        run_training(options(tag="bad2", extra={"k3": 500}), paths)
