"""SimCLR and Models Genesis baselines: crop pairs, the contrastive network and NT-Xent, the corruptions, short
overfits, and both trainers end to end on the phantom (resume, FINETUNE and ClassificationProbe transfer)."""
from __future__ import annotations

import json
import math
import os
import shutil
import signal

import numpy as np
import pytest
import torch

from dataset_conversion.phantom_case_labels import write_phantom_case_labels
from mass_nn.cli.train import main as train_main
from mass_nn.errors import MassError
from mass_nn.model.checkpoint import encoder_state_dict, load_checkpoint
from mass_nn.model.downstream_network import build_downstream_network
from mass_nn.networks.baselines.contrastive_encoder import ContrastiveEncoder, ContrastiveEncoderConfig
from mass_nn.networks.baselines.reconstruction_unet import ReconstructionUNet, ReconstructionUNetConfig
from mass_nn.networks.build import build_network
from mass_nn.networks.in_context.config import InContextNetworkConfig
from mass_nn.paths import MassPaths
from mass_nn.planning.plans import Plans
from mass_nn.preprocessing.blosc2_storage import open_array
from mass_nn.preprocessing.crop_pad import crop_or_pad
from mass_nn.registry import NETWORKS
from mass_nn.registry import TRAINERS
from mass_nn.training.data.contrastive_crops import (ContrastiveAugmentation, ContrastiveCropSettings,
                                                     derived_crop_size, derived_region_size, make_contrastive_loader,
                                                     plan_crop_pairs)
from mass_nn.training.data.image_crop_loader import ImageCase
from mass_nn.training.options import TrainingOptions
from mass_nn.training.pretrain import models_genesis_corruptions as mg
from mass_nn.training.pretrain.models_genesis_pretrainer import ModelsGenesisPretrainer, make_genesis_loader
from mass_nn.training.pretrain.nt_xent import nt_xent_loss
from mass_nn.training.run_training import run_training

PHANTOM = "Dataset990_PhantomCT"
TINY_ENCODER = InContextNetworkConfig(in_channels=1, channels=[4, 8, 16, 16, 16], num_blocks=[1, 1, 1, 1],
                                      input_size_zyx=[32, 32, 32], num_prior_stages=1, head_dim=16)


def _train_cases(paths: MassPaths) -> list[ImageCase]:
    folder = paths.preprocessed / PHANTOM / "MassPlans_3d_cpu"
    train = json.loads((paths.preprocessed / PHANTOM / "splits.json").read_text())["train"]
    return [ImageCase(case, folder / f"{case}.b2nd") for case in train]


def _crop_settings(augmentation: ContrastiveAugmentation | None = None) -> ContrastiveCropSettings:
    """The trainer's derived sizes for the phantom's 3d_cpu patch (64, 48, 48)."""
    crop = derived_crop_size((64, 48, 48))
    return ContrastiveCropSettings(crop_size_zyx=crop, region_size_zyx=derived_region_size(crop),
                                   augmentation=augmentation or ContrastiveAugmentation())


# ----------------------------------------------------------------- SimCLR crops, network, loss
def test_crop_pairs_come_from_the_same_place_and_batches_are_a_function_of_the_index(phantom_with_masks):
    assert derived_crop_size((64, 48, 48)) == (32, 32, 32) and derived_crop_size((128, 128, 128)) == (64, 64, 64)
    assert derived_region_size((64, 64, 64)) == ContrastiveCropSettings.paper().region_size_zyx == (64, 192, 192)
    cases = _train_cases(phantom_with_masks)
    settings = _crop_settings(ContrastiveAugmentation.none())
    with make_contrastive_loader(cases, settings, batch_size=3, seed=5, num_workers=0) as loader:
        batches = [next(loader) for _ in range(3)]
    crop = np.asarray(settings.crop_size_zyx)
    for batch in batches:
        assert batch["image"].shape == (12, 1, 32, 32, 32) and batch["crop_starts"].shape == (3, 2, 2, 3)
        n = 6  # reference crops; row i + n is the partner of row i
        for b, case_id in enumerate(batch["case_ids"]):
            volume = open_array(cases[[c.case_id for c in cases].index(case_id)].image_path)
            for k in range(2):
                reference, partner = batch["crop_starts"][b, k]
                overlap = crop - np.abs(reference - partner)
                assert np.all(overlap >= 0.5 * crop), (reference, partner)
                row = 2 * b + k  # the crops are the volume at these world coordinates
                np.testing.assert_array_equal(batch["image"][row], crop_or_pad(volume, reference, tuple(crop)))
                np.testing.assert_array_equal(batch["image"][row + n], crop_or_pad(volume, partner, tuple(crop)))
    with make_contrastive_loader(cases, _crop_settings(), batch_size=3, seed=5, num_workers=0, start_batch=2) as a, \
            make_contrastive_loader(cases, _crop_settings(), batch_size=3, seed=5, num_workers=0) as b:
        next(b), next(b)
        np.testing.assert_array_equal(next(a)["image"], next(b)["image"])  # augmented, and still f(seed, 2)


def test_pairs_stay_inside_a_volume_smaller_than_the_region():
    settings = ContrastiveCropSettings(crop_size_zyx=(32, 32, 32), region_size_zyx=(64, 96, 96), crops_per_sample=4)
    rng = np.random.default_rng(0)
    for _ in range(20):
        low, high, starts = plan_crop_pairs((70, 50, 20), settings, rng)
        assert np.all(low >= 0) and np.all(high <= (70, 50, 20)) and high[0] - low[0] == 64
        for start in starts.reshape(-1, 3):
            # inside the region where it is larger than the crop (z, y); covering all 20 voxels along x
            assert low[0] <= start[0] <= high[0] - 32 and 0 <= start[1] <= 50 - 32 and -12 <= start[2] <= 0


def test_embeddings_are_2n_by_d_and_the_network_round_trips(phantom_with_masks):
    with make_contrastive_loader(_train_cases(phantom_with_masks), _crop_settings(), 2, seed=0, num_workers=0) as loader:
        batch = next(loader)
    config = ContrastiveEncoderConfig(TINY_ENCODER, projector_width=24)
    network = ContrastiveEncoder(config)
    embeddings = network(torch.as_tensor(batch["image"]))
    assert embeddings.shape == (8, 24)  # 2N = 2 * batch 2 * 2 crops per sample
    assert network.pooled_features(torch.zeros(1, 1, 32, 32, 32)).shape == (1, sum(TINY_ENCODER.channels))
    rebuilt = build_network("ContrastiveEncoder", config.to_dict())
    assert rebuilt.config == config and set(rebuilt.state_dict()) == set(network.state_dict())
    paper = ContrastiveEncoderConfig.paper()
    assert paper.projector_width == 2048 and paper.pooled_features == 992


def _loop_nt_xent(embeddings: torch.Tensor, temperature: float) -> float:
    """NT-Xent written out term by term."""
    z = torch.nn.functional.normalize(embeddings, dim=1)
    n, total = len(z) // 2, 0.0
    for i in range(len(z)):
        partner = (i + n) % len(z)
        others = [math.exp(float(z[i] @ z[j]) / temperature) for j in range(len(z)) if j != i]
        total -= math.log(math.exp(float(z[i] @ z[partner]) / temperature) / sum(others))
    return total / len(z)


def test_nt_xent_identical_views_beat_random_and_random_is_log_2n_minus_1():
    torch.manual_seed(0)
    embeddings = torch.randn(8, 5)
    assert float(nt_xent_loss(embeddings, 0.5)) == pytest.approx(_loop_nt_xent(embeddings, 0.5), rel=1e-5)
    for n in (4, 16):
        random_loss = float(nt_xent_loss(torch.randn(2 * n, 8192), 0.5))
        assert random_loss == pytest.approx(math.log(2 * n - 1), abs=0.03)
        views = torch.randn(n, 8192)
        assert float(nt_xent_loss(torch.cat([views, views]), 0.5)) < random_loss - 0.5
    network = ContrastiveEncoder(ContrastiveEncoderConfig(TINY_ENCODER, projector_width=64))
    with torch.no_grad():  # a random network embeds all crops alike: all similarities equal
        initial = float(nt_xent_loss(network(torch.randn(8, 1, 32, 32, 32)), 0.5))
    assert initial == pytest.approx(math.log(7), abs=0.1)


# ----------------------------------------------------------------- Models Genesis corruptions
def _unit_volume(seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.random((1, 40, 30, 30), dtype=np.float32)


@pytest.mark.parametrize("name", ["shuffle", "bezier", "inpaint", "outpaint", "pipeline"])
def test_each_corruption_keeps_shape_and_range_changes_the_volume_and_is_seeded(name):
    settings = mg.GenesisCorruptionSettings(num_shuffle_blocks=40, shuffle_probability=1.0,
                                            nonlinear_probability=1.0, paint_probability=1.0)
    corruption = {"shuffle": lambda v, r: mg.local_pixel_shuffle(v, 40, r),
                  "bezier": mg.bezier_intensity_map,
                  "inpaint": lambda v, r: mg.inpaint(v, settings, r),
                  "outpaint": lambda v, r: mg.outpaint(v, settings, r),
                  "pipeline": lambda v, r: mg.corrupt(v, settings, r)}[name]
    volume = _unit_volume()
    out = corruption(volume, np.random.default_rng(3))
    assert out.shape == volume.shape and out.dtype == np.float32
    assert out.min() >= 0.0 and out.max() <= 1.0 and not np.array_equal(out, volume)
    np.testing.assert_array_equal(out, corruption(volume, np.random.default_rng(3)))
    assert not np.array_equal(out, corruption(volume, np.random.default_rng(4)))
    np.testing.assert_array_equal(volume, _unit_volume())  # the input is left alone


def test_shuffle_permutes_inside_boxes_and_painting_keeps_or_replaces_boxes():
    volume = _unit_volume()
    one_box = mg.local_pixel_shuffle(volume, 1, np.random.default_rng(1))
    changed = one_box != volume
    np.testing.assert_array_equal(np.sort(one_box[changed]), np.sort(volume[changed]))
    assert changed.sum() <= 4 * 3 * 3  # a box is at most a tenth of each side
    outpainted = mg.outpaint(volume, mg.GenesisCorruptionSettings(), np.random.default_rng(2))
    kept = (outpainted == volume).mean()
    assert 3 / 7 * (3 / 7) ** 2 * 0.5 < kept < 1.0  # one box of about 3/7-4/7 per side at least
    inpainted = mg.inpaint(volume, mg.GenesisCorruptionSettings(), np.random.default_rng(2))
    assert 0.0 < (inpainted != volume).mean() < 0.5
    ramp = np.linspace(0, 1, 101, dtype=np.float32).reshape(1, 1, 1, 101)
    for seed in range(6):  # every Bezier map is monotone and fixes or swaps the ends
        mapped = mg.bezier_intensity_map(ramp, np.random.default_rng(seed)).ravel()
        steps = np.diff(mapped)
        assert np.all(steps >= -1e-6) or np.all(steps <= 1e-6)
        assert {round(float(mapped[0]), 3), round(float(mapped[-1]), 3)} == {0.0, 1.0}


def test_corruption_transform_flips_the_target_with_the_input_and_is_seeded_per_batch():
    rng = np.random.default_rng(0)
    image = rng.normal(size=(3, 1, 32, 32, 32)).astype(np.float32)
    valid = np.ones((3, 1, 32, 32, 32), np.uint8)
    valid[:, :, :5] = 0
    image[:, :, :5] = 0.0
    transform = mg.GenesisCorruptionTransform(mg.GenesisCorruptionSettings(num_shuffle_blocks=20,
                                                                           flip_probability=0.9))
    outputs = []
    for _ in range(2):
        np.random.seed(7)
        outputs.append(transform(image=image.copy(), valid=valid.copy()))
    for key in ("image", "target", "valid"):
        np.testing.assert_array_equal(outputs[0][key], outputs[1][key])
    out = outputs[0]
    assert out["image"].shape == out["target"].shape == image.shape and out["image"].dtype == np.float32
    assert not np.array_equal(out["image"], out["target"])
    assert any(not np.array_equal(out["valid"][b], valid[b]) for b in range(3))  # a flip moved the padding
    for b in range(3):
        assert np.all(out["target"][b][out["valid"][b] == 0] == 0.0)  # target and mask flipped together
        assert sorted(out["target"][b].ravel().tolist()) == sorted(image[b].ravel().tolist())
        inside = out["valid"][b] > 0
        lo, hi = image[b][valid[b] > 0].min(), image[b][valid[b] > 0].max()
        assert out["image"][b][inside].min() >= lo - 1e-5 and out["image"][b][inside].max() <= hi + 1e-5


def test_loader_workers_corrupt_and_augment_exactly_as_the_main_process(phantom_with_masks):
    """The corruptions and crop augmentations run in the worker processes, seeded per batch: the batches do not
    depend on the worker count."""
    cases = _train_cases(phantom_with_masks)
    corruption = mg.GenesisCorruptionSettings(num_shuffle_blocks=50)
    loaders = {
        "genesis": lambda workers: make_genesis_loader(cases, (64, 48, 48), 1, 3, workers,
                                                       ModelsGenesisPretrainer.augmentation(), corruption),
        "simclr": lambda workers: make_contrastive_loader(cases, _crop_settings(), 1, 3, workers)}
    for name, make in loaders.items():
        batches = {}
        for workers in (0, 2):
            with make(workers) as loader:
                batches[workers] = [next(loader) for _ in range(3)]
        for in_process, from_workers in zip(batches[0], batches[2]):
            keys = {"genesis": ("image", "target", "valid"), "simclr": ("image", "crop_starts")}[name]
            assert set(keys) <= set(in_process) and set(in_process) == set(from_workers)
            for key in in_process:  # every entry, arrays and ids alike
                np.testing.assert_array_equal(in_process[key], from_workers[key], err_msg=f"{name} {key}")
        if name == "genesis":
            assert not np.array_equal(batches[0][0]["image"], batches[0][0]["target"])


# ----------------------------------------------------------------- short overfits
def test_short_overfits_lower_both_losses():
    torch.manual_seed(0)
    contrastive = ContrastiveEncoder(ContrastiveEncoderConfig(TINY_ENCODER, projector_width=32))
    crops = torch.randn(2, 1, 32, 32, 32)
    views = torch.cat([crops, crops + 0.3 * torch.randn(2, 1, 32, 32, 32)])
    restorer = ReconstructionUNet(ReconstructionUNetConfig(TINY_ENCODER))
    original = torch.rand(1, 1, 32, 32, 32)
    corrupted = torch.as_tensor(mg.corrupt(original[0].numpy(), mg.GenesisCorruptionSettings(num_shuffle_blocks=30),
                                           np.random.default_rng(0))[None])
    cases = {"simclr": (contrastive, lambda: nt_xent_loss(contrastive(views), 0.5)),
             "genesis": (restorer, lambda: (restorer(corrupted) - original).square().mean())}
    for name, (network, loss_of) in cases.items():
        optimizer = torch.optim.Adam(network.parameters(), lr=3e-3)
        losses = []
        for _ in range(6):
            optimizer.zero_grad()
            loss = loss_of()
            loss.backward()
            optimizer.step()
            losses.append(float(loss.detach()))
        assert losses[-1] < 0.7 * losses[0], (name, losses[0], losses[-1])


# ----------------------------------------------------------------- end to end on the phantom
def _options(trainer: str, tag: str, **overrides) -> TrainingOptions:
    values = dict(mode="PRETRAIN", datasets=["990"], trainer=trainer, configuration="3d_cpu", epochs=1,
                  iters_per_epoch=2, batch_size=1, num_workers=0, device="cpu", val_batches=1, tag=tag)
    values.update(overrides)
    return TrainingOptions(**values)


def _stop_during_first_step(trainer_class, monkeypatch) -> None:
    original = trainer_class.compute_loss

    def compute_loss(self, batch):
        if self.global_step == 0:
            os.kill(os.getpid(), signal.SIGTERM)
        return original(self, batch)
    monkeypatch.setattr(trainer_class, "compute_loss", compute_loss)


@pytest.fixture(scope="module")
def transfer_paths(phantom_with_masks, tmp_path_factory) -> MassPaths:
    """The shared phantom with a copied raw folder holding labels.csv (for the ClassificationProbe)."""
    root = tmp_path_factory.mktemp("simclr_genesis")
    paths = MassPaths(raw=root / "raw", preprocessed=phantom_with_masks.preprocessed, results=root / "results")
    shutil.copytree(phantom_with_masks.raw / PHANTOM, paths.raw / PHANTOM)
    write_phantom_case_labels(paths.raw / PHANTOM, ["large_liver"])
    return paths


def _downstream(paths: MassPaths, checkpoint: str, *args) -> int:
    return train_main(["FINETUNE", "-d", "990", "-c", "3d_cpu", "--epochs", "1", "--iters-per-epoch", "1",
                       "--batch-size", "1", "--num-workers", "0", "--device", "cpu", "--pretrained", checkpoint,
                       "--raw", str(paths.raw), "--preprocessed", str(paths.preprocessed), "--results",
                       str(paths.results), *args])


def _run_folder(paths: MassPaths, downstream: str, tag: str):
    """The one run folder of a downstream trainer tagged `tag`."""
    (folder,) = (paths.results / PHANTOM).glob(f"{downstream}__*{tag}")
    return folder


def _segmentation_transfer(paths: MassPaths, checkpoint: str, trainer: str, full_run: bool) -> dict:
    """The encoder-weight report of FINETUNE from `checkpoint`: a whole 1-shot run through the CLI, or (to keep
    the file fast) just the downstream network mass_train FINETUNE would build."""
    if full_run:
        assert _downstream(paths, checkpoint, "-shots", "1", "--tag", trainer) == 0
        return json.loads((_run_folder(paths, "SegmentationFinetuner", trainer) / "shots.json").read_text())["weights"]
    loaded = load_checkpoint(checkpoint)
    plans = Plans.from_dict(loaded.meta.plans)
    network, report = build_downstream_network(loaded, checkpoint, plans.configuration("3d_cpu"), 1, ["liver"], [1])
    assert NETWORKS.name_of(type(network)) == "FixedClassSegmenter"
    return report.to_dict()


@pytest.mark.parametrize("trainer,extra,message", [
    ("SimCLRPretrainer", {"crop_size": [30, 32, 32]}, "divisible by 16"),
    ("SimCLRPretrainer", {"crop_size": [32, 32, 32], "region_size": [64, 16, 48]}, "at least the crop size"),
    ("SimCLRPretrainer", {"crop_size": 32}, "setting crop_size=32: must be a list"),
    ("ModelsGenesisPretrainer", {"paint_probability": 1.5},
     r"paint_probability=1.5: expected a value in \[0, 1\]"),
    ("ModelsGenesisPretrainer", {"shuffle_blocks": 5}, "unknown ModelsGenesisPretrainer setting")])
def test_bad_settings_are_clear_errors(trainer, extra, message, transfer_paths):
    with pytest.raises(MassError, match=message):
        run_training(_options(trainer, "bad", extra=extra), transfer_paths)


@pytest.mark.parametrize("trainer,network_class,full_finetuning,recorded", [
    ("SimCLRPretrainer", "ContrastiveEncoder", True, {"crop_size": [32, 32, 32], "region_size": [32, 96, 96],
                                                      "projector_width": 512, "grad_clip": 0.1}),
    ("ModelsGenesisPretrainer", "ReconstructionUNet", False, {"num_shuffle_blocks": 360, "grad_clip": 12.0})])
def test_pretrain_resume_and_transfer_on_the_phantom(trainer, network_class, full_finetuning, recorded,
                                                     transfer_paths, monkeypatch):
    straight = run_training(_options(trainer, "straight"), transfer_paths)
    _stop_during_first_step(TRAINERS.get(trainer), monkeypatch)
    stopped = run_training(_options(trainer, "resumed"), transfer_paths)
    assert stopped["stopped_early"] and stopped["global_step"] == 1
    monkeypatch.undo()
    resumed = run_training(_options(trainer, "resumed", continue_training=True), transfer_paths)
    assert resumed["global_step"] == straight["global_step"] == 2 and not resumed["stopped_early"]
    checkpoint = f"{straight['output_folder']}/checkpoint_final.pt"
    a, b = load_checkpoint(checkpoint), load_checkpoint(f"{resumed['output_folder']}/checkpoint_final.pt")
    assert a.meta.network_class == network_class and a.meta.encoder_key_prefix == "encoder."
    used = {**a.meta.run_config["extra"], "grad_clip": a.meta.run_config["grad_clip"]}
    assert recorded.items() <= used.items()  # derived settings and trainer defaults are recorded as used
    for key in a.model:
        torch.testing.assert_close(a.model[key], b.model[key], rtol=0, atol=1e-6, msg=key)
    assert straight["best_metric"] == pytest.approx(resumed["best_metric"], abs=1e-6)  # the held-out loss
    encoder_keys = len(encoder_state_dict(a))

    weights = _segmentation_transfer(transfer_paths, checkpoint, trainer, full_finetuning)
    assert weights == {"loaded": encoder_keys, "missing": [], "unexpected": [], "mismatched": []}
    assert _downstream(transfer_paths, checkpoint, "-tr", "ClassificationProbe", "--tag", trainer) == 0
    folder = _run_folder(transfer_paths, "ClassificationProbe", trainer)
    initialisation = json.loads((folder / "encoder_initialisation.json").read_text())
    assert initialisation["loaded"] == encoder_keys and not initialisation["unexpected"]
    assert initialisation["missing"] and all(k.startswith("head.") for k in initialisation["missing"])
