"""The three data roots: MASS_raw, MASS_preprocessed, MASS_results.

Resolution order for each root: explicit argument (a CLI flag) > environment variable > default folder
`~/mass_nn_data/<name>`. Nothing is read at import time; the default is announced once per process through
logging so a user knows where their files went.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

logger = logging.getLogger(__name__)

ROOT_NAMES = ("MASS_raw", "MASS_preprocessed", "MASS_results")
_announced_defaults: set[str] = set()


def default_base() -> Path:
    """Folder under which roots that are neither given nor set in the environment live."""
    return Path.home() / "mass_nn_data"


def resolve_root(name: str, explicit: str | os.PathLike | None = None) -> Path:
    """Return the folder for root `name` (one of ROOT_NAMES), following the documented order."""
    if name not in ROOT_NAMES:
        raise ValueError(f"unknown root {name!r}; known: {', '.join(ROOT_NAMES)}")
    if explicit is not None:
        return Path(explicit).expanduser().absolute()
    from_env = os.environ.get(name)
    if from_env:
        return Path(from_env).expanduser().absolute()
    path = default_base() / name
    if name not in _announced_defaults:
        _announced_defaults.add(name)
        logger.warning("%s is not set; using the default folder %s (set %s or pass the flag to change it)",
                       name, path, name)
    return path


@dataclass(frozen=True)
class MassPaths:
    """The resolved roots of one run."""

    raw: Path
    preprocessed: Path
    results: Path

    @classmethod
    def resolve(cls, raw=None, preprocessed=None, results=None) -> "MassPaths":
        return cls(raw=resolve_root("MASS_raw", raw),
                   preprocessed=resolve_root("MASS_preprocessed", preprocessed),
                   results=resolve_root("MASS_results", results))
