"""The dependencies later stages rely on are really installed (CI installs them with .ci/install)."""
import importlib

import pytest


@pytest.mark.parametrize("module", ["torch", "torchvision", "sam2", "batchgenerators", "acvl_utils", "SimpleITK",
                                    "nibabel", "scipy", "skimage", "blosc2", "numpy"])
def test_dependency_imports(module):
    assert importlib.import_module(module).__name__ == module


def test_sam2_automatic_mask_generator_and_torchvision_ops_work():
    import torch
    from sam2.automatic_mask_generator import SAM2AutomaticMaskGenerator  # imports torchvision.ops
    from torchvision.ops import batched_nms

    boxes = torch.tensor([[0, 0, 10, 10], [1, 1, 10, 10], [20, 20, 30, 30]], dtype=torch.float32)
    keep = batched_nms(boxes, torch.tensor([0.9, 0.8, 0.7]), torch.zeros(3, dtype=torch.long), 0.5)
    assert keep.tolist() == [0, 2]
    assert SAM2AutomaticMaskGenerator.__name__ == "SAM2AutomaticMaskGenerator"


def test_console_scripts_are_declared():
    from importlib.metadata import entry_points
    names = {e.name for e in entry_points(group="console_scripts") if e.value.startswith(("mass_nn", "dataset_"))}
    assert {"mass_plan_and_preprocess", "mass_generate_masks", "mass_train", "mass_predict", "mass_evaluate",
            "mass_demo", "mass_convert_dataset"} <= names
