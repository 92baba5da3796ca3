"""Training-free in-context segmentation of a labelled dataset's test split: k seeded shot cases of the train
split are the references (each class cropped around its foreground, embeddings averaged over the shots that
contain it), every test case is segmented for all classes in one pass and scored in its raw geometry."""
from __future__ import annotations

from pathlib import Path

from mass_nn.datasets.labelled_data import resolve_labelled_dataset, select_shots
from mass_nn.evaluation.predict_and_score import predict_and_score
from mass_nn.inference.context_tasks import ContextReference, encode_context_tasks
from mass_nn.inference.model_loading import checkpoint_context, in_context_network
from mass_nn.inference.predictor import SegmentationPredictor
from mass_nn.inference.reference_calibration import calibrate_reference_thresholds
from mass_nn.inference.reference_encoding import encode_reference_labels
from mass_nn.io.atomic import read_json, write_json_atomic
from mass_nn.masks.case_loading import load_case_input
from mass_nn.model.pretrained import load_pretrained_checkpoint
from mass_nn.paths import MassPaths

# bumped when the read-out changes what a finished evaluation would score; 2: context tasks and overlap 0.75;
# 3: each structure's own claim scored too ("structures_alone")
READOUT_VERSION = 3


def finished_evaluation(out_folder: Path, context_tasks: int | None = None) -> dict | None:
    """The summary of a finished evaluation in `out_folder` made by this read-out with the `context_tasks` asked
    for (in_context_evaluation's argument), else None (to be redone)."""
    summary, shots = Path(out_folder) / "summary.json", Path(out_folder) / "shots.json"
    if not (summary.is_file() and shots.is_file()):
        return None
    recorded = read_json(shots)
    if recorded.get("readout_version") != READOUT_VERSION or recorded.get("context_tasks_asked") != context_tasks:
        return None
    return read_json(summary)


def in_context_evaluation(checkpoint: Path, dataset: str, paths: MassPaths, shots: int, seed: int,
                          out_folder: Path, plans_name: str = "MassPlans", configuration: str = "3d_cpu",
                          device: str = "cpu", hd95: bool = True, calibrate_threshold: bool = False,
                          context_tasks: int | None = None) -> dict:
    """Score k-shot in-context segmentation; writes out_folder/{shots.json, summary.json, summary.md,
    predictions/} and returns the summary. The shot selection is the one `mass_train FINETUNE -shots k --seed s`
    uses, so in-context and finetuned results of one (k, seed) share their training cases. With
    `calibrate_threshold` each class's threshold is read off its reference crops (reference_calibration.py)
    instead of 0.5; the thresholds are saved in shots.json. Each pass is filled with context tasks up to the
    pretraining task count, or to `context_tasks` (0: none; context_tasks.py)."""
    data = resolve_labelled_dataset(dataset, paths, plans_name, configuration)
    loaded = load_pretrained_checkpoint(checkpoint, data.source.plans, configuration, data.source.dataset_name)
    network = in_context_network(loaded, checkpoint).to(device)
    shot_cases = select_shots(data.labelled_cases("train"), shots, seed)
    references = data.preprocessed_pairs(shot_cases)
    present = data.classes_present(references)
    patch = network.config.input_size_zyx
    embedding = encode_reference_labels(network, references, list(present.values()), patch, device,
                                        names=list(present))
    context = checkpoint_context(loaded, patch, context_tasks)
    context_references = [ContextReference(image, seg, load_case_input(data.source.data_folder, case,
                                                                        data.source.plans, 0, with_label=False))
                          for case, (image, seg) in zip(shot_cases, references)]
    context_embedding = encode_context_tasks(network, context_references, len(present), context, patch, device)
    predictor = SegmentationPredictor(network, embedding, list(present.values()), data.source.plans, configuration,
                                      device, context_embedding=context_embedding)
    if calibrate_threshold:
        predictor.thresholds = calibrate_reference_thresholds(network, predictor.with_context(embedding), references,
                                                              list(present.values()), patch, device)
    write_json_atomic({"readout_version": READOUT_VERSION, "dataset": data.source.dataset_name,
                       "checkpoint": str(checkpoint), "shots": shots, "seed": seed, "training_cases": shot_cases,
                       "classes": data.classes,
                       "classes_without_reference": sorted(set(data.classes) - set(present)),
                       "thresholds": dict(zip(present, predictor.thresholds or [0.5] * len(present))),
                       "label_fusion": predictor.label_fusion, "overlap": predictor.overlap,
                       "context_tasks_asked": context_tasks,
                       "context_tasks": 0 if context_embedding is None else int(context_embedding[0].shape[1])},
                      Path(out_folder) / "shots.json")
    test_cases = data.raw_cases(data.labelled_cases("test"))
    return predict_and_score(predictor, test_cases, data.classes, out_folder, hd95)
