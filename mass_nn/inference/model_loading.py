"""Building a SegmentationPredictor from what a user has: a finetuned run folder (fixed classes), or a
pretrained in-context checkpoint plus reference images and masks (or a saved reference encoding)."""
from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from mass_nn.errors import MassError
from mass_nn.inference.context_tasks import ContextReference, ContextTasks, context_tasks_of_run, encode_context_tasks
from mass_nn.inference.predictor import InferenceSettings, SegmentationPredictor
from mass_nn.inference.reference_calibration import calibrate_reference_thresholds
from mass_nn.inference.reference_encoding import encode_reference_labels
from mass_nn.inference.task_embedding_file import load_task_embedding, save_task_embedding
from mass_nn.io.artifact_layout import checkpoint_path
from mass_nn.io.dataset_json import CaseFiles
from mass_nn.io.image_io import read_geometry
from mass_nn.masks.case_loading import case_input_from_arrays
from mass_nn.model.checkpoint import Checkpoint, load_checkpoint, load_network, network_of
from mass_nn.networks.in_context.fixed_class_segmenter import FixedClassSegmenter
from mass_nn.networks.in_context.in_context_model import InContextSegmenter
from mass_nn.planning.plans import Plans
from mass_nn.preprocessing.preprocessor import PreprocessedCase, preprocess_in_memory

logger = logging.getLogger(__name__)


def find_run_checkpoint(results_folder: str | Path, kind: str = "best") -> Path:
    """The checkpoint of a run folder: `kind` (best / final / latest), falling back best -> final -> latest."""
    folder = Path(results_folder)
    if not folder.is_dir():
        raise MassError(f"{folder}: run folder not found; pass the folder mass_train FINETUNE printed")
    order = [kind] + [k for k in ("best", "final", "latest") if k != kind]
    for candidate in order:
        path = checkpoint_path(folder, candidate)
        if path.is_file():
            if candidate != kind:
                logger.warning("%s: no checkpoint_%s.pt, using %s", folder, kind, path.name)
            return path
    raise MassError(f"{folder}: no checkpoint_{{best,final,latest}}.pt; train the model first (mass_train FINETUNE)")


def predictor_from_run(results_folder: str | Path, checkpoint_kind: str = "best", device: str = "cpu",
                       settings: InferenceSettings | None = None) -> tuple[SegmentationPredictor, list[str]]:
    """(predictor for the run's fixed classes, class names) of a finetuned run folder."""
    return predictor_from_checkpoint(find_run_checkpoint(results_folder, checkpoint_kind), device, settings)


def predictor_from_checkpoint(path: str | Path, device: str = "cpu", settings: InferenceSettings | None = None
                              ) -> tuple[SegmentationPredictor, list[str]]:
    """(predictor for the fixed classes, class names) of a finetuned checkpoint file: any network whose
    configuration names its classes (`class_names`, `label_values`) and whose forward gives their logits."""
    network, checkpoint = load_network(path, map_location=device)
    config = network.config
    if not hasattr(config, "label_values"):
        raise MassError(f"{path}: holds a {checkpoint.meta.network_class}, not a finetuned fixed-class model; for a "
                        f"pretrained in-context checkpoint give --checkpoint with --reference-image/--reference-mask")
    predictor = SegmentationPredictor(network, None, list(config.label_values), Plans.from_dict(checkpoint.meta.plans),
                                      checkpoint.meta.configuration, device, settings)
    return predictor, list(config.class_names)


def load_in_context_checkpoint(path: str | Path, device: str = "cpu") -> tuple[InContextSegmenter, Plans, str]:
    """(in-context network, its plans, configuration) of a pretrained checkpoint (EMA weights when saved)."""
    checkpoint = load_checkpoint(path, map_location=device)
    return in_context_network(checkpoint, path), Plans.from_dict(checkpoint.meta.plans), checkpoint.meta.configuration


def in_context_network(checkpoint: Checkpoint, path: str | Path) -> InContextSegmenter:
    """The in-context network of a loaded checkpoint (read from `path`), EMA weights when saved; a network that
    cannot segment from references raises MassError naming the file."""
    network = network_of(checkpoint)
    if isinstance(network, FixedClassSegmenter):
        network = network.segmenter
    if not isinstance(network, InContextSegmenter):
        raise MassError(f"{path}: holds a {checkpoint.meta.network_class}, which cannot segment from references; "
                        f"use a MASS checkpoint (MASSPretrainer) or a finetuned run with -m")
    return network


def read_reference(image_path: Path, mask_path: Path, plans: Plans, configuration: str,
                   case_id: str) -> PreprocessedCase:
    """A raw single-channel reference image and its label mask, preprocessed like a query (data (1, z, y, x),
    seg (z, y, x), properties); a mask on another grid or an empty mask raises MassError."""
    image_path, mask_path = Path(image_path), Path(mask_path)
    differences = read_geometry(image_path).differences(read_geometry(mask_path))
    if differences:
        raise MassError(f"reference mask {mask_path} does not match its image {image_path}: "
                        f"{'; '.join(differences)}; give the mask drawn on that image (same grid)")
    preprocessed = preprocess_in_memory(CaseFiles(case_id, (image_path,), mask_path), plans, configuration)
    if not preprocessed.properties.label_voxel_counts:
        raise MassError(f"reference mask {mask_path} is empty (no voxel > 0 inside the image's foreground); give a "
                        f"mask that contains the structure to segment")
    return preprocessed


def checkpoint_context(checkpoint: Checkpoint, patch_zyx, context_tasks: int | None) -> ContextTasks:
    """The context tasks of a pass: those of the checkpoint's pretraining run, with `context_tasks` (tasks per
    pass in all; 0: none) replacing its task count when given."""
    context = context_tasks_of_run(checkpoint.meta.run_config, patch_zyx)
    if context_tasks is None:
        return context
    if context_tasks < 0:
        raise MassError(f"--context-tasks {context_tasks}: give the tasks per pass (labels included), or 0 for none")
    return replace(context, total_tasks=context_tasks)


def predictor_from_references(checkpoint: str | Path, reference_images: list[Path], reference_masks: list[Path],
                              device: str = "cpu", settings: InferenceSettings | None = None,
                              label_values: list[int] | None = None, save_embedding: Path | None = None,
                              calibrate_threshold: bool = False, context_tasks: int | None = None
                              ) -> tuple[SegmentationPredictor, list[str]]:
    """In-context predictor: every label value found in the reference masks (or `label_values`) is one task,
    its embedding averaged over the references that contain it, each pass filled with context tasks up to the
    pretraining task count (or `context_tasks`; context_tasks.py). With `calibrate_threshold` each label's
    threshold is read off its references (reference_calibration.py). Optionally saves the encoding (context and
    thresholds included)."""
    if len(reference_images) != len(reference_masks) or not reference_images:
        raise MassError(f"give each --reference-image one --reference-mask (got {len(reference_images)} images, "
                        f"{len(reference_masks)} masks)")
    loaded = load_checkpoint(checkpoint, map_location=device)
    network = in_context_network(loaded, checkpoint)
    plans, configuration = Plans.from_dict(loaded.meta.plans), loaded.meta.configuration
    if len(plans.channels) != 1:
        raise MassError(f"{checkpoint}: the model takes {len(plans.channels)} channels; in-context references with "
                        f"several channels are not supported by mass_predict yet")
    cases = [read_reference(image, mask, plans, configuration, f"reference_{i}")
             for i, (image, mask) in enumerate(zip(reference_images, reference_masks))]
    references = [(case.data, case.seg) for case in cases]
    found = sorted({int(v) for _, seg in references for v in np.unique(seg) if v > 0})
    values = label_values or found
    patch = plans.configuration(configuration).patch_size_zyx
    embedding = encode_reference_labels(network, references, values, patch, device)
    context = checkpoint_context(loaded, patch, context_tasks)
    context_references = [ContextReference(case.data, case.seg, case_input_from_arrays(
        case.properties.case_id, case.data, case.properties, plans, 0)) for case in cases]
    context_embedding = encode_context_tasks(network, context_references, len(values), context, patch, device)
    names = [str(v) for v in values]
    predictor = SegmentationPredictor(network, embedding, values, plans, configuration, device, settings,
                                      context_embedding)
    if calibrate_threshold:
        predictor.thresholds = calibrate_reference_thresholds(network, predictor.with_context(embedding), references,
                                                              values, patch, device)
        logger.info("reference-calibrated thresholds: %s",
                    ", ".join(f"{n} {t:.2f}" for n, t in zip(names, predictor.thresholds)))
    if save_embedding is not None:
        save_task_embedding(save_embedding, embedding, names, values,
                            {"checkpoint": str(checkpoint), "references": [str(p) for p in reference_images],
                             "thresholds": predictor.thresholds}, context_embedding)
    return predictor, names


def predictor_from_embedding(checkpoint: str | Path, embedding_path: Path, device: str = "cpu",
                             settings: InferenceSettings | None = None, calibrate_threshold: bool = False
                             ) -> tuple[SegmentationPredictor, list[str]]:
    """In-context predictor from a saved reference encoding (mass_predict --save-embedding); with
    `calibrate_threshold` the thresholds calibrated when it was saved."""
    network, plans, configuration = load_in_context_checkpoint(checkpoint, device)
    embedding, meta, context_embedding = load_task_embedding(embedding_path)
    expected = network.config.prior_channels()
    if [int(t.shape[-1]) for t in embedding] != expected:
        raise MassError(f"{embedding_path}: encoded with another network (channels "
                        f"{[int(t.shape[-1]) for t in embedding]}, this checkpoint has {expected})")
    predictor = SegmentationPredictor(network, [t.to(torch.float32) for t in embedding], meta["label_values"],
                                      plans, configuration, device, settings,
                                      None if context_embedding is None else [t.to(torch.float32)
                                                                              for t in context_embedding])
    if calibrate_threshold:
        if not meta.get("thresholds"):
            raise MassError(f"{embedding_path}: saved without calibrated thresholds; save it again with "
                            f"--calibrated-threshold, or give the references instead of --embedding")
        predictor.thresholds = [float(t) for t in meta["thresholds"]]
    return predictor, list(meta["label_names"])
