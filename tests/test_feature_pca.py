"""PCA colouring of dense features (the supplement's Figure 7)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from mass_nn.evaluation.feature_pca import dense_feature_rgb, pca_rgb, write_feature_figure
from mass_nn.networks.in_context.config import InContextNetworkConfig
from mass_nn.networks.in_context.in_context_model import InContextSegmenter


def test_regions_with_different_features_get_different_colours():
    rng = np.random.default_rng(0)
    # four feature prototypes span three principal directions, so all three colour channels carry structure
    regions = np.zeros((8, 12, 24), dtype=int)
    for r in range(1, 4):
        regions[:, :, 6 * r:] = r
    prototypes = rng.normal(size=(4, 16)) * 3
    features = prototypes[regions].transpose(3, 0, 1, 2) + rng.normal(scale=0.05, size=(16, 8, 12, 24))
    rgb = pca_rgb(features)
    assert rgb.shape == (8, 12, 24, 3) and rgb.min() >= 0 and rgb.max() <= 1
    means = [rgb[regions == r].mean(axis=0) for r in range(4)]
    spread = max(rgb[regions == r].std(axis=0).max() for r in range(4))
    gaps = [np.abs(means[a] - means[b]).max() for a in range(4) for b in range(a + 1, 4)]
    assert min(gaps) > 10 * spread


def test_mask_restricts_the_fit_and_results_are_deterministic():
    features = torch.randn(8, 4, 6, 6, generator=torch.Generator().manual_seed(1))
    mask = np.zeros((4, 6, 6), dtype=bool)
    mask[:2] = True
    first, second = pca_rgb(features, mask), pca_rgb(features.clone(), mask)
    np.testing.assert_array_equal(first, second)
    assert not np.allclose(first, pca_rgb(features))


def test_dense_feature_colours_of_a_network_and_the_figure(tmp_path):
    torch.manual_seed(0)
    network = InContextSegmenter(InContextNetworkConfig.tiny())
    image = np.random.default_rng(2).normal(size=(1, 32, 32, 32)).astype(np.float32)
    rgb = dense_feature_rgb(network, image)
    assert rgb.shape == (32, 32, 32, 3)
    write_feature_figure(image, rgb, tmp_path / "pca.png", "tiny")
    assert (tmp_path / "pca.png").stat().st_size > 1000


def test_feature_colours_fitted_inside_a_mask_and_a_chosen_slice(tmp_path):
    torch.manual_seed(0)
    network = InContextSegmenter(InContextNetworkConfig.tiny())
    image = np.full((1, 32, 32, 32), -3.0, dtype=np.float32)  # a thin slab padded with background
    image[:, :6] = np.random.default_rng(3).normal(size=(1, 6, 32, 32))
    inside = np.zeros((32, 32, 32), dtype=bool)
    inside[:6] = True
    rgb = dense_feature_rgb(network, image, inside)
    assert not np.allclose(rgb, dense_feature_rgb(network, image))
    write_feature_figure(image, rgb, tmp_path / "slab.png", slice_index=3)
    assert (tmp_path / "slab.png").stat().st_size > 1000
    with pytest.raises(ValueError, match="slice_index 32 is outside the image's 32 axial slices"):
        write_feature_figure(image, rgb, tmp_path / "bad.png", slice_index=32)
