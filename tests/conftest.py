"""Shared test helpers: tiny synthetic raw datasets and the location of ../shared/data."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage

from mass_nn.io.dataset_json import DatasetJson, save_dataset_json
from mass_nn.io.image_io import ImageGeometry, write_image


def shared_data_dir() -> Path:
    """../shared/data next to the repository (or $MASS_SHARED_DATA)."""
    return Path(os.environ.get("MASS_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))


requires_shared_data = pytest.mark.skipif(
    not shared_data_dir().is_dir(),
    reason="real data not found: ../shared/data (or $MASS_SHARED_DATA) is absent in a plain clone")


def smooth_volume(shape_zyx, seed: int, low: float = -200.0, high: float = 300.0) -> np.ndarray:
    """A smooth random float32 volume in [low, high] (interpolation-friendly)."""
    rng = np.random.default_rng(seed)
    noise = ndimage.gaussian_filter(rng.standard_normal(shape_zyx), sigma=3)
    noise = (noise - noise.min()) / (np.ptp(noise) + 1e-8)
    return (low + (high - low) * noise).astype(np.float32)


def write_case(dataset_dir: Path, case_id: str, channels: list[np.ndarray], geometry: ImageGeometry,
               label: np.ndarray | None = None, split: str = "Tr") -> None:
    for c, volume in enumerate(channels):
        write_image(volume, geometry, dataset_dir / f"images{split}" / f"{case_id}_{c:04d}.nii.gz")
    if label is not None:
        write_image(label.astype(np.uint8), geometry, dataset_dir / f"labels{split}" / f"{case_id}.nii.gz")


def make_raw_dataset(raw_root: Path, dataset_id: int = 900, name: str = "Tiny", num_cases: int = 3,
                     channel_names=("CT",), shape_zyx=(12, 20, 18), spacing_xyz=(1.2, 1.2, 3.0),
                     with_labels: bool = True, direction=(1, 0, 0, 0, 1, 0, 0, 0, 1)) -> Path:
    """A small raw dataset with a body-like CT region (air outside) and a box label per case."""
    dataset_dir = raw_root / f"Dataset{dataset_id:03d}_{name}"
    for i in range(num_cases):
        geometry = ImageGeometry(spacing_xyz=spacing_xyz, origin_xyz=(10.0 * i, -5.0, 3.0),
                                 direction=tuple(float(d) for d in direction), size_xyz=tuple(shape_zyx[::-1]))
        channels = []
        for c, channel_name in enumerate(channel_names):
            volume = smooth_volume(shape_zyx, seed=100 * i + c)
            if channel_name == "CT":
                volume[:, :2, :] = -1000.0  # air rows outside the body
            else:
                volume = volume - volume.min() + 1.0
                volume[:, :2, :] = 0.0
            channels.append(volume)
        label = np.zeros(shape_zyx, np.uint8)
        label[3:8, 6:12, 5:11] = 1
        write_case(dataset_dir, f"case_{i:03d}", channels, geometry, label if with_labels else None)
    dataset_json = DatasetJson(channel_names={str(c): n for c, n in enumerate(channel_names)}, num_training=num_cases,
                               file_ending=".nii.gz", labels={"background": 0, "box": 1} if with_labels else None)
    save_dataset_json(dataset_json, dataset_dir)
    return dataset_dir


@pytest.fixture(params=["compiled", "torch"])
def stencil_path(request, monkeypatch):
    """Run a test once on the compiled 3×3×3 stencil kernels and once on the torch path they replace."""
    from mass_nn.networks import native_stencils
    if request.param == "torch":
        monkeypatch.setattr(native_stencils, "usable_for", lambda maps: False)
    elif native_stencils.stencil_library() is None:
        pytest.skip("the compiled stencil kernels could not be built here (no C++ compiler?); the torch path is "
                    "tested")
    return request.param


@pytest.fixture
def mass_roots(tmp_path):
    """Separate raw/preprocessed/results roots inside tmp_path."""
    from mass_nn.paths import MassPaths
    return MassPaths(raw=tmp_path / "raw", preprocessed=tmp_path / "preprocessed", results=tmp_path / "results")


@pytest.fixture(scope="module")
def tiny_network():
    """The tiny in-context network (32³ input) with seeded random weights, in eval mode."""
    import torch
    from mass_nn.networks.in_context.config import InContextNetworkConfig
    from mass_nn.networks.in_context.in_context_model import InContextSegmenter
    torch.manual_seed(0)
    return InContextSegmenter(InContextNetworkConfig.tiny()).eval()


@pytest.fixture(scope="session")
def phantom_with_masks(tmp_path_factory):
    """A 6-case phantom, preprocessed (3d_cpu) with weight-free masks: what pretraining reads. Shared by the
    session: tests must not write into its raw or preprocessed folders (use `pretraining_roots`)."""
    from dataset_conversion.phantom import write_phantom_dataset
    from mass_nn.masks.generate import MaskGenerationOptions, generate_masks
    from mass_nn.paths import MassPaths
    from mass_nn.preprocessing.plan_and_preprocess import PlanAndPreprocessOptions, plan_and_preprocess
    root = tmp_path_factory.mktemp("phantom_masks")
    paths = MassPaths(raw=root / "raw", preprocessed=root / "pre", results=root / "res")
    write_phantom_dataset(paths.raw, 990, num_cases=6, seed=3)
    plan_and_preprocess(990, paths, PlanAndPreprocessOptions(preset="cpu_only", num_processes=1, progress=False))
    generate_masks(990, paths, MaskGenerationOptions(generator="supervoxel", configuration="3d_cpu",
                                                     num_processes=1, progress=False))
    return paths


@pytest.fixture
def pretraining_roots(phantom_with_masks, tmp_path):
    """The shared phantom with masks, and a fresh results root for this test."""
    from mass_nn.paths import MassPaths
    return MassPaths(raw=phantom_with_masks.raw, preprocessed=phantom_with_masks.preprocessed,
                     results=tmp_path / "results")


def single_folder(parent: Path, pattern: str) -> Path:
    """The one folder under `parent` matching the glob `pattern` (run folders of pretrained runs carry the
    checkpoint's identity: `...__pretrained-<id>_1shot_seed0`)."""
    matches = sorted(p for p in Path(parent).glob(pattern) if p.is_dir())
    assert len(matches) == 1, f"{pattern}: {[m.name for m in matches]}"
    return matches[0]
