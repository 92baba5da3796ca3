"""Inference speed of in-context segmentation (step 4): reference encoding, query segmentation with cached
references, and the whole mass_predict path per raw volume.

For each dataset (the phantom, and the real CT tumour dataset of ../shared/data when present), with a MASS
checkpoint at the 3d_cpu configuration (a 2-step pretraining: speed does not depend on the weights), in the same
run:
  - encoding the references: one train case, every class, each cropped around its label (seconds per class);
  - segmenting a preprocessed query by sliding window under the cached embedding (seconds per query);
  - the reference: re-encoding the references for every query, as a method without cached task embeddings
    would; the ratio (encode + segment) / segment is what caching saves per query;
  - the whole `mass_predict` path on raw test volumes: preprocess + sliding window + export to raw geometry.

Usage: python benchmarks/inference_speed.py [--shared ../shared/data] [--workdir DIR] [--no-write] [--repeats N]
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.measure import machine_description, replace_section  # noqa: E402
from benchmarks.pretraining_workspace import ensure_phantom, ensure_shared, preprocess_and_generate_masks  # noqa: E402
from benchmarks.step_cost import median_seconds  # noqa: E402
from mass_nn.io.artifact_layout import checkpoint_path  # noqa: E402
from mass_nn.paths import MassPaths  # noqa: E402

SECTION = "inference_speed"
CONFIGURATION = "3d_cpu"


@dataclass
class InferenceResult:
    """Median seconds of each measured stage on one dataset."""

    name: str
    classes: int
    query_shape: tuple[int, ...]
    encode_seconds: float  # all classes of one reference
    segment_seconds: float  # one preprocessed query, cached embedding
    predict_seconds: list[float]  # whole mass_predict path per raw test volume

    @property
    def caching_ratio(self) -> float:
        return (self.encode_seconds + self.segment_seconds) / self.segment_seconds


def pretrained_checkpoint(dataset_id: int, paths: MassPaths) -> Path:
    """A MASS checkpoint of this dataset's 3d_cpu plans (a 2-step run, made once)."""
    from mass_nn.training.options import TrainingOptions
    from mass_nn.training.run_training import run_training
    options = TrainingOptions(mode="PRETRAIN", datasets=[str(dataset_id)], configuration=CONFIGURATION, epochs=1,
                              iters_per_epoch=2, num_workers=0, device="cpu", val_batches=1, tag="inference_benchmark",
                              continue_training=True)
    return checkpoint_path(Path(run_training(options, paths)["output_folder"]), "final")


def measure_dataset(dataset_id: int, paths: MassPaths, repeats: int, out: Path) -> InferenceResult:
    from mass_nn.inference.batch_prediction import image_ending
    from mass_nn.inference.context_tasks import ContextReference, encode_context_tasks
    from mass_nn.inference.model_loading import checkpoint_context, in_context_network
    from mass_nn.inference.predictor import SegmentationPredictor
    from mass_nn.inference.reference_encoding import encode_reference_labels
    from mass_nn.masks.case_loading import load_case_input
    from mass_nn.model.checkpoint import load_checkpoint
    from mass_nn.preprocessing.blosc2_storage import open_array
    from mass_nn.datasets.labelled_data import resolve_labelled_dataset
    checkpoint = pretrained_checkpoint(dataset_id, paths)
    loaded = load_checkpoint(checkpoint)
    network = in_context_network(loaded, checkpoint)
    data = resolve_labelled_dataset(str(dataset_id), paths, "MassPlans", CONFIGURATION)
    reference_id = data.labelled_cases("train")[0]
    reference = data.preprocessed_pairs([reference_id])[0]
    present = [v for v in data.classes.values() if (reference[1] == v).any()]
    patch = network.config.input_size_zyx
    context = checkpoint_context(loaded, patch, None)
    context_reference = ContextReference(*reference, load_case_input(data.source.data_folder, reference_id,
                                                                      data.source.plans, 0, with_label=False))

    def encode():
        with torch.no_grad():
            return (encode_reference_labels(network, [reference], present, patch),
                    encode_context_tasks(network, [context_reference], len(present), context, patch))

    embedding, context_embedding = encode()
    predictor = SegmentationPredictor(network, embedding, present, data.source.plans, CONFIGURATION,
                                      context_embedding=context_embedding)
    test_ids = data.labelled_cases("test") or data.labelled_cases("val")
    query = np.asarray(open_array(data.patch_case(test_ids[0]).image_path))
    encode_seconds = median_seconds(encode, repeats)
    segment_seconds = median_seconds(lambda: predictor.label_map(query), repeats)
    predict_seconds = []
    for case in data.raw_cases(test_ids):
        started = time.perf_counter()
        predictor.predict_case(case, out / data.source.dataset_name / f"{case.case_id}{image_ending(case.images[0])}")
        predict_seconds.append(time.perf_counter() - started)
    return InferenceResult(data.source.dataset_name, len(present), tuple(query.shape[1:]), encode_seconds,
                           segment_seconds, predict_seconds)


def section(results: list[InferenceResult], skipped: str, seconds: float, load: tuple) -> str:
    lines = [
        "## Inference: in-context segmentation with cached references (step 4)",
        "",
        "How long does in-context segmentation take on 2 CPU cores, and what does encoding the references once "
        "save? Network: a MASS checkpoint at 3d_cpu (speed does not depend on the weights). Reference: one train "
        "case, every class it contains, each cropped around its label and encoded once, with the context tasks "
        "that fill each pass up to the pretraining task count (weight-free generator masks of the reference, "
        "documentation/in_context_segmentation.md#context-tasks). Query: a test case, sliding window (overlap "
        "0.75, Gaussian) under the cached embedding, as `mass_predict` in context. The reference point is re-encoding "
        "the references for every query; the ratio (encode + segment) / segment is the time caching saves per "
        "query. The last column is the whole `mass_predict` path per raw volume (preprocess, segment, export).",
        "",
        f"Machine: {machine_description()}; load average {load[0]:.2f} before / {load[1]:.2f} after; torch threads "
        f"{torch.get_num_threads()}; produced by `python benchmarks/inference_speed.py` in {seconds / 60:.1f} min.",
        "",
        "| dataset | classes | query grid (zyx) | encode references (s) | segment one query, cached (s) | "
        "**re-encode every query / cached** | mass_predict per raw volume (s) |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in results:
        predict = ", ".join(f"{s:.2f}" for s in r.predict_seconds)
        lines.append(f"| {r.name} | {r.classes} | {'×'.join(map(str, r.query_shape))} | {r.encode_seconds:.3f} | "
                     f"{r.segment_seconds:.3f} | **{r.caching_ratio:.2f}×** | {predict} |")
    if skipped:
        lines += ["", skipped]
    best = max(results, key=lambda r: r.caching_ratio)
    lines += ["", f"Reading: encoding the references is {best.encode_seconds / best.segment_seconds:.2f}× the cost of "
                  f"segmenting one query on {best.name}, so a method that re-encodes its context for every query "
                  f"pays {best.caching_ratio:.2f}× per query there; with cached embeddings ({'`--save-embedding`'} "
                  "/ `--embedding`) that cost is paid once per reference set. Medians of repeated runs after a "
                  "warm-up; the raw-volume path is timed once per test case."]
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shared", default=str(REPO.parent / "shared" / "data"))
    parser.add_argument("--workdir", default=str(REPO / "benchmarks" / "_work" / "pretraining_throughput"))
    parser.add_argument("--page", default=str(REPO / "documentation" / "benchmarks.md"))
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--no-write", action="store_true", help="print the section, leave the page alone")
    args = parser.parse_args(argv)
    started, load_before = time.perf_counter(), os.getloadavg()[0]
    work = Path(args.workdir).absolute()
    paths = MassPaths(raw=work / "MASS_raw", preprocessed=work / "MASS_preprocessed", results=work / "MASS_results")
    dataset_ids = [ensure_phantom(paths)]
    shared_id = ensure_shared(Path(args.shared), paths)
    skipped = "" if shared_id is not None else f"Real dataset skipped: {args.shared} is absent."
    dataset_ids += [shared_id] if shared_id is not None else []
    results = []
    for dataset_id in dataset_ids:
        preprocess_and_generate_masks(dataset_id, paths)
        results.append(measure_dataset(dataset_id, paths, args.repeats, work / "inference_predictions"))
    body = section(results, skipped, time.perf_counter() - started, (load_before, os.getloadavg()[0]))
    if not args.no_write:
        replace_section(Path(args.page), SECTION, body)
    print(body)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
