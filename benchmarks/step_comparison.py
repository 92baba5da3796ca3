"""Side by side in one run: the current tree against a named earlier commit, on the same saved inputs.

The earlier commit is checked out into a temporary git worktree; `benchmarks/step_runner.py` then times the
same work in a subprocess for each side (the current tree and the worktree first on sys.path), alternating the
sides round by round so that drifts of the machine's speed hit both alike. The number to read is the ratio of
the medians, earlier / current (> 1: the current tree is faster).
"""
from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RUNNER = REPO / "benchmarks" / "step_runner.py"


@contextmanager
def commit_worktree(commit: str):
    """A temporary detached worktree of `commit` (removed afterwards); yields its path."""
    folder = Path(tempfile.mkdtemp(prefix="mass_nn_commit_")) / "tree"
    subprocess.run(["git", "-C", str(REPO), "worktree", "add", "--detach", str(folder), commit], check=True,
                   capture_output=True)
    try:
        yield folder
    finally:
        subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force", str(folder)], capture_output=True)
        subprocess.run(["git", "-C", str(REPO), "worktree", "prune"], capture_output=True)


@dataclass
class SideBySide:
    """Per-call seconds of the same work on both sides."""

    what: str
    earlier: list[float]
    current: list[float]

    @property
    def ratio(self) -> float:
        """earlier / current of the medians: how many times faster the current tree is."""
        return statistics.median(self.earlier) / statistics.median(self.current)


def run_side(spec: dict, source: Path, work: Path, name: str) -> list[float]:
    """Seconds of each timed call of `spec` with the mass_nn of `source`, measured in a fresh process."""
    spec_path = work / f"{name}.json"
    spec_path.write_text(json.dumps({**spec, "source": str(source)}))
    threads = str(spec["threads"])
    env = {**os.environ, "OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads, "TQDM_DISABLE": "1"}
    result = subprocess.run([sys.executable, str(RUNNER), str(spec_path)], capture_output=True, text=True, env=env,
                            cwd=str(work))
    if result.returncode != 0:
        raise SystemExit(f"step runner failed for {source} ({spec['kind']}):\n{result.stderr[-3000:]}")
    answer = json.loads(result.stdout.strip().splitlines()[-1])
    if Path(answer["module"]).parent != Path(source).resolve():
        raise SystemExit(f"step runner imported mass_nn from {answer['module']}, not from {source}")
    return answer["seconds"]


def compare(what: str, spec: dict, earlier_source: Path, work: Path, rounds: int,
            earlier_changes: dict | None = None) -> SideBySide:
    """`rounds` alternating runs of each side (earlier first in odd rounds, current first in even ones);
    `earlier_changes` are spec entries that only the earlier side gets (e.g. the current tree with a feature off)."""
    earlier, current = [], []
    earlier_spec = {**spec, **(earlier_changes or {})}
    for round_index in range(rounds):
        order = [("earlier", earlier_source, earlier, earlier_spec), ("current", REPO, current, spec)]
        for label, source, sink, side_spec in (order if round_index % 2 == 0 else order[::-1]):
            sink.extend(run_side(side_spec, source, work, f"{label}_{round_index}"))
    result = SideBySide(what, earlier, current)
    print(f"  {what}: earlier {statistics.median(earlier):.3g} s, current {statistics.median(current):.3g} s, "
          f"ratio {result.ratio:.2f}x", flush=True)
    return result
