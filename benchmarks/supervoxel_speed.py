"""The `supervoxel` generator of this tree against the one of a named earlier commit, same volumes, same run.

Issue 17 asks for weight-free masks that beat SLIC "no slower than today". The earlier commit is checked out
into a temporary worktree; each side's generator (with its own defaults) runs on the same windowed volumes of
benchmarks/mask_quality_weight_free.py in a fresh process (benchmarks/supervoxel_side_runner.py), the sides
alternating round by round so that drifts of the machine's speed hit both alike. Per volume the median over
rounds is kept; the number to read is the ratio of the totals, earlier / current (> 1: this tree is faster).

Usage: python benchmarks/supervoxel_speed.py [--commit 28473d9] [--rounds 2] [--shared ../shared/data] [--no-write]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.mask_quality_weight_free import VOLUMES, read_volume, windowed_volume  # noqa: E402
from benchmarks.measure import machine_description, replace_section  # noqa: E402
from benchmarks.step_comparison import commit_worktree  # noqa: E402

SECTION = "supervoxel_speed"
RUNNER = REPO / "benchmarks" / "supervoxel_side_runner.py"
# the generator before the band source's faster opening, 8 grey levels and half-voxel smoothing floor
REFERENCE_COMMIT = "28473d9"


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


def table(shapes: dict, earlier: dict[str, list[float]], current: dict[str, list[float]], commit: str) -> str:
    lines = [f"| volume | grid (voxels) | {commit} s | this tree s | ratio |", "|---|---|---|---|---|"]
    for name, shape in shapes.items():
        e, c = statistics.median(earlier[name]), statistics.median(current[name])
        lines.append(f"| {name} | {'x'.join(map(str, shape))} | {e:.2f} | {c:.2f} | {e / c:.2f} |")
    total_e = sum(statistics.median(v) for v in earlier.values())
    total_c = sum(statistics.median(v) for v in current.values())
    lines.append(f"| **all {len(shapes)}** | | **{total_e:.1f}** | **{total_c:.1f}** | **{total_e / total_c:.2f}** |")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--commit", default=REFERENCE_COMMIT)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--shared", default=str(REPO.parent / "shared" / "data"))
    parser.add_argument("--page", default=str(REPO / "documentation" / "benchmarks.md"))
    parser.add_argument("--no-write", action="store_true", help="print the table, leave the page alone")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="supervoxel_speed_") as work, commit_worktree(args.commit) as tree:
        cases = Path(work)
        shapes = save_cases(Path(args.shared), cases)
        earlier: dict[str, list[float]] = {name: [] for name in shapes}
        current: dict[str, list[float]] = {name: [] for name in shapes}
        for round_index in range(args.rounds):
            order = [(tree, earlier), (REPO, current)]
            for source, seconds in order if round_index % 2 == 0 else order[::-1]:
                for name, value in run_side(source, cases).items():
                    seconds[name].append(value)
                print(f"round {round_index + 1}: {source} done", flush=True)
    body = "\n".join([
        "## Weight-free generator time against an earlier commit (issue 17: no slower)",
        "",
        f"The `supervoxel` generator of this tree and of commit {args.commit} (each with its own defaults) on the "
        "windowed volumes of the quality benchmark above, each side in a fresh process with one thread, the sides "
        f"alternating over {args.rounds} rounds; seconds are the median over rounds of the generator call. "
        "Ratio = earlier / this tree (> 1: this tree is faster).",
        "",
        f"Machine: {machine_description()}; produced by `python benchmarks/supervoxel_speed.py`.",
        "",
        table(shapes, earlier, current, args.commit),
    ])
    print(body)
    if not args.no_write:
        replace_section(Path(args.page), SECTION, body)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
