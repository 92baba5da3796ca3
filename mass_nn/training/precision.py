"""Which arithmetic a training step runs in (mass_train --precision): fp32, or bf16 autocast.

- "auto": bf16 autocast on CUDA, as the paper trained; fp32 on CPU.
- "bf16": bf16 autocast on any device. On a CPU it pays off only where the processor computes bf16 natively
  (AVX-512 BF16 or AMX): on a 2-core AVX-512 BF16 EPYC the 3d_cpu MASS step is 1.14-1.21× faster, with loss
  curves within the spread of two fp32 seeds (documentation/pretraining.md#bf16-on-cpu); elsewhere oneDNN
  emulates bf16 and the step gets slower, which the log line says.
- "fp32": no autocast anywhere.
Under autocast the losses, the task encoder's pooling and the trilinear resizes still compute in fp32, and so do
the convolutions whose kernel is larger than their input (mass_nn.networks.conv_blocks.SmallMapSafeConv3d).
"""
from __future__ import annotations

from contextlib import nullcontext
from pathlib import Path

import torch

from mass_nn.errors import MassError

PRECISIONS = ("auto", "fp32", "bf16")
NATIVE_BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16")


def uses_bf16(precision: str, device: torch.device) -> bool:
    """Whether steps on `device` run under bf16 autocast for this `precision` setting."""
    if precision not in PRECISIONS:
        raise MassError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r} (mass_train "
                        f"--precision)")
    return precision == "bf16" or (precision == "auto" and device.type == "cuda")


def step_autocast(precision: str, device: torch.device):
    """The context a training step's forward pass and loss run in."""
    if uses_bf16(precision, device):
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return nullcontext()


def cpu_flags(cpuinfo: Path = Path("/proc/cpuinfo")) -> set[str] | None:
    """The CPU flags the OS reports (the first processor's line); None where it reports none (not Linux)."""
    try:
        text = cpuinfo.read_text()
    except OSError:
        return None
    return next((set(line.split(":", 1)[1].split()) for line in text.splitlines() if line.startswith("flags")),
                None)


def cpu_has_native_bf16(cpuinfo: Path = Path("/proc/cpuinfo")) -> bool | None:
    """True / False from the CPU flags the OS reports; None where it reports none (not Linux)."""
    flags = cpu_flags(cpuinfo)
    return None if flags is None else any(flag in flags for flag in NATIVE_BF16_CPU_FLAGS)


def describe_precision(precision: str, device: torch.device) -> str:
    """One log line: the arithmetic chosen and, for bf16 on CPU, whether the processor has it natively."""
    if not uses_bf16(precision, device):
        return f"precision fp32 ({precision})"
    if device.type != "cpu":
        return f"precision bf16 autocast ({precision})"
    support = {True: "the CPU computes bf16 natively",
               False: f"this CPU has no native bf16 (no {' / '.join(NATIVE_BF16_CPU_FLAGS)}): emulated, expect "
                      f"slower steps than fp32",
               None: "native bf16 support unknown"}[cpu_has_native_bf16()]
    return f"precision bf16 autocast on CPU ({support})"
