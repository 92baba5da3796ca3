"""Atomic file writes: write under a temporary name in the target folder, then rename over the target."""
from __future__ import annotations

import json
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def atomic_path(target: str | os.PathLike):
    """Yield a temporary path beside `target`; on success it is renamed to `target`, on error removed.

    The temporary name keeps the target's suffixes so writers that pick a format by extension still work.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    suffix = "".join(target.suffixes)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name.removesuffix(suffix)}.", suffix=f".tmp{suffix}",
                               dir=target.parent)
    os.close(fd)
    os.unlink(tmp)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.replace(tmp_path, target)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def write_json_atomic(obj, target: str | os.PathLike, indent: int = 2) -> None:
    """Serialise `obj` as JSON into `target` atomically."""
    with atomic_path(target) as tmp:
        tmp.write_text(json.dumps(obj, indent=indent, sort_keys=False) + "\n")


def read_json(path: str | os.PathLike):
    """Read a JSON file; a syntax error names the file."""
    from mass_nn.errors import MassError
    path = Path(path)
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise MassError(f"{path} is not valid JSON ({err}); fix or delete the file and re-run") from err
