"""mass_generate_masks -d ID: class-agnostic 3D mask proposals for every preprocessed case (mask banks)."""
from __future__ import annotations

import argparse
import os

import torch

from mass_nn.cli.common import add_common_arguments, add_path_arguments, paths_from_args, run_cli
from mass_nn.masks.generate import MaskGenerationOptions, bank_folder_of, generate_masks
from mass_nn.masks.quality_report import format_report, quality_report
from mass_nn.planning.configuration_choice import default_configuration
from mass_nn.registry import MASK_GENERATORS

CHECKPOINT_ENV = "MASS_SAM2_CHECKPOINT"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mass_generate_masks", description=__doc__)
    parser.add_argument("-d", "--dataset", nargs="+", required=True, help="dataset id(s) or full name(s)")
    parser.add_argument("-c", "--configuration",
                        help="preprocessed configuration (default: 3d_paper where CUDA is available, else 3d_cpu: "
                             "the configuration mass_train picks on this machine)")
    parser.add_argument("-p", "--plans-name", default="MassPlans", help="plans file name (default: %(default)s)")
    parser.add_argument("-g", "--generator", nargs="+",
                        help=f"generator(s): {', '.join(MASK_GENERATORS.names())} (default: sam2 when a checkpoint "
                             f"is given via --checkpoint or ${CHECKPOINT_ENV}, else supervoxel)")
    sam2 = parser.add_argument_group("sam2 generator")
    sam2.add_argument("--checkpoint", help=f"SAM2 checkpoint file (default: ${CHECKPOINT_ENV})")
    sam2.add_argument("--sam2-model", choices=("tiny", "small", "base_plus", "large"),
                      help="model size (default: inferred from the checkpoint file name)")
    sam2.add_argument("--sam2-image-size", type=int, help="SAM2 input size, multiple of 32 (default 1024)")
    sam2.add_argument("--multi-axis", action="store_true", help="seed slices along all three axes")
    parser.add_argument("--channel", type=int,
                        help="input channel the masks are made from (default: the plans' mask_generation.channel, "
                             "the first channel unless a preset says otherwise)")
    parser.add_argument("--min-volume-mm3", type=float, default=200.0, help="drop smaller masks (default 200 mm³)")
    parser.add_argument("-np", "--num-processes", type=int, default=1,
                        help="worker processes, each with its own generator/model (default 1)")
    parser.add_argument("--num-parts", type=int, default=1, help="split the cases into this many shards")
    parser.add_argument("--part-id", type=int, default=0, help="the shard this run does (0-based)")
    parser.add_argument("--clean", action="store_true", help="delete this generator's banks and start over")
    parser.add_argument("--no-previews", action="store_true", help="skip the preview PNGs")
    parser.add_argument("--quality", action="store_true",
                        help="afterwards, score the banks against the labels (Best / Avg / %%>40) into quality.json")
    parser.add_argument("--no-progress", action="store_true")
    add_path_arguments(parser)
    add_common_arguments(parser)
    return parser


def _generator_settings(name: str, args, checkpoint: str | None) -> dict:
    if name != "sam2":
        return {}
    settings = {"checkpoint": checkpoint, "multi_axis": args.multi_axis}
    if args.sam2_model:
        settings["model"] = args.sam2_model
    if args.sam2_image_size:
        settings["image_size"] = args.sam2_image_size
    return settings


def _run(args) -> int:
    paths = paths_from_args(args)
    checkpoint = args.checkpoint or os.environ.get(CHECKPOINT_ENV) or None
    generators = args.generator or (["sam2"] if checkpoint else ["supervoxel"])
    configuration = args.configuration or default_configuration("cuda" if torch.cuda.is_available() else "cpu")
    for dataset in args.dataset:
        for name in generators:
            options = MaskGenerationOptions(
                generator=name, generator_settings=_generator_settings(name, args, checkpoint),
                configuration=configuration, plans_name=args.plans_name, channel=args.channel,
                min_volume_mm3=args.min_volume_mm3, num_processes=max(1, args.num_processes),
                num_parts=args.num_parts, part_id=args.part_id, clean=args.clean, previews=not args.no_previews,
                progress=not args.no_progress)
            summary = generate_masks(dataset, paths, options)
            print(f"{summary['dataset']} [{name}]: {summary['cases']} cases ({summary['generated']} generated, "
                  f"{summary['skipped']} skipped), {summary['masks']} masks, {summary['seconds']:.1f} s -> "
                  f"{summary['folder']}")
            if args.quality:
                print(format_report(quality_report(bank_folder_of(dataset, paths, options))))
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_cli(build_parser(), _run, argv)


if __name__ == "__main__":
    raise SystemExit(main())
