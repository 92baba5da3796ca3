"""Which configuration a command uses when none is named: one rule for every command.

Training and mask generation follow the machine (the paper's `3d_paper` where CUDA is available, the 2-core
`3d_cpu` elsewhere), so the documented sequence plan -> masks -> train finds its masks on either machine.
Commands that start from a checkpoint (few-shot protocol) use the checkpoint's own configuration.
"""
from __future__ import annotations

GPU_CONFIGURATION = "3d_paper"
CPU_CONFIGURATION = "3d_cpu"


def default_configuration(device_type: str) -> str:
    """The paper's configuration on a CUDA device, the 2-core configuration elsewhere."""
    return GPU_CONFIGURATION if device_type == "cuda" else CPU_CONFIGURATION
