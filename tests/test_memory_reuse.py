"""Freed memory is kept for reuse: repeated large tensors stop costing page faults (mass_nn/memory_reuse.py)."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from mass_nn.memory_reuse import ENVIRONMENT_SWITCH, _glibc, keep_freed_memory

requires_glibc = pytest.mark.skipif(_glibc() is None or not hasattr(__import__("resource"), "getrusage"),
                                    reason="memory reuse only changes glibc's malloc")

# One fresh interpreter per case: malloc settings are per process and stay until it ends.
FAULT_PROBE = """
import json, resource, sys
import torch
from mass_nn.memory_reuse import keep_freed_memory
reuse = keep_freed_memory() if sys.argv[1] == "reuse" else None
def step():
    a = torch.empty(16 * 2 ** 20)  # 64 MiB, above glibc's largest mmap threshold
    a.fill_(1.0)
    b = torch.empty(12 * 2 ** 20)
    b.fill_(2.0)
for _ in range(6):  # the heap grows and settles into the steps' pattern over the first few steps
    step()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(6):
    step()
faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
print(json.dumps({"faults": faults, "enabled": None if reuse is None else reuse.enabled}))
"""


def _faults(mode: str, env: dict | None = None) -> dict:
    result = subprocess.run([sys.executable, "-c", FAULT_PROBE, mode], capture_output=True, text=True, check=True,
                            env=env)
    return json.loads(result.stdout.strip().splitlines()[-1])


@requires_glibc
def test_repeated_large_tensors_fault_only_without_reuse():
    plain, reused = _faults("plain"), _faults("reuse")
    pages_per_step = (16 + 12) * 2 ** 22 // 4096  # 112 MiB of fresh pages per step if nothing is kept
    assert plain["faults"] > 0.5 * 6 * pages_per_step  # glibc unmaps and maps again: every step faults
    assert reused["enabled"] is True
    assert reused["faults"] < 0.25 * plain["faults"]


@requires_glibc
def test_environment_switch_turns_it_off(monkeypatch):
    import os
    off = _faults("reuse", env={**os.environ, ENVIRONMENT_SWITCH: "0"})
    assert off["enabled"] is False and off["faults"] > 0.5 * 6 * (28 * 2 ** 20 // 4096)
    monkeypatch.setenv(ENVIRONMENT_SWITCH, "0")
    plan = keep_freed_memory()
    assert not plan.enabled and f"{ENVIRONMENT_SWITCH}=0" in plan.describe()


@requires_glibc
def test_describe_names_the_switch():
    plan = keep_freed_memory()
    assert plan.enabled and plan.describe().startswith("memory reuse on") and ENVIRONMENT_SWITCH in plan.describe()
