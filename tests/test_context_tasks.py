"""Context tasks: an in-context pass filled up to the pretraining task count with generator masks of the
reference (away from its labels) and the everything task; their outputs are discarded."""
from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from mass_nn.boxes import Box
from mass_nn.errors import MassError
from mass_nn.inference.context_tasks import (NO_CONTEXT, ContextReference, ContextTasks, context_tasks_of_run,
                                             eligible_context_masks, encode_context_tasks, everything_crops,
                                             split_count)
from mass_nn.inference.model_loading import checkpoint_context
from mass_nn.inference.predictor import IN_CONTEXT_OVERLAP, InferenceSettings, SegmentationPredictor
from mass_nn.inference.task_embedding_file import load_task_embedding, save_task_embedding
from mass_nn.masks.proposal import CaseInput, MaskProposal
from mass_nn.model.checkpoint import Checkpoint, CheckpointMeta
from mass_nn.networks.in_context.task_ops import concat_task_embeddings

PATCH = (32, 32, 32)


def blocks_reference(seed: int = 0) -> ContextReference:
    """A 40³ volume of eight intensity blocks with mild noise; label 1 is one block, label 2 another."""
    rng = np.random.default_rng(seed)
    levels = rng.permutation(8) * 30.0 + 20.0
    volume = np.zeros((40, 40, 40), np.float32)
    for index, (z, y, x) in enumerate(np.ndindex(2, 2, 2)):
        volume[z * 20:(z + 1) * 20, y * 20:(y + 1) * 20, x * 20:(x + 1) * 20] = levels[index]
    volume += rng.normal(0, 2, volume.shape).astype(np.float32)
    labels = np.zeros(volume.shape, np.int16)
    labels[:20, :20, :20] = 1
    labels[20:, 20:, 20:] = 2
    windowed = np.repeat(np.clip(volume * (255 / 250), 0, 255).astype(np.uint8)[None], 3, axis=0)
    image = ((volume - volume.mean()) / volume.std())[None].astype(np.float32)
    return ContextReference(image, labels, CaseInput("blocks", windowed, (4.0, 4.0, 4.0), 0, 3))


def test_context_of_a_run_follows_its_pretraining_settings():
    run = {"extra": {"num_tasks": 13, "everything_task": True, "min_mask_fraction": 0.01}}
    context = context_tasks_of_run(run, (48, 48, 48))
    assert context == ContextTasks(total_tasks=13, everything_task=True, min_voxels=1106)  # ceil(0.01 * 48³)
    assert context.count(4) == 9 and context.count(13) == 0 and context.count(20) == 0
    assert context_tasks_of_run({"extra": {}}, (48, 48, 48)) == NO_CONTEXT
    assert context_tasks_of_run({}, (48, 48, 48)).count(1) == 0
    no_everything = context_tasks_of_run({"extra": {"num_tasks": 8, "everything_task": False}}, PATCH)
    assert not no_everything.everything_task and no_everything.min_voxels == 1


def test_checkpoint_context_overrides_the_count_and_rejects_negative_counts():
    meta = CheckpointMeta("MASSPretrainer", "InContextSegmenter", {}, {}, "3d", "encoder.",
                          0, 0, run_config={"extra": {"num_tasks": 13, "everything_task": False}})
    checkpoint = Checkpoint(meta, {})
    assert checkpoint_context(checkpoint, PATCH, None).total_tasks == 13
    assert checkpoint_context(checkpoint, PATCH, 6) == ContextTasks(6, everything_task=False, min_voxels=1)
    with pytest.raises(MassError, match="--context-tasks -1"):
        checkpoint_context(checkpoint, PATCH, -1)


def test_eligible_masks_are_large_enough_and_away_from_the_labels():
    labels = np.zeros((20, 20, 20), np.int16)
    labels[:10] = 3

    def proposal(z0, z1, size=4):
        crop = np.ones((z1 - z0, size, size), bool)
        return MaskProposal(Box(((z0, z1), (0, size), (0, size))), crop, "test")

    away, touching, inside, small = proposal(12, 20), proposal(9, 17), proposal(2, 8), proposal(15, 17, 2)
    # touching: 1 of its 8 slices lies in the label (12.5 % > 10 %); inside: all of it
    kept = eligible_context_masks([away, touching, inside, small], labels, min_voxels=20)
    assert kept == [away]
    assert eligible_context_masks([touching], labels, min_voxels=1) == []
    assert eligible_context_masks([proposal(11, 20)], labels, 1) != []  # 0 of its slices in the label


def test_split_count_spreads_the_remainder_over_the_first_parts():
    assert split_count(9, 1) == [9]
    assert split_count(9, 2) == [5, 4]
    assert split_count(2, 3) == [1, 1, 0]
    assert sum(split_count(11, 4)) == 11


def test_everything_crop_is_one_inside_the_volume_and_zero_in_padding():
    image = np.ones((1, 20, 40, 40), np.float32)
    crop, mask = everything_crops(image, PATCH)
    assert crop.shape == (1, *PATCH) and mask.shape == PATCH
    assert mask.sum() == 20 * 32 * 32  # the 20 slices of the volume, padded to 32
    np.testing.assert_array_equal(mask, crop[0])


def test_context_embedding_has_the_missing_tasks_and_is_seeded(tiny_network):
    reference = blocks_reference()
    context = ContextTasks(total_tasks=6, everything_task=True, min_voxels=100, seed=3)
    embedding = encode_context_tasks(tiny_network, [reference], 2, context, PATCH)
    channels = tiny_network.config.prior_channels()
    assert [list(t.shape) for t in embedding] == [[1, 4, 11, c] for c in channels]
    again = encode_context_tasks(tiny_network, [reference], 2, context, PATCH)
    for a, b in zip(embedding, again):
        torch.testing.assert_close(a, b)
    # the first context task is the everything task of the centred window
    image_crop, mask_crop = everything_crops(reference.image, PATCH)
    with torch.no_grad():
        everything = tiny_network.encode_task(torch.from_numpy(image_crop)[None],
                                              torch.from_numpy(mask_crop)[None, None])
    for stage, expected in zip(embedding, everything):
        torch.testing.assert_close(stage[:, :1], expected)
    assert encode_context_tasks(tiny_network, [reference], 6, context, PATCH) is None
    assert encode_context_tasks(tiny_network, [reference], 2, NO_CONTEXT, PATCH) is None


def test_a_reference_without_eligible_masks_gives_only_the_everything_task(tiny_network):
    reference = blocks_reference()
    reference.labels[:] = 1  # every generator mask overlaps the label
    context = ContextTasks(total_tasks=13, everything_task=True, min_voxels=1)
    embedding = encode_context_tasks(tiny_network, [reference], 1, context, PATCH)
    assert embedding[0].shape[1] == 1
    assert encode_context_tasks(tiny_network, [reference], 1, ContextTasks(13, False, 1), PATCH) is None


def test_predictor_discards_context_outputs_and_keeps_them_in_every_chunk(tiny_network, tmp_path):
    torch.manual_seed(1)
    channels = tiny_network.config.prior_channels()
    labels = [torch.randn(1, 2, 11, c) for c in channels]
    context = [torch.randn(1, 3, 11, c) for c in channels]
    plans = SimpleNamespace(configuration=lambda name: SimpleNamespace(patch_size_zyx=list(PATCH)))
    window = torch.randn(1, 1, *PATCH)
    predictor = SegmentationPredictor(tiny_network, labels, [1, 2], plans, "3d", context_embedding=context)
    with torch.no_grad():
        expected = tiny_network.segment(window, concat_task_embeddings([labels, context]))[:, :2]
        torch.testing.assert_close(predictor._logits(window), expected)
        without = SegmentationPredictor(tiny_network, labels, [1, 2], plans, "3d")._logits(window)
    assert not torch.allclose(without, expected)  # the context changes what the labels' tokens meet
    chunked = SegmentationPredictor(tiny_network, labels, [1, 2], plans, "3d",
                                    settings=InferenceSettings(max_labels_per_forward=1), context_embedding=context)
    with torch.no_grad():
        second = tiny_network.segment(window, concat_task_embeddings([[t[:, 1:] for t in labels], context]))[:, :1]
        torch.testing.assert_close(chunked._logits(window)[:, 1:], second)
    assert predictor.overlap == IN_CONTEXT_OVERLAP
    assert SegmentationPredictor(tiny_network, labels, [1, 2], plans, "3d",
                                 settings=InferenceSettings(overlap=0.25)).overlap == 0.25
    assert SegmentationPredictor(tiny_network, None, [1, 2], plans, "3d").overlap == 0.5
    with pytest.raises(ValueError, match="context tasks need"):
        SegmentationPredictor(tiny_network, None, [1, 2], plans, "3d", context_embedding=context)
    # a saved encoding keeps its context tasks apart from the labels'
    save_task_embedding(tmp_path / "e.pt", labels, ["a", "b"], [1, 2], {"checkpoint": "x"}, context)
    loaded, meta, loaded_context = load_task_embedding(tmp_path / "e.pt")
    assert meta["context_tasks"] == 3 and [t.shape[1] for t in loaded] == [2] * len(channels)
    for a, b in zip(loaded_context, context):
        torch.testing.assert_close(a, b)
    save_task_embedding(tmp_path / "plain.pt", labels, ["a", "b"], [1, 2], {})
    assert load_task_embedding(tmp_path / "plain.pt")[2] is None


def test_finished_evaluations_of_an_older_read_out_are_redone(tmp_path):
    from mass_nn.evaluation.in_context_protocol import READOUT_VERSION, finished_evaluation
    from mass_nn.io.atomic import write_json_atomic
    assert finished_evaluation(tmp_path) is None
    write_json_atomic({"mean_dice": 0.4}, tmp_path / "summary.json")
    write_json_atomic({"training_cases": ["a"]}, tmp_path / "shots.json")  # written before context tasks
    assert finished_evaluation(tmp_path) is None
    write_json_atomic({"training_cases": ["a"], "readout_version": READOUT_VERSION}, tmp_path / "shots.json")
    assert finished_evaluation(tmp_path) == {"mean_dice": 0.4}
    assert finished_evaluation(tmp_path, context_tasks=0) is None  # asked for another context
    write_json_atomic({"readout_version": READOUT_VERSION, "context_tasks_asked": 0}, tmp_path / "shots.json")
    assert finished_evaluation(tmp_path, context_tasks=0) == {"mean_dice": 0.4}
    assert finished_evaluation(tmp_path) is None
    (tmp_path / "summary.json").unlink()  # shots written, summary not yet: unfinished
    assert finished_evaluation(tmp_path) is None
