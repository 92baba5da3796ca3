"""Atomic file writes: write under a temporary name in the target folder, then rename over the target."""
from __future__ import annotations

import glob
import json
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path

from mass_nn.errors import MassError


def _temporary_prefix(target: Path, suffix: str) -> str:
    return f".{target.name.removesuffix(suffix)}."


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, owned by someone else
        return True
    return True


def remove_stale_temporaries(target: str | os.PathLike) -> list[Path]:
    """Delete the temporaries that killed writers left for `target` (their process is gone); returns them.

    Temporaries are named `.<stem>.<pid>.<random>.tmp<suffixes>`, so a live writer's file is never touched.
    """
    target = Path(target)
    suffix = "".join(target.suffixes)
    prefix = _temporary_prefix(target, suffix)
    removed = []
    for candidate in target.parent.glob(f"{glob.escape(prefix)}*.tmp{glob.escape(suffix)}"):
        pid_text = candidate.name[len(prefix):].split(".", 1)[0]
        if pid_text.isdigit() and (int(pid_text) == os.getpid() or not _process_alive(int(pid_text))):
            candidate.unlink(missing_ok=True)
            removed.append(candidate)
    return removed


@contextmanager
def atomic_path(target: str | os.PathLike):
    """Yield a temporary path beside `target`; on success it is renamed to `target`, on error removed.

    The temporary name keeps the target's suffixes so writers that pick a format by extension still work, and
    holds the writer's process id so the next write of the same target removes what a killed run left behind.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    suffix = "".join(target.suffixes)
    remove_stale_temporaries(target)
    fd, tmp = tempfile.mkstemp(prefix=f"{_temporary_prefix(target, suffix)}{os.getpid()}.", suffix=f".tmp{suffix}",
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
    path = Path(path)
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise MassError(f"{path} is not valid JSON ({err}); fix or delete the file and re-run") from err


def prepare_output_folder(folder: str | os.PathLike, flag: str = "-o") -> Path:
    """Create `folder` if needed and prove that files can be written there, before any heavy work starts."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise MassError(f"{folder}: exists and is not a folder; give {flag} a folder path (or move the file away)")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".write_test."):
            pass
    except OSError as err:
        raise MassError(f"{folder}: cannot write there ({err.strerror or err}); give {flag} a folder you may "
                        f"write to") from err
    return folder
