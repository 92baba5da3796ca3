"""Keep freed memory in the process for reuse, instead of handing large blocks back to the kernel.

glibc's malloc serves every block above its mmap threshold (which it never raises above 32 MiB) with a fresh
mapping and unmaps it on free. The next tensor of that size is mapped again, and the kernel zeroes it page by
page on first touch: one minor page fault per 4 KiB. A training step allocates and frees the same large
activations every step, so on CPU it pays those faults every step, and more the larger the batch: at batch 16
on 48³ patches more than half of a MASS step (benchmarks.md, "Pretraining step" section). With mmap turned off for
malloc (M_MMAP_MAX 0) and a trim threshold of 2 GiB, freed blocks stay in the heap and the next step gets them
back without a fault. The price: the process keeps the heap of its largest step (its resident memory does not
shrink between steps), which a training process needs again at the next step anyway.

Only glibc has these knobs (Linux with musl, macOS and Windows keep their allocator's behaviour); the setting is
for the whole process and its forked loader workers, and stays until the process ends. MASS_MEMORY_REUSE=0 in
the environment leaves malloc as it is.
"""
from __future__ import annotations

import ctypes
import os
from dataclasses import dataclass

ENVIRONMENT_SWITCH = "MASS_MEMORY_REUSE"
# mallopt parameters (glibc malloc.h)
M_TRIM_THRESHOLD, M_TOP_PAD, M_MMAP_MAX = -1, -2, -4
TRIM_THRESHOLD_BYTES = 2 ** 31 - 1  # mallopt takes an int: the largest free heap top kept is 2 GiB
TOP_PAD_BYTES = 64 * 2 ** 20  # grow the heap in steps of at least 64 MiB (fewer brk calls; untouched pages cost nothing)


@dataclass(frozen=True)
class MemoryReuse:
    """Whether freed memory is kept for reuse, and why (not)."""

    enabled: bool
    reason: str

    def describe(self) -> str:
        if not self.enabled:
            return f"memory reuse off ({self.reason})"
        return f"memory reuse on ({self.reason}; {ENVIRONMENT_SWITCH}=0 turns it off)"


def _glibc() -> ctypes.CDLL | None:
    try:
        libc = ctypes.CDLL(None)
        libc.gnu_get_libc_version  # only glibc has it
    except (OSError, AttributeError, TypeError):
        return None
    libc.mallopt.argtypes, libc.mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return libc


def keep_freed_memory() -> MemoryReuse:
    """Set glibc's malloc to keep freed blocks in the heap (see the module docstring); safe to call repeatedly."""
    if os.environ.get(ENVIRONMENT_SWITCH, "1").strip() == "0":
        return MemoryReuse(False, f"{ENVIRONMENT_SWITCH}=0")
    libc = _glibc()
    if libc is None:
        return MemoryReuse(False, "the C library is not glibc")
    settings = {"M_MMAP_MAX": (M_MMAP_MAX, 0), "M_TRIM_THRESHOLD": (M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES),
                "M_TOP_PAD": (M_TOP_PAD, TOP_PAD_BYTES)}
    refused = [name for name, (parameter, value) in settings.items() if libc.mallopt(parameter, value) != 1]
    if refused:
        return MemoryReuse(False, f"glibc refused mallopt {', '.join(refused)}")
    return MemoryReuse(True, "glibc malloc: no mmap for large blocks, freed memory kept up to 2 GiB")
