"""The stage loop of the resumable benchmarks: each stage is a `stage_<name>` method of a runner; a workspace's
state.json lists the finished ones, which a re-run skips (the report stage always runs, it only reads)."""
from __future__ import annotations

import logging
from pathlib import Path

from mass_nn.io.atomic import read_json, write_json_atomic

ALWAYS_RUN = ("report",)


def run_stages(runner, stages: list[str], redo: bool, state_path: Path, logger: logging.Logger) -> None:
    """Run `runner.stage_<name>()` for every stage of `stages` not finished before (all of them with `redo`),
    marking each finished in `state_path` as soon as it returns."""
    for stage in stages:
        if stage in read_json(state_path)["finished"] and not redo and stage not in ALWAYS_RUN:
            logger.info("stage %s: finished before, skipped", stage)
            continue
        logger.info("stage %s ...", stage)
        getattr(runner, f"stage_{stage}")()
        state = read_json(state_path)
        state["finished"] = sorted(set(state["finished"]) | {stage})
        write_json_atomic(state, state_path)
