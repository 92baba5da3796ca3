"""Shared CLI plumbing: path flags, logging, and turning user errors into one clear message."""
from __future__ import annotations

import argparse
import logging
import sys
from typing import Callable

from mass_nn.errors import MassError
from mass_nn.paths import MassPaths


def add_path_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("data roots (default: environment variable, then ~/mass_nn_data/<name>)")
    group.add_argument("--raw", help="raw datasets root (overrides $MASS_raw)")
    group.add_argument("--preprocessed", help="preprocessed root (overrides $MASS_preprocessed)")
    group.add_argument("--results", help="results root (overrides $MASS_results)")


def add_common_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--verbose", action="store_true", help="debug logging and full tracebacks")


def paths_from_args(args) -> MassPaths:
    return MassPaths.resolve(raw=args.raw, preprocessed=args.preprocessed, results=args.results)


def configure_logging(verbose: bool) -> None:
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO,
                        format="%(levelname)s %(name)s: %(message)s" if verbose else "%(message)s", force=True)


def run_cli(parser: argparse.ArgumentParser, body: Callable[[argparse.Namespace], int | None],
            argv: list[str] | None) -> int:
    """Parse, run `body`, and turn a MassError into `error: <message>` on stderr with exit code 1."""
    args = parser.parse_args(argv)
    verbose = getattr(args, "verbose", False)
    configure_logging(verbose)
    try:
        return int(body(args) or 0)
    except MassError as err:
        if verbose:
            raise
        print(f"error: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted; finished work is kept - re-run the same command to resume", file=sys.stderr)
        return 130
