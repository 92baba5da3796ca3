"""Per-epoch records: metrics.jsonl (one JSON object per finished epoch) and a readable training_log.txt."""
from __future__ import annotations

import json
import logging
import math
import os
from pathlib import Path

from mass_nn.io.atomic import atomic_path

METRICS_FILE = "metrics.jsonl"
LOG_FILE = "training_log.txt"


def read_metrics(folder: Path) -> list[dict]:
    path = Path(folder) / METRICS_FILE
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _json_safe(value):
    return None if isinstance(value, float) and not math.isfinite(value) else value


def append_metrics(folder: Path, record: dict) -> None:
    """Append one epoch; the line is flushed to disk before returning."""
    with open(Path(folder) / METRICS_FILE, "a") as handle:
        handle.write(json.dumps({k: _json_safe(v) for k, v in record.items()}) + "\n")
        handle.flush()
        os.fsync(handle.fileno())


def truncate_metrics(folder: Path, last_epoch: int) -> None:
    """Keep the records of epochs <= last_epoch (a resumed run rewrites what came after its checkpoint)."""
    records = [r for r in read_metrics(folder) if r.get("epoch", 0) <= last_epoch]
    with atomic_path(Path(folder) / METRICS_FILE) as tmp:
        tmp.write_text("".join(json.dumps(r) + "\n" for r in records))


def format_epoch_line(record: dict) -> str:
    """One readable line for the log: epoch, losses, learning rate, validation, time."""
    parts = [f"epoch {record['epoch']}", f"step {record['global_step']}"]
    for key, value in record.items():
        if key in ("epoch", "global_step", "time") or not isinstance(value, (int, float)) or value is None:
            continue
        parts.append(f"{key} {value:.4g}")
    return " | ".join(parts)


class RunLogFile:
    """While active, copies the `mass_nn` loggers' records into the run's training_log.txt (appending)."""

    def __init__(self, folder: Path, enabled: bool = True):
        self.path = Path(folder) / LOG_FILE
        self.enabled = enabled
        self._handler: logging.Handler | None = None

    def __enter__(self) -> "RunLogFile":
        if self.enabled:
            self._handler = logging.FileHandler(self.path, mode="a")
            self._handler.setFormatter(logging.Formatter("%(asctime)s %(message)s", "%Y-%m-%d %H:%M:%S"))
            self._handler.setLevel(logging.INFO)
            root = logging.getLogger("mass_nn")
            root.addHandler(self._handler)
            if root.getEffectiveLevel() > logging.INFO:
                root.setLevel(logging.INFO)
        return self

    def __exit__(self, *exc) -> None:
        if self._handler is not None:
            logging.getLogger("mass_nn").removeHandler(self._handler)
            self._handler.close()
