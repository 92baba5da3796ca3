"""The `supervoxel` generator of this tree against the ones of named earlier commits, same volumes, same run.

Issue 17 asks for weight-free masks that beat SLIC "no slower than today". Each earlier commit is checked out
into a temporary worktree; each side's generator (with its own defaults) runs on the same windowed volumes of
benchmarks/mask_quality_weight_free.py in a fresh process (benchmarks/supervoxel_side_runner.py), the order of
the sides rotating round by round so that drifts of the machine's speed hit all alike. Per volume the median
over rounds is kept; the numbers to read are the ratios of the totals, earlier / this tree (> 1: this tree is
faster).

Usage: python benchmarks/supervoxel_speed.py [--commits b2effa3 28473d9] [--rounds 3] [--shared ../shared/data]
       [--no-write]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from contextlib import ExitStack
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.mask_quality_weight_free import VOLUMES, read_volume, windowed_volume  # noqa: E402
from benchmarks.measure import machine_description, publish_section  # noqa: E402
from benchmarks.step_comparison import commit_worktree  # noqa: E402

SECTION = "supervoxel_speed"
RUNNER = REPO / "benchmarks" / "supervoxel_side_runner.py"
REFERENCE_COMMITS = {
    "b2effa3": "the generator when issue 17 was filed",
    "28473d9": "before the band source's faster opening, 8 grey levels and half-voxel smoothing floor",
}


def save_cases(shared: Path, folder: Path) -> dict[str, tuple[int, ...]]:
    """The counted volumes' windowed arrays as .npy plus cases.json; returns each case's grid shape."""
    cases, shapes = {}, {}
    for index, volume in enumerate(v for v in VOLUMES if not v.comparison):
        raw, _, spacing = read_volume(shared, volume)
        windowed = windowed_volume(raw, volume.windows)
        np.save(folder / f"case_{index:02d}.npy", windowed)
        cases[volume.name] = {"file": f"case_{index:02d}.npy", "spacing_zyx_mm": list(spacing)}
        shapes[volume.name] = windowed.shape[1:]
    (folder / "cases.json").write_text(json.dumps(cases, indent=1))
    return shapes


def run_side(source: Path, cases: Path) -> dict[str, float]:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # the generator is single-threaded numpy / scipy work
    result = subprocess.run([sys.executable, str(RUNNER), str(source), str(cases)], capture_output=True, text=True,
                            env=env, cwd=str(cases))
    if result.returncode != 0:
        raise SystemExit(f"supervoxel side runner failed for {source}:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])["seconds"]


def table(shapes: dict, seconds: dict[str, dict[str, list[float]]]) -> str:
    """Per volume the median seconds of every side; the last column block: earlier / this tree."""
    sides = list(seconds)  # the earlier commits, then "this tree"
    earlier = sides[:-1]
    lines = ["| volume | grid (voxels) | " + " | ".join(f"{side} s" for side in sides) + " | "
             + " | ".join(f"{side} / this tree" for side in earlier) + " |",
             "|---|---|" + "---|" * (len(sides) + len(earlier))]
    median = {side: {name: statistics.median(values) for name, values in per_case.items()}
              for side, per_case in seconds.items()}
    for name, shape in shapes.items():
        cells = [f"{median[side][name]:.2f}" for side in sides]
        cells += [f"{median[side][name] / median[sides[-1]][name]:.2f}" for side in earlier]
        lines.append(f"| {name} | {'x'.join(map(str, shape))} | " + " | ".join(cells) + " |")
    totals = {side: sum(median[side].values()) for side in sides}
    cells = [f"**{totals[side]:.1f}**" for side in sides] + [f"**{totals[side] / totals[sides[-1]]:.2f}**"
                                                              for side in earlier]
    lines.append(f"| **all {len(shapes)}** | | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--commits", nargs="+", default=list(REFERENCE_COMMITS))
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--shared", default=str(REPO.parent / "shared" / "data"))
    parser.add_argument("--page", default=str(REPO / "documentation" / "benchmarks.md"))
    parser.add_argument("--no-write", action="store_true", help="print the table, leave the page alone")
    args = parser.parse_args(argv)
    with ExitStack() as stack:
        cases = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="supervoxel_speed_")))
        sources = {commit: stack.enter_context(commit_worktree(commit)) for commit in args.commits}
        sources["this tree"] = REPO
        shapes = save_cases(Path(args.shared), cases)
        seconds = {side: {name: [] for name in shapes} for side in sources}
        for round_index in range(args.rounds):
            order = list(sources)
            order = order[round_index % len(order):] + order[:round_index % len(order)]
            for side in order:
                for name, value in run_side(sources[side], cases).items():
                    seconds[side][name].append(value)
                print(f"round {round_index + 1}: {side} done", flush=True)
    body = "\n".join([
        "## Weight-free generator time against earlier commits (issue 17: no slower)",
        "",
        "The `supervoxel` generator of this tree and of earlier commits (each with its own defaults: "
        + "; ".join(f"{c}: {REFERENCE_COMMITS.get(c, 'named on the command line')}" for c in args.commits)
        + ") on the windowed volumes of the quality benchmark above, each side in a fresh process with one thread, "
        f"the order of the sides rotating over {args.rounds} rounds; seconds are the median over rounds of the "
        "generator call. Ratio = earlier / this tree (> 1: this tree is faster).",
        "",
        f"Machine: {machine_description()}; produced by `python benchmarks/supervoxel_speed.py`.",
        "",
        table(shapes, seconds),
    ])
    publish_section(Path(args.page), SECTION, body, write=not args.no_write)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
