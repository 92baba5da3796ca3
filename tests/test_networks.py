"""The in-context segmentation network (mass_nn.networks): shapes, exact parameter counts, task independence,
permutation equivariance, k-shot averaging, pooling equivalence, empty masks, input errors and gradients."""
from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn.functional as F

from mass_nn.errors import PlansValidationError
from mass_nn.networks.conv_blocks import PreActConv3d, ResBlock3d
from mass_nn.networks.in_context.config import InContextNetworkConfig
from mass_nn.networks.in_context.decoder import UpBlock
from mass_nn.networks.in_context.fusion import FusionStage
from mass_nn.networks.in_context.in_context_model import InContextSegmenter
from mass_nn.networks.in_context.pixel_shuffle import PixelShuffle3d, PixelUnshuffle3d
from mass_nn.networks.in_context.task_encoder import MaskMerge, foreground_pool
from mass_nn.networks.trilinear import trilinear_upsample_adjoint
from mass_nn.networks.in_context.task_ops import (average_task_embeddings, chunk_task_embedding, concat_task_embeddings,
                                       select_tasks)
from mass_nn.planning.plans import ConfigurationPlan, NetworkPlan

TINY_PRIOR_CHANNELS = [128, 64, 32]
TOKENS = 11  # 10 queries + the foreground token


def _tiny_model(**changes) -> InContextSegmenter:
    torch.manual_seed(0)
    return InContextSegmenter(dataclasses.replace(InContextNetworkConfig.tiny(), **changes))


@pytest.fixture(scope="module")
def tiny_model() -> InContextSegmenter:
    return _tiny_model()


def _images(batch: int, size=(32, 32, 32), seed: int = 1) -> torch.Tensor:
    return torch.randn(batch, 1, *size, generator=torch.Generator().manual_seed(seed))


def _masks(batch: int, tasks: int, size=(32, 32, 32), seed: int = 2) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return (torch.rand(batch, tasks, *size, generator=generator) > 0.7).float()


def _count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


# ---------------------------------------------------------------- config


def test_config_round_trip_presets_and_plans():
    for config in (InContextNetworkConfig.paper(), InContextNetworkConfig.tiny()):
        assert InContextNetworkConfig.from_dict(config.to_dict()) == config
    with pytest.raises(PlansValidationError, match="unknown field"):
        InContextNetworkConfig.from_dict({**InContextNetworkConfig.tiny().to_dict(), "depth": 3})
    plan = ConfigurationPlan(name="3d_fullres", data_identifier="x", target_spacing_zyx_mm=[1.5, 1.5, 1.5],
                             patch_size_zyx=[64, 48, 48], batch_size=2, median_shape_after_resampling_zyx=[90, 90, 90],
                             network=NetworkPlan(architecture="ResUNet", channels=[8, 16, 32, 64, 128],
                                                 num_blocks=[1, 1, 1, 1], num_prior_stages=2, num_queries=4))
    config = InContextNetworkConfig.from_configuration(plan, in_channels=2)
    assert (config.input_size_zyx, config.in_channels, config.num_prior_stages, config.num_queries) == \
        ([64, 48, 48], 2, 2, 4)


@pytest.mark.parametrize("changes, message", [
    ({"channels": [8, 16, 24, 64, 128]}, "head_dim"),
    ({"input_size_zyx": [32, 40, 32]}, "multiples of \\[16, 16, 16\\]"),
    ({"input_size_zyx": [16, 32, 32]}, "at least \\[32, 32, 32\\]"),
    ({"channels": [8, 16, 32, 64]}, "channels"),
    ({"num_blocks": [1, 1, 0, 1]}, "num_blocks"),
    ({"num_prior_stages": 5}, "num_prior_stages"),
    ({"foreground_pool": "max"}, "foreground_pool"),
])
def test_config_validation_names_the_problem(changes, message):
    config = dataclasses.replace(InContextNetworkConfig.tiny(), **changes)
    with pytest.raises(ValueError, match=message):
        config.validate()
    with pytest.raises(ValueError, match=message):
        InContextSegmenter(config)


# ---------------------------------------------------------------- parameter counts


def _meta_counts(config: InContextNetworkConfig) -> tuple[int, int, int, int, int]:
    with torch.device("meta"):
        model = InContextSegmenter(config)
    parts = (model.encoder, model.decoder, model.task_encoder, model.head)
    return (_count(model), *(_count(part) for part in parts))


def test_parameter_counts_paper_and_tiny_per_part():
    assert _meta_counts(InContextNetworkConfig.paper()) == (120_126_373, 37_657_440, 46_000_384, 35_632_229, 836_320)
    assert _meta_counts(InContextNetworkConfig.tiny()) == (6_619_477, 1_178_712, 2_595_712, 2_792_261, 52_792)


@pytest.mark.parametrize("channels, total", [([8, 16, 32, 64, 128], 8_088_277), ([16, 32, 64, 128, 256], 29_721_669)])
def test_parameter_counts_two_block_presets(channels, total):
    config = InContextNetworkConfig(in_channels=1, channels=channels, num_blocks=[2, 2, 2, 2],
                                    input_size_zyx=[32, 32, 32])
    assert _meta_counts(config)[0] == total


# ---------------------------------------------------------------- building blocks


def test_conv_blocks_shapes_and_shortcuts():
    x = torch.randn(2, 4, 8, 8, 8)
    assert PreActConv3d(4, 6)(x).shape == (2, 6, 8, 8, 8)
    assert isinstance(ResBlock3d(4, 4).shortcut, torch.nn.Identity)
    assert isinstance(ResBlock3d(4, 6).shortcut, PreActConv3d)
    assert ResBlock3d(4, 6, stride=2)(x).shape == (2, 6, 4, 4, 4)


def test_pixel_shuffle_order_and_round_trip():
    scale = 2
    x = torch.arange(2 * 3 * 8 * 2 * 3 * 1, dtype=torch.float32).reshape(2, 3 * 8, 2, 3, 1)
    shuffled = PixelShuffle3d(scale)(x)
    assert shuffled.shape == (2, 3, 4, 6, 2)
    # channel c·s³ + (i·s + j)·s + k goes to voxel (d·s + i, h·s + j, w·s + k): here c=1, i=1, j=0, k=1, d=1, h=2
    assert shuffled[0, 1, 3, 4, 1] == x[0, 8 + (1 * 2 + 0) * 2 + 1, 1, 2, 0]
    assert torch.equal(PixelUnshuffle3d(scale)(shuffled), x)
    one_channel = torch.randn(3, 1, 32, 48, 16)
    for s in (4, 8, 16):
        assert torch.equal(PixelShuffle3d(s)(PixelUnshuffle3d(s)(one_channel)), one_channel)


def test_adjoint_foreground_pool_equals_upsample_pool():
    torch.manual_seed(0)
    for low, high in (((2, 2, 2), (32, 32, 32)), ((4, 3, 3), (64, 48, 48)), ((8, 12, 4), (32, 48, 16))):
        features = torch.randn(2, 5, *low)
        masks = torch.rand(2, 3, *high)
        masks[:, 0] = (masks[:, 0] > 0.8).float()
        expected = foreground_pool(features, masks, "upsample")
        assert torch.allclose(foreground_pool(features, masks, "adjoint"), expected, atol=1e-5)
        upsampled = F.interpolate(features, size=high, mode="trilinear", align_corners=True)
        inner = torch.einsum("bchwd,bkhwd->bkc", upsampled, masks)
        adjoint_inner = torch.einsum("bchwd,bkhwd->bkc", features, trilinear_upsample_adjoint(masks, low))
        # sums of ~30k fp32 products: the tolerance scales with their size (AMD and Intel kernels round differently)
        assert torch.allclose(adjoint_inner, inner, rtol=1e-4, atol=1e-5 * float(inner.abs().max()))


def test_mask_merge_equals_convolution_of_concatenated_pairs():
    torch.manual_seed(0)
    merge = MaskMerge()
    shared, masks = torch.randn(2, 1, 8, 8, 8), _masks(2, 3, (8, 8, 8))
    pairs = torch.cat([shared.unsqueeze(1).expand(-1, 3, -1, -1, -1, -1), masks.unsqueeze(2)], 2).flatten(0, 1)
    expected = merge.conv(F.relu(F.instance_norm(pairs, eps=merge.eps)))
    assert torch.allclose(merge(shared, masks), expected, atol=1e-5)


# ---------------------------------------------------------------- shapes


@torch.no_grad()
def test_shapes_through_every_module(tiny_model):
    images, masks = _images(2), _masks(2, 3)
    features = tiny_model.encode_image(images)
    assert [tuple(f.shape) for f in features] == [(2, 128, 2, 2, 2), (2, 64, 4, 4, 4), (2, 32, 8, 8, 8),
                                                  (2, 16, 16, 16, 16), (2, 8, 32, 32, 32)]
    embedding = tiny_model.encode_task(images, masks)
    assert [tuple(t.shape) for t in embedding] == [(2, 3, TOKENS, c) for c in TINY_PRIOR_CHANNELS]
    fused, tokens = tiny_model.decoder.fusions[1](features[1], embedding[1])
    assert fused.shape == features[1].shape and tokens.shape == embedding[1].shape
    assert tiny_model.decoder.ups[0](features[0], features[1]).shape == (2, 64, 4, 4, 4)
    dense, posteriors = tiny_model.decoder(features, embedding)
    assert dense.shape == (2, 8, 32, 32, 32)
    assert [tuple(p.shape) for p in posteriors] == [(2, 3, c) for c in TINY_PRIOR_CHANNELS]
    assert tiny_model.head(dense, posteriors).shape == (2, 3, 32, 32, 32)
    assert tiny_model(images, images, masks).shape == (2, 3, 32, 32, 32)
    assert tiny_model.dense_features(images).shape == (2, 8, 32, 32, 32)
    assert tiny_model.dense_features(images, masks).shape == (2, 8, 32, 32, 32)


@torch.no_grad()
def test_standalone_modules():
    assert UpBlock(16, 8, 8, 2)(torch.randn(1, 16, 4, 4, 4), torch.randn(1, 8, 8, 8, 8)).shape == (1, 8, 8, 8, 8)
    fused, tokens = FusionStage(32, 1, 32, 4)(torch.randn(2, 32, 2, 3, 4), torch.randn(2, 5, 7, 32))
    assert fused.shape == (2, 32, 2, 3, 4) and tokens.shape == (2, 5, 7, 32)


@torch.no_grad()
def test_non_cubic_patch_and_larger_query():
    model = _tiny_model(input_size_zyx=[64, 48, 48])
    reference, masks = _images(1, (64, 48, 48)), _masks(1, 2, (64, 48, 48))
    embedding = model.encode_task(reference, masks)
    assert [tuple(t.shape) for t in embedding] == [(1, 2, TOKENS, c) for c in TINY_PRIOR_CHANNELS]
    assert model.segment(_images(1, (64, 48, 48)), embedding).shape == (1, 2, 64, 48, 48)
    assert model.segment(_images(1, (80, 64, 32)), embedding).shape == (1, 2, 80, 64, 32)
    # a smaller reference uses a slice of the positional maps
    assert model.encode_task(_images(1, (32, 48, 32)), _masks(1, 2, (32, 48, 32)))[2].shape == (1, 2, TOKENS, 32)


# ---------------------------------------------------------------- task semantics


@torch.no_grad()
def test_task_encoding_of_one_task_ignores_the_others(tiny_model):
    images, masks = _images(2), _masks(2, 4)
    alone = tiny_model.encode_task(images, masks[:, :1])
    together = tiny_model.encode_task(images, masks)
    for single, joint in zip(alone, together):
        assert torch.allclose(single[:, 0], joint[:, 0], atol=1e-5)


@torch.no_grad()
def test_decoder_is_equivariant_to_task_permutation(tiny_model):
    query, reference, masks = _images(2, seed=5), _images(2), _masks(2, 4)
    embedding = tiny_model.encode_task(reference, masks)
    logits = tiny_model.segment(query, embedding)
    permutation = [2, 0, 3, 1]
    permuted = tiny_model.segment(query, select_tasks(embedding, permutation))
    assert torch.allclose(permuted, logits[:, permutation], atol=1e-5)


@torch.no_grad()
def test_k_shot_averaging_and_task_ops(tiny_model):
    images, masks = _images(1), _masks(1, 2)
    one_shot = tiny_model.encode_task(images, masks)
    three_shot = average_task_embeddings([tiny_model.encode_task(images, masks) for _ in range(3)])
    for single, averaged in zip(one_shot, three_shot):
        assert torch.allclose(single, averaged, atol=1e-6)
    other = tiny_model.encode_task(_images(1, seed=7), masks)
    for a, b, mean in zip(one_shot, other, average_task_embeddings([one_shot, other])):
        assert torch.allclose(mean, (a + b) / 2)
    joined = concat_task_embeddings([one_shot, other])
    assert [t.shape[1] for t in joined] == [4, 4, 4]
    chunks = chunk_task_embedding(joined, 3)
    assert [[t.shape[1] for t in chunk] for chunk in chunks] == [[3, 3, 3], [1, 1, 1]]
    assert all(torch.equal(a, b) for a, b in zip(select_tasks(joined, [2, 3]), other))
    with pytest.raises(ValueError):
        chunk_task_embedding(joined, 0)


@torch.no_grad()
def test_single_reference_embedding_applies_to_every_query(tiny_model):
    embedding = tiny_model.encode_task(_images(1), _masks(1, 2))
    queries = _images(2, seed=9)
    batched = tiny_model.segment(queries, embedding)
    assert torch.allclose(batched[1:], tiny_model.segment(queries[1:], embedding), atol=1e-4)


@torch.no_grad()
def test_empty_mask_gives_zero_foreground_token_and_finite_output(tiny_model):
    images, masks = _images(1), _masks(1, 2)
    masks[:, 1] = 0.0
    features = tiny_model.encode_image(images)
    for stage, level in zip(tiny_model.task_encoder.stages, features):
        foreground = stage.foreground_tokens(level, masks)
        assert torch.count_nonzero(foreground[:, 1]) == 0 and torch.count_nonzero(foreground[:, 0]) > 0
    assert all(torch.isfinite(t).all() for t in tiny_model.encode_task(images, masks))
    assert torch.isfinite(tiny_model(images, images, masks)).all()


@torch.no_grad()
def test_adjoint_and_upsample_models_agree(tiny_model):
    upsample_model = _tiny_model(foreground_pool="upsample")
    upsample_model.load_state_dict(tiny_model.state_dict())
    images, masks = _images(1), _masks(1, 2)
    for a, b in zip(tiny_model.encode_task(images, masks), upsample_model.encode_task(images, masks)):
        assert torch.allclose(a, b, atol=1e-4)


# ---------------------------------------------------------------- errors


@torch.no_grad()
def test_clear_errors_for_bad_inputs(tiny_model):
    with pytest.raises(ValueError, match=r"\[1, 1, 32, 40, 32\]"):
        tiny_model.encode_image(torch.zeros(1, 1, 32, 40, 32))
    with pytest.raises(ValueError, match=r"\[1, 1, 16, 32, 32\]"):
        tiny_model.segment(torch.zeros(1, 1, 16, 32, 32), tiny_model.encode_task(_images(1), _masks(1, 1)))
    with pytest.raises(ValueError, match=r"\[48, 32, 32\].*\[32, 32, 32\]"):
        tiny_model.encode_task(_images(1, (48, 32, 32)), _masks(1, 1, (48, 32, 32)))
    with pytest.raises(ValueError, match="channels"):
        tiny_model.encode_image(torch.zeros(1, 2, 32, 32, 32))
    with pytest.raises(ValueError, match="reference_masks"):
        tiny_model.encode_task(_images(1), _masks(1, 1, (32, 32, 16)))
    embedding = tiny_model.encode_task(_images(2), _masks(2, 1))
    with pytest.raises(ValueError, match="task embedding"):
        tiny_model.segment(_images(3), embedding)


# ---------------------------------------------------------------- gradients


def test_backward_gives_finite_gradients_for_all_parameters():
    model = _tiny_model()
    masks = _masks(2, 3)
    masks[:, 2] = 1.0
    logits = model(_images(2, seed=3), _images(2), masks)
    F.binary_cross_entropy_with_logits(logits, _masks(2, 3, seed=4)).backward()
    missing = [name for name, p in model.named_parameters() if p.grad is None]
    assert not missing
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())
