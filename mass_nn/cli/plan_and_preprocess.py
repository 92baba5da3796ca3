"""mass_plan_and_preprocess -d ID [ID ...]: integrity check, fingerprint, plans, splits, blosc2 preprocessing."""
from __future__ import annotations

import argparse

from mass_nn.cli.common import add_common_arguments, add_path_arguments, paths_from_args, run_cli
from mass_nn.parallel import default_num_processes
from mass_nn.planning.planner_settings import DEFAULT_PRESET, available_presets
from mass_nn.preprocessing.plan_and_preprocess import PlanAndPreprocessOptions, plan_and_preprocess


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mass_plan_and_preprocess", description=__doc__)
    parser.add_argument("-d", "--dataset", nargs="+", required=True, help="dataset id(s) or full name(s)")
    parser.add_argument("-p", "--preset", default=DEFAULT_PRESET,
                        help=f"plans preset name ({', '.join(available_presets())}) or path to a preset JSON")
    parser.add_argument("-c", "--configurations", nargs="+", help="configurations to preprocess (default: all)")
    parser.add_argument("-np", "--num-processes", type=int, default=default_num_processes(),
                        help="worker processes (default: cores, at most 8)")
    parser.add_argument("--clean", action="store_true", help="recompute the fingerprint and all preprocessed cases")
    parser.add_argument("--no-preprocess", action="store_true", help="stop after writing plans and splits")
    parser.add_argument("--skip-integrity-check", action="store_true", help="do not verify the raw dataset first")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    add_path_arguments(parser)
    add_common_arguments(parser)
    return parser


def _run(args) -> int:
    paths = paths_from_args(args)
    options = PlanAndPreprocessOptions(preset=args.preset, configurations=args.configurations,
                                       num_processes=max(1, args.num_processes), clean=args.clean,
                                       verify_integrity=not args.skip_integrity_check,
                                       preprocess=not args.no_preprocess, progress=not args.no_progress)
    for dataset in args.dataset:
        summary = plan_and_preprocess(dataset, paths, options)
        configs = ", ".join(f"{c['configuration']} ({c['preprocessed']} new, {c['skipped']} skipped)"
                            for c in summary["configurations"]) or "none preprocessed"
        print(f"{summary['dataset']}: {summary['cases']} cases; plans {summary['plans']}; {configs}; splits "
              f"train/val/test {summary['splits']['train']}/{summary['splits']['val']}/{summary['splits']['test']}; "
              f"{summary['seconds']:.1f} s" + (f"; {len(summary['warnings'])} warning(s) recorded in "
                                               f"integrity_warnings.json" if summary["warnings"] else ""))
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_cli(build_parser(), _run, argv)


if __name__ == "__main__":
    raise SystemExit(main())
