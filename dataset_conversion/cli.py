"""mass_convert_dataset: write raw datasets (nnU-Net v2 layout) from public sources, ../shared/data or the phantom.

Subcommands: phantom, shared, chaos_mr, mscmrseg, msd, bcv, amos, kits19, totalsegmentator. Output goes to
--raw, else $MASS_raw, else ~/mass_nn_data/MASS_raw. See documentation/conversion.md.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from dataset_conversion.organ_mr import ORGAN_MR_SETS, convert_organ_mr
from dataset_conversion.shared_data import SHARED_KINDS
from mass_nn.cli.common import run_cli
from mass_nn.errors import MassError
from mass_nn.io.dataset_json import list_cases, load_dataset_json
from mass_nn.paths import resolve_root

# Default dataset ids when --dataset-id is not given (MSD: the task number, as nnU-Net numbers them).
DEFAULT_IDS = {"phantom": 990, "bcv": 620, "amos CT": 621, "amos MR": 622, "kits19": 623,
               "totalsegmentator CT": 624, "totalsegmentator MR": 625, "chaos_mr": 626, "mscmrseg": 627}
SHARED_FIRST_ID = 600


def _common_options() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--raw", help="raw datasets root (overrides $MASS_raw)")
    common.add_argument("--verbose", action="store_true", help="debug logging and full tracebacks")
    return common


def _add_source_command(commands, name: str, help_text: str, common) -> argparse.ArgumentParser:
    parser = commands.add_parser(name, help=help_text, description=help_text, parents=[common])
    parser.add_argument("source", type=Path, help="the downloaded source folder (see documentation/conversion.md)")
    parser.add_argument("-d", "--dataset-id", type=int, help="dataset id of the output (default: see docs)")
    return parser


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mass_convert_dataset", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    common = _common_options()
    phantom = commands.add_parser("phantom", help="synthetic abdominal phantom", parents=[common])
    phantom.add_argument("-d", "--dataset-id", type=int, default=DEFAULT_IDS["phantom"])
    phantom.add_argument("-n", "--num-cases", type=int, default=10)
    phantom.add_argument("--seed", type=int, default=0)
    phantom.add_argument("--modality", choices=("CT", "MR"), default="CT")
    shared = commands.add_parser("shared", help="the real volumes of ../shared/data", parents=[common])
    shared.add_argument("source", type=Path, help="folder laid out like ../shared/data")
    shared.add_argument("--which", nargs="+", choices=list(SHARED_KINDS), metavar="KIND",
                        help=f"kinds to convert (default: all): {', '.join(SHARED_KINDS)}")
    shared.add_argument("--first-id", type=int, default=SHARED_FIRST_ID,
                        help=f"ids are first-id + 1 ... + {len(SHARED_KINDS)}")
    for key, spec in ORGAN_MR_SETS.items():
        _add_source_command(commands, key, f"{spec.description.split(' with ')[0]} ({spec.folder}/ of "
                                           f"../shared/data, or the folder that holds it)", common)
    _add_source_command(commands, "msd", "a Medical Segmentation Decathlon task folder (TaskNN_Name)", common)
    _add_source_command(commands, "bcv", "BCV abdomen (RawData/Training, RawData/Testing)", common)
    amos = _add_source_command(commands, "amos", "AMOS 2022 (amos22/), one modality per call", common)
    amos.add_argument("--modality", choices=("CT", "MR"), default="CT")
    _add_source_command(commands, "kits19", "KiTS19 (data/case_NNNNN)", common)
    total = _add_source_command(commands, "totalsegmentator", "TotalSegmentator v2 (sNNNN/, meta.csv)", common)
    total.add_argument("--modality", choices=("CT", "MR"), default="CT", help="CT release or MRI release")
    total.add_argument("--structures", nargs="+", help="keep only these structures, in this class order")
    return parser


def _msd_id(args) -> int:
    from dataset_conversion.msd import msd_task_number
    number = args.dataset_id if args.dataset_id is not None else msd_task_number(args.source)
    if number is None:
        raise MassError(f"{args.source}: folder is not named TaskNN_Name, so no default id; pass --dataset-id")
    return number


def _convert(args, raw_root: Path) -> list[Path]:
    """Run the converter named by args.command; return the dataset folders written."""
    def dataset_id(key: str) -> int:
        return args.dataset_id if args.dataset_id is not None else DEFAULT_IDS[key]

    if args.command == "phantom":
        from dataset_conversion.phantom import write_phantom_dataset
        return [write_phantom_dataset(raw_root, args.dataset_id, args.num_cases, args.seed, args.modality)]
    if args.command == "shared":
        from dataset_conversion.shared_data import convert_shared_data
        return list(convert_shared_data(args.source, raw_root, args.which, args.first_id).values())
    if args.command in ORGAN_MR_SETS:
        return [convert_organ_mr(args.source, raw_root, dataset_id(args.command), args.command)]
    if args.command == "msd":
        from dataset_conversion.msd import convert_msd
        return [convert_msd(args.source, raw_root, _msd_id(args))]
    if args.command == "bcv":
        from dataset_conversion.bcv import convert_bcv
        return [convert_bcv(args.source, raw_root, dataset_id("bcv"))]
    if args.command == "amos":
        from dataset_conversion.amos import convert_amos
        return [convert_amos(args.source, raw_root, dataset_id(f"amos {args.modality}"), args.modality)]
    if args.command == "kits19":
        from dataset_conversion.kits19 import convert_kits19
        return [convert_kits19(args.source, raw_root, dataset_id("kits19"))]
    from dataset_conversion.totalsegmentator import convert_totalsegmentator
    return [convert_totalsegmentator(args.source, raw_root, dataset_id(f"totalsegmentator {args.modality}"),
                                     args.structures, args.modality)]


def _run(args) -> int:
    for dataset_dir in _convert(args, resolve_root("MASS_raw", args.raw)):
        dataset_json = load_dataset_json(dataset_dir)
        num_test = len(list_cases(dataset_dir, dataset_json, split="Ts"))
        print(f"{dataset_dir}: {dataset_json.num_training} training case(s), {num_test} test case(s), channels "
              f"{', '.join(dataset_json.channel_names.values())}")
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_cli(build_parser(), _run, argv)


if __name__ == "__main__":
    raise SystemExit(main())
