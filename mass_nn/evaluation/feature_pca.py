"""Seeing what a network learnt: its dense decoder features reduced to 3 principal components and shown as RGB
(the MASS supplement's Figure 7). Voxels with similar features get similar colours, so anatomy the network
separates shows up as coloured regions without any labels."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from mass_nn.inference.model_loading import load_in_context_checkpoint
from mass_nn.io.figures import pyplot, save_figure
from mass_nn.preprocessing.blosc2_storage import load_array
from mass_nn.preprocessing.crop_pad import crop_or_pad


def pca_rgb(features: torch.Tensor | np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
    """Features [C, D, H, W] -> colours [D, H, W, 3] in [0, 1]: the first three principal components (fitted on the
    voxels of `mask`, all voxels when None), each scaled by its 1st-99th percentile range over those voxels."""
    features = torch.as_tensor(features, dtype=torch.float32)
    channels, shape = features.shape[0], features.shape[1:]
    flat = features.reshape(channels, -1).T  # [N, C]
    selected = None if mask is None else torch.as_tensor(np.asarray(mask).reshape(-1), dtype=torch.bool)
    chosen = flat if selected is None else flat[selected]
    mean = chosen.mean(dim=0, keepdim=True)
    # principal axes from the SVD of the centred samples; a sign fixed per axis keeps colours stable across runs
    _, _, vh = torch.linalg.svd(chosen - mean, full_matrices=False)
    axes = vh[:3]
    axes = axes * torch.sign(axes[:, axes.abs().argmax(dim=1)].diagonal())[:, None]
    projected = (flat - mean) @ axes.T  # [N, <=3]
    if projected.shape[1] < 3:
        projected = torch.cat([projected, projected.new_zeros(projected.shape[0], 3 - projected.shape[1])], dim=1)
    reference = projected if selected is None else projected[selected]
    low = torch.quantile(reference, 0.01, dim=0)
    high = torch.quantile(reference, 0.99, dim=0)
    rgb = ((projected - low) / (high - low).clamp(min=1e-8)).clamp(0, 1)
    return rgb.reshape(*shape, 3).numpy()


@torch.no_grad()
def dense_feature_rgb(network, image: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
    """Colours [D, H, W, 3] of an in-context network's last decoder features of `image` (c, D, H, W; sides
    divisible by 16, at most the network's input size), decoded under the whole-view task; the components are
    fitted on the voxels of `mask` [D, H, W] (e.g. the image without its padding), all voxels when None."""
    network.eval()
    features = network.dense_features(torch.as_tensor(image, dtype=torch.float32)[None])[0]
    return pca_rgb(features, mask)


def write_feature_figure(image: np.ndarray, rgb: np.ndarray, path: Path, title: str = "",
                         slice_index: int | None = None) -> None:
    """A PNG with axial slice `slice_index` (default: the middle one) of `image` (c, D, H, W; channel 0 shown)
    next to its feature colours."""
    plt = pyplot()
    index = image.shape[1] // 2 if slice_index is None else slice_index
    if not 0 <= index < image.shape[1]:
        raise ValueError(f"slice_index {index} is outside the image's {image.shape[1]} axial slices")
    figure, axes = plt.subplots(1, 2, figsize=(6.4, 3.4))
    axes[0].imshow(image[0, index], cmap="gray", origin="lower")
    axes[0].set_title("image", fontsize=9)
    axes[1].imshow(rgb[index], origin="lower")
    axes[1].set_title("decoder features, PCA -> RGB", fontsize=9)
    for axis in axes:
        axis.axis("off")
    if title:
        figure.suptitle(title, fontsize=10)
    save_figure(figure, path, dpi=110)


def write_case_feature_figure(checkpoint: Path, image_path: Path, path: Path, title: str) -> Path:
    """The feature figure of an in-context checkpoint on the centre patch of one preprocessed case (`.b2nd`);
    the components are fitted on the case's voxels, and a case smaller than the patch is padded with its
    background."""
    network, plans, configuration = load_in_context_checkpoint(checkpoint)
    edge = plans.configuration(configuration).patch_size_zyx
    image = load_array(image_path).astype(np.float32)
    starts = [max(0, (s - e) // 2) for s, e in zip(image.shape[1:], edge)]  # centred, or from 0 when smaller
    window = crop_or_pad(image, starts, edge, pad_value=float(image.min()))
    extent = [min(s - start, e) for s, start, e in zip(image.shape[1:], starts, edge)]
    inside = np.zeros(edge, dtype=bool)
    inside[:extent[0], :extent[1], :extent[2]] = True
    rgb = dense_feature_rgb(network, window, inside)
    write_feature_figure(window, rgb, path, title, slice_index=extent[0] // 2)
    return path
