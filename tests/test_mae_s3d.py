"""MAE and S3D baselines: block masks, the sparse encoder (no leakage, sparse InstanceNorm, dense equivalence), the
masked reconstruction loss, a short overfit, and both trainers end to end on the phantom (exact resume, transfer
into FINETUNE segmentation and the ClassificationProbe)."""
from __future__ import annotations

import json
import os
import signal

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy import ndimage

from dataset_conversion.phantom_case_labels import write_phantom_case_labels
from mass_nn.cli.train import main as train_main
from mass_nn.errors import MassError
from mass_nn.model.checkpoint import encoder_state_dict, load_checkpoint
from mass_nn.model.downstream_network import build_downstream_network
from mass_nn.networks.baselines.block_masking import mask_at, mask_generator, mask_grid, random_block_mask
from mass_nn.networks.baselines.reconstruction_unet import ReconstructionUNet, ReconstructionUNetConfig
from mass_nn.networks.baselines.s3d_network import S3DNetwork
from mass_nn.networks.baselines.sparse_encoder import sparse_encode, sparse_instance_norm
from mass_nn.networks.in_context.config import InContextNetworkConfig
from mass_nn.networks.in_context.encoder import ResUNetEncoder
from mass_nn.paths import MassPaths
from mass_nn.planning.plans import Plans
from mass_nn.registry import NETWORKS
from mass_nn.training.options import TrainingOptions
from mass_nn.training.pretrain.mae_pretrainer import MAEPretrainer, masked_input, masked_reconstruction_loss
from mass_nn.training.run_training import run_training
from tests.conftest import single_folder

PHANTOM = "Dataset990_PhantomCT"


def small_config(size=(32, 32, 32)) -> ReconstructionUNetConfig:
    return ReconstructionUNetConfig(InContextNetworkConfig(in_channels=1, channels=[4, 8, 16, 16, 16],
                                                           num_blocks=[1, 1, 1, 1], input_size_zyx=list(size),
                                                           head_dim=8))


def draw(batch_size: int, grid, batch_index: int = 0, ratio: float = 0.75) -> torch.Tensor:
    return random_block_mask(batch_size, grid, ratio, mask_generator(0, batch_index))


# ----------------------------------------------------------------- masks
def test_block_masks_hide_the_ratio_per_sample_and_depend_only_on_seed_and_batch():
    masks = draw(3, (4, 4, 4))
    assert masks.shape == (3, 1, 4, 4, 4) and set(masks.unique().tolist()) == {0.0, 1.0}
    assert masks.sum(dim=(1, 2, 3, 4)).tolist() == [16.0] * 3  # int(0.75 * 64) = 48 hidden in every sample
    assert not torch.equal(masks[0], masks[1])
    assert torch.equal(masks, draw(3, (4, 4, 4)))
    assert not torch.equal(masks, draw(3, (4, 4, 4), batch_index=1))
    assert mask_grid([64, 48, 48], 8) == (8, 6, 6) and mask_grid([128] * 3, 16) == (8, 8, 8)


def test_mask_at_repeats_blocks_and_leaves_maps_smaller_than_the_grid_active():
    grid_mask = draw(2, (4, 2, 2))
    full = mask_at(grid_mask, (16, 8, 8))
    assert torch.equal(full[:, :, ::4, ::4, ::4], grid_mask)
    assert torch.equal(full, F.interpolate(grid_mask, scale_factor=4, mode="nearest"))
    assert torch.equal(mask_at(grid_mask, (2, 1, 1)), torch.ones(2, 1, 2, 1, 1))
    with pytest.raises(ValueError, match="neither"):
        mask_at(grid_mask, (6, 4, 4))


def test_bad_block_size_or_ratio_is_a_user_error():
    with pytest.raises(MassError, match="block_size=24"):
        mask_grid([64, 48, 48], 24)
    with pytest.raises(MassError, match="block_size=32"):
        mask_grid([64, 32, 32], 32)  # one block along two axes
    with pytest.raises(MassError, match="block_size=12"):
        mask_grid([48, 48, 48], 12)  # divides the patch, but not the 6^3 map at 1/8
    with pytest.raises(MassError, match="mask_ratio=1.0"):
        draw(1, (2, 2, 2), ratio=1.0)


# ----------------------------------------------------------------- sparse encoder
def test_sparse_instance_norm_equals_a_dense_norm_over_the_active_voxels():
    torch.manual_seed(0)
    x = torch.randn(2, 3, 8, 8, 8) * 3 + 1
    active = mask_at(draw(2, (4, 4, 4)), (8, 8, 8))
    normed = sparse_instance_norm(x, active, eps=1e-5)
    assert torch.all(normed[active.expand_as(x) == 0] == 0)
    for b in range(2):
        inside = active[b, 0] == 1
        for c in range(3):
            values = x[b, c][inside]
            expected = (values - values.mean()) / torch.sqrt(values.var(unbiased=False) + 1e-5)
            torch.testing.assert_close(normed[b, c][inside], expected)
    box = torch.zeros(1, 1, 8, 8, 8)
    box[..., 2:6, 0:4, 4:8] = 1
    torch.testing.assert_close(sparse_instance_norm(x[:1], box, 1e-5)[..., 2:6, 0:4, 4:8],
                               F.instance_norm(x[:1, :, 2:6, 0:4, 4:8], eps=1e-5))


def test_sparse_encoder_with_everything_visible_is_the_dense_encoder():
    torch.manual_seed(0)
    encoder = ResUNetEncoder(small_config().encoder)
    x = torch.randn(2, 1, 32, 32, 32)
    sparse, _ = sparse_encode(encoder, x, torch.ones(2, 1, 4, 4, 4))
    for a, b in zip(sparse, encoder(x)):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


def test_s3d_output_has_the_input_shape_and_the_encoder_has_the_dense_keys():
    torch.manual_seed(0)
    network = S3DNetwork(small_config())
    x = torch.randn(2, 1, 32, 32, 32)
    assert network(x, draw(2, (4, 4, 4))).shape == x.shape and network(x).shape == x.shape
    keys = set(network.state_dict())
    dense_encoder = {f"encoder.{k}" for k in ResUNetEncoder(small_config().encoder).state_dict()}
    assert {k for k in keys if k.startswith("encoder.")} == dense_encoder
    assert set(ReconstructionUNet(small_config()).state_dict()) < keys
    assert {k.split(".")[0] for k in keys - set(ReconstructionUNet(small_config()).state_dict())} == {"densify"}


@pytest.mark.parametrize("size, block", [((32, 32, 32), 8), ((48, 32, 32), 16)])
def test_hidden_blocks_do_not_leak(size, block):
    torch.manual_seed(0)
    network = S3DNetwork(small_config(size)).eval()
    x = torch.randn(2, 1, *size)
    grid_mask = draw(2, mask_grid(size, block))
    visible = mask_at(grid_mask, size)
    perturbed = x + (1 - visible) * 5 * torch.randn_like(x)
    with torch.no_grad():
        before, _ = sparse_encode(network.encoder, x, grid_mask)
        after, _ = sparse_encode(network.encoder, perturbed, grid_mask)
        for level, (a, b) in enumerate(zip(before, after)):
            assert torch.equal(a, b), f"level {level}"
        assert torch.equal(network(x, grid_mask), network(perturbed, grid_mask))
        assert not torch.equal(network.encoder(x)[0], network.encoder(perturbed)[0])  # a dense encoder would see it
    assert torch.equal(masked_input(x, visible), masked_input(perturbed, visible))  # the MAE's input


# ----------------------------------------------------------------- loss
def test_loss_counts_only_hidden_valid_voxels():
    torch.manual_seed(0)
    target, prediction = torch.randn(2, 2, 16, 16, 16), torch.randn(2, 2, 16, 16, 16)
    visible = mask_at(draw(2, (2, 2, 2)), (16, 16, 16))
    valid = torch.ones(2, 1, 16, 16, 16)
    valid[..., :4] = 0
    loss = masked_reconstruction_loss(prediction, target, visible, valid)
    counted = ((1 - visible) * valid).expand_as(target) == 1
    torch.testing.assert_close(loss, (prediction - target)[counted].square().mean())
    changed = prediction + 10 * (visible + (1 - valid)).clamp(max=1)
    torch.testing.assert_close(masked_reconstruction_loss(changed, target, visible, valid), loss, rtol=0, atol=0)
    assert masked_reconstruction_loss(prediction + 1, target, visible, valid) != loss


def test_a_short_overfit_on_one_volume_lowers_each_loss():
    """12 steps on one smooth volume under one fixed mask: the masked error drops by more than 30 %."""
    volume = ndimage.gaussian_filter(np.random.default_rng(0).standard_normal((32, 32, 32)), 2)
    x = torch.as_tensor((volume - volume.mean()) / volume.std(), dtype=torch.float32)[None, None]
    grid_mask, valid = draw(1, (4, 4, 4)), torch.ones_like(x)
    visible = mask_at(grid_mask, x.shape[2:])
    for network in (ReconstructionUNet(small_config()), S3DNetwork(small_config())):
        s3d = isinstance(network, S3DNetwork)
        optimizer = torch.optim.Adam(network.parameters(), lr=3e-3)
        losses = []
        for _ in range(12):
            prediction = network(x, grid_mask) if s3d else network(masked_input(x, visible))
            loss = masked_reconstruction_loss(prediction, x, visible, valid)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            losses.append(float(loss.detach()))
        assert min(losses[-3:]) < 0.7 * losses[0], (type(network).__name__, losses)


# ----------------------------------------------------------------- trainers on the phantom
@pytest.fixture(scope="module")
def phantom(tmp_path_factory) -> MassPaths:
    """The 6-case phantom, preprocessed (3d_cpu; no mask banks: these trainers need none), with labels.csv."""
    from dataset_conversion.phantom import write_phantom_dataset
    from mass_nn.preprocessing.plan_and_preprocess import PlanAndPreprocessOptions, plan_and_preprocess
    root = tmp_path_factory.mktemp("mae_s3d_phantom")
    paths = MassPaths(raw=root / "raw", preprocessed=root / "pre", results=root / "res")
    write_phantom_dataset(paths.raw, 990, num_cases=6, seed=3)
    plan_and_preprocess(990, paths, PlanAndPreprocessOptions(preset="cpu_only", num_processes=1, progress=False))
    write_phantom_case_labels(paths.raw / PHANTOM, ["large_liver"])
    return paths


@pytest.fixture
def roots(phantom, tmp_path) -> MassPaths:
    return MassPaths(raw=phantom.raw, preprocessed=phantom.preprocessed, results=tmp_path / "results")


def pretrain_options(trainer: str, **overrides) -> TrainingOptions:
    values = dict(mode="PRETRAIN", datasets=["990"], trainer=trainer, configuration="3d_cpu", epochs=1,
                  iters_per_epoch=2, batch_size=1, num_workers=0, device="cpu", val_batches=1)
    return TrainingOptions(**{**values, **overrides})


def _stop_during_first_step(monkeypatch):
    """SIGTERM while the first step's loss is computed: the run stops after that step."""
    original = MAEPretrainer.compute_loss

    def compute_loss(self, batch):
        if self.global_step == 0:
            os.kill(os.getpid(), signal.SIGTERM)
        return original(self, batch)
    monkeypatch.setattr(MAEPretrainer, "compute_loss", compute_loss)


def _finetune(paths: MassPaths, *args) -> int:
    return train_main(["FINETUNE", "-d", "990", "-c", "3d_cpu", "--epochs", "1", "--batch-size", "1",
                       "--num-workers", "0", "--device", "cpu", "--raw", str(paths.raw), "--preprocessed",
                       str(paths.preprocessed), "--results", str(paths.results), *args])


def _check_segmentation_transfer(paths: MassPaths, checkpoint_path: str, full_run: bool) -> None:
    """Every encoder key loads into the downstream ResUNet, none unexpected: by a FINETUNE run (full_run) or by
    the network builder that FINETUNE uses."""
    if full_run:
        assert _finetune(paths, "-shots", "1", "--iters-per-epoch", "1", "--pretrained", checkpoint_path) == 0
        folder = single_folder(paths.results / PHANTOM,
                               "SegmentationFinetuner__MassPlans__3d_cpu__pretrained-*_1shot_seed0")
        weights = json.loads((folder / "shots.json").read_text())["weights"]
        assert weights["missing"] == [] and weights["unexpected"] == []
        return
    checkpoint = load_checkpoint(checkpoint_path)
    plans = Plans.from_dict(checkpoint.meta.plans).configuration("3d_cpu")
    network, report = build_downstream_network(checkpoint, checkpoint_path, plans, 1, ["liver"], [1])
    assert NETWORKS.name_of(type(network)) == "FixedClassSegmenter" and not report.missing and not report.unexpected
    assert len(report.loaded) == len(encoder_state_dict(checkpoint))


@pytest.mark.parametrize("trainer, network_class", [
    ("MAEPretrainer", "ReconstructionUNet"),
    # about 17 s on 2 cores (its full run): slow, to keep the default run under 10 minutes
    pytest.param("S3DPretrainer", "S3DNetwork", marks=pytest.mark.slow)])
def test_trainer_resumes_exactly_and_its_encoder_transfers(roots, monkeypatch, trainer, network_class):
    straight = run_training(pretrain_options(trainer, tag="straight"), roots)
    _stop_during_first_step(monkeypatch)
    assert run_training(pretrain_options(trainer, tag="resumed"), roots)["global_step"] == 1
    monkeypatch.undo()
    resumed = run_training(pretrain_options(trainer, tag="resumed", continue_training=True), roots)
    assert straight["global_step"] == resumed["global_step"] == 2 and not resumed["stopped_early"]
    checkpoint_path = os.path.join(straight["output_folder"], "checkpoint_final.pt")
    a, b = load_checkpoint(checkpoint_path), load_checkpoint(os.path.join(resumed["output_folder"],
                                                                          "checkpoint_final.pt"))
    for key in a.model:
        torch.testing.assert_close(a.model[key], b.model[key], rtol=0, atol=1e-6, msg=key)
    assert a.meta.network_class == network_class and a.meta.encoder_key_prefix == "encoder."
    config = json.loads(open(os.path.join(straight["output_folder"], "run_config.json")).read())
    assert config["extra"] == {"block_size": 8, "mask_ratio": 0.75} and config["lr"] == 1e-2

    _check_segmentation_transfer(roots, checkpoint_path, full_run=trainer == "S3DPretrainer")
    assert _finetune(roots, "-tr", "ClassificationProbe", "--pretrained", checkpoint_path) == 0
    folder = single_folder(roots.results / PHANTOM, "ClassificationProbe__MassPlans__3d_cpu__pretrained-*_frac1_seed0")
    initialisation = json.loads((folder / "encoder_initialisation.json").read_text())
    assert initialisation["loaded"] == len(encoder_state_dict(a)) and not initialisation["unexpected"]


def test_bad_settings_are_user_errors(roots):
    with pytest.raises(MassError, match="block_size=24"):
        run_training(pretrain_options("S3DPretrainer", extra={"block_size": 24}), roots)
    with pytest.raises(MassError, match="mask_ratio"):
        run_training(pretrain_options("MAEPretrainer", extra={"mask_ratio": 0.001}), roots)
