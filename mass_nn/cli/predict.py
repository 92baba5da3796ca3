"""mass_predict: segment raw images into label maps in their own geometry.

Fixed classes (a finetuned run folder):
  mass_predict -i imagesTs/ -o predictions/ -m MASS_results/Dataset991_X/SegmentationFinetuner__MassPlans__3d_cpu__...
In context (any pretrained MASS checkpoint plus labelled references; repeat the pair for k-shot):
  mass_predict -i query.nii.gz -o out/ --checkpoint checkpoint_final.pt \\
      --reference-image ref_0000.nii.gz --reference-mask ref.nii.gz [--save-embedding refs.pt]
  mass_predict -i queries/ -o out/ --checkpoint checkpoint_final.pt --embedding refs.pt
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from mass_nn.cli.common import add_common_arguments, run_cli
from mass_nn.errors import MassError
from mass_nn.inference.label_maps import LABEL_FUSIONS
from mass_nn.io.atomic import prepare_output_folder


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mass_predict", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-i", "--input", nargs="+", required=True, help="image file(s) and/or folder(s)")
    parser.add_argument("-o", "--output", required=True, help="output folder (<case><same ending as input>)")
    model = parser.add_argument_group("model (one of -m, or --checkpoint with references or --embedding)")
    model.add_argument("-m", "--model", help="finetuned run folder (mass_train FINETUNE output)")
    model.add_argument("--checkpoint-kind", default="best", choices=["best", "final", "latest"],
                       help="which checkpoint of the run folder (default: %(default)s)")
    model.add_argument("--checkpoint", help="pretrained in-context checkpoint (e.g. MASSPretrainer's)")
    model.add_argument("--reference-image", action="append", default=[], help="reference image (repeatable)")
    model.add_argument("--reference-mask", action="append", default=[],
                       help="its label mask (repeatable, same order); every label value is one class")
    model.add_argument("--labels", type=int, nargs="+", help="only these label values of the references")
    model.add_argument("--embedding", help="saved reference encoding instead of references")
    model.add_argument("--save-embedding", help="write the encoded references here for reuse")
    model.add_argument("--context-tasks", type=int,
                       help="in context: tasks per pass, the labels filled up with masks of the weight-free "
                            "generator on the references (default: the checkpoint's pretraining task count; 0: none)")
    options = parser.add_argument_group("inference")
    options.add_argument("--overlap", type=float,
                         help="sliding-window overlap (default: 0.75 in context, 0.5 with -m)")
    options.add_argument("--blend", default="gaussian", choices=["gaussian", "mean"], help="default: %(default)s")
    options.add_argument("--threshold", type=float, default=0.5, help="probability threshold (default: %(default)s)")
    options.add_argument("--calibrated-threshold", action="store_true",
                         help="in context: each label's threshold read off its references instead of --threshold "
                              "(saved with --save-embedding, reused with --embedding)")
    options.add_argument("--largest-component", action="store_true", help="keep each label's largest component")
    options.add_argument("--label-fusion", choices=LABEL_FUSIONS,
                         help="a voxel several labels claim goes to the label with the smallest claim in the case "
                              "(smallest_volume) or to the most probable one (default: smallest_volume in context, "
                              "most_probable with -m)")
    options.add_argument("--max-labels-per-forward", type=int, default=0,
                         help="split the labels into chunks of this size (default: all at once)")
    options.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"], help="default: %(default)s")
    options.add_argument("--structure-masks", action="store_true",
                         help="also write each label's own claim (its channel at its threshold, overlaps with other "
                              "labels kept) as <output>/structures/<case>/label_<value><ending>")
    options.add_argument("--continue", dest="skip_existing", action="store_true",
                         help="keep outputs that already exist (resume an interrupted run)")
    add_common_arguments(parser)
    return parser


def _device(name: str) -> str:
    import torch
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise MassError("--device cuda: no CUDA device is available; use --device cpu")
    return name


def _predictor(args):
    from mass_nn.inference import model_loading
    from mass_nn.inference.predictor import InferenceSettings
    settings = InferenceSettings(overlap=args.overlap, blend=args.blend, threshold=args.threshold,
                                 keep_largest_component=args.largest_component, label_fusion=args.label_fusion,
                                 max_labels_per_forward=args.max_labels_per_forward)
    device = _device(args.device)
    references = bool(args.reference_image or args.reference_mask)
    chosen = [bool(args.model), bool(args.checkpoint)]
    if sum(chosen) != 1 or (args.model and (references or args.embedding)):
        raise MassError("give either -m RUN_FOLDER, or --checkpoint with --reference-image/--reference-mask pairs "
                        "(or --embedding)")
    if args.model:
        if args.calibrated_threshold:
            raise MassError("--calibrated-threshold needs in-context references (--checkpoint with "
                            "--reference-image/--reference-mask or --embedding), not -m")
        return model_loading.predictor_from_run(args.model, args.checkpoint_kind, device, settings)
    if args.embedding and references:
        raise MassError("give references or --embedding, not both")
    if args.context_tasks is not None and not references:
        raise MassError("--context-tasks fills passes with masks of the references; give --reference-image/"
                        "--reference-mask pairs (a saved --embedding keeps the context it was saved with)")
    if args.embedding:
        return model_loading.predictor_from_embedding(args.checkpoint, Path(args.embedding), device, settings,
                                                      args.calibrated_threshold)
    if not references:
        raise MassError("--checkpoint needs --reference-image/--reference-mask pairs or --embedding")
    return model_loading.predictor_from_references(
        args.checkpoint, [Path(p) for p in args.reference_image], [Path(p) for p in args.reference_mask], device,
        settings, args.labels, Path(args.save_embedding) if args.save_embedding else None, args.calibrated_threshold,
        args.context_tasks)


def _run(args) -> int:
    import numpy as np
    from mass_nn.inference.batch_prediction import gather_cases, predict_cases
    from mass_nn.io.artifact_layout import structure_mask_path
    from mass_nn.io.dataset_json import CaseFiles
    from mass_nn.io.image_io import read_geometry, write_image
    prepare_output_folder(args.output)
    predictor, names = _predictor(args)
    cases = gather_cases([Path(p) for p in args.input], len(predictor.plans.channels))
    labels = ", ".join(f"{n}={v}" for n, v in zip(names, predictor.label_values))
    print(f"{len(cases)} case(s); labels {labels}")
    endings = {case.case_id: ending for case, ending in cases}

    def write_structure_masks(case: CaseFiles, masks: dict[int, np.ndarray]) -> None:
        geometry = read_geometry(case.images[0])
        for value, mask in masks.items():
            write_image(mask.astype(np.uint8), geometry,
                        structure_mask_path(Path(args.output), case.case_id, value, endings[case.case_id]))

    summary = predict_cases(predictor, cases, Path(args.output), skip_existing=args.skip_existing,
                            on_structure_masks=write_structure_masks if args.structure_masks else None)
    for failure in summary["failed"]:
        print(f"failed: {failure['case_id']}: {failure['error']}", file=sys.stderr)
    print(f"{len(summary['predicted'])} predicted, {len(summary['skipped'])} kept, {len(summary['failed'])} failed "
          f"-> {summary['output_folder']}")
    return 1 if summary["failed"] else 0


def main(argv: list[str] | None = None) -> int:
    return run_cli(build_parser(), _run, argv)


if __name__ == "__main__":
    raise SystemExit(main())
