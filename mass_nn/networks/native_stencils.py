"""The compiled 3×3×3 stencil kernels (`native/stencil_3x3x3.cpp`): built on first use, cached, optional.

The mask merge's convolution of B·K one-channel maps with shared 3×3×3 kernels, and those kernels' weight
gradient, cost a few FLOPs per byte; torch runs them through oneDNN's depthwise path, which spends most of its time
reordering the maps (forward) or takes a slow generic path (weight gradient). The C++ source does each in one pass
over the maps, in fp32 (fp64 for fp64 maps), vectorised for the processor it is built on.

Building needs a C++ compiler (g++ or clang) and takes about 30 s, once per machine: the library is cached
under ~/.cache/mass_nn/native (or $MASS_NATIVE_CACHE), in a folder named by a hash of the source, torch's version,
the compiler flags and the processor's model and instruction sets, so a cache shared between different machines
never hands one a library built for another. When the build fails, one warning says why and the torch path runs
(same results up to summation order). MASS_NATIVE_KERNELS=0 in the environment turns the kernels off.
"""
from __future__ import annotations

import functools
import hashlib
import logging
import os
import platform
import time
from pathlib import Path
from types import ModuleType

import torch

logger = logging.getLogger(__name__)

ENVIRONMENT_SWITCH = "MASS_NATIVE_KERNELS"
CACHE_VARIABLE = "MASS_NATIVE_CACHE"
SOURCE = Path(__file__).resolve().parent / "native" / "stencil_3x3x3.cpp"
COMPILER_FLAGS = ("-O3", "-march=native", "-ffp-contract=fast")
SUPPORTED_DTYPES = (torch.float32, torch.bfloat16, torch.float64)


def _processor_signature() -> str:
    """The processor's model name and instruction-set flags (Linux: /proc/cpuinfo), else what platform reports."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return f"{platform.machine()} {platform.processor()}"
    wanted = [line for line in lines if line.split(":")[0].strip() in ("model name", "flags", "Features")]
    return "\n".join(sorted(set(wanted))) or platform.machine()


def build_key() -> str:
    """The cache folder's name: what the built library depends on, hashed."""
    digest = hashlib.sha256()
    for part in (SOURCE.read_bytes(), torch.__version__.encode(), " ".join(COMPILER_FLAGS).encode(),
                 _processor_signature().encode()):
        digest.update(part)
        digest.update(b"\0")
    return digest.hexdigest()[:16]


def cache_root() -> Path:
    return Path(os.environ.get(CACHE_VARIABLE) or Path.home() / ".cache" / "mass_nn" / "native")


def enabled_by_environment() -> bool:
    return os.environ.get(ENVIRONMENT_SWITCH, "1").strip().lower() not in ("0", "false", "off", "no")


def _quiet_cpp_extension() -> ModuleType:
    """torch's cpp_extension module, imported without its warning that no CUDA runtime was found (this build is
    CPU-only). Imported here, not at the top, because the import probes for CUDA, which a process that never
    builds anything should neither pay for nor print."""
    torch_logger = logging.getLogger("torch.utils.cpp_extension")
    level = torch_logger.level
    torch_logger.setLevel(logging.ERROR)
    try:
        from torch.utils import cpp_extension
    finally:
        torch_logger.setLevel(level)
    return cpp_extension


@functools.lru_cache(maxsize=1)
def stencil_library() -> ModuleType | None:
    """The built extension (functions `forward`, `weight_gradient`), or None when it is turned off or cannot be
    built (logged once)."""
    if not enabled_by_environment():
        logger.info("compiled stencil kernels off (%s=0): the torch path runs", ENVIRONMENT_SWITCH)
        return None
    key = build_key()
    directory = cache_root() / key
    try:
        directory.mkdir(parents=True, exist_ok=True)
        started = time.perf_counter()
        library = _quiet_cpp_extension().load(name=f"mass_nn_stencil_{key}", sources=[str(SOURCE)],
                                              extra_cflags=list(COMPILER_FLAGS), build_directory=str(directory),
                                              with_cuda=False, verbose=False)
    except Exception as error:  # a missing compiler, a read-only cache, a failed build: all mean the torch path
        first_line = (str(error).strip().splitlines() or [type(error).__name__])[0]
        logger.warning("compiled stencil kernels unavailable (%s: %s); the torch path runs instead (same results, "
                       "slower). Building them in %s needs a C++ compiler (g++); %s=0 skips the attempt",
                       type(error).__name__, first_line[:200], directory, ENVIRONMENT_SWITCH)
        return None
    logger.info("compiled stencil kernels ready (%s, %.1f s; %s=0 turns them off)", directory,
                time.perf_counter() - started, ENVIRONMENT_SWITCH)
    return library


def usable_for(maps: torch.Tensor) -> bool:
    """Whether the compiled kernels take these maps: on the CPU, in a supported dtype, the library built."""
    return maps.device.type == "cpu" and maps.dtype in SUPPORTED_DTYPES and stencil_library() is not None


def stencil_forward(maps: torch.Tensor, kernels: torch.Tensor) -> list[torch.Tensor]:
    """maps [N, D, H, W] (CPU, contiguous) each cross-correlated (padding 1) with kernels [S, 3, 3, 3] in the
    maps' dtype → S tensors [N, D, H, W]."""
    return stencil_library().forward(maps, kernels.detach().to(maps.dtype))


def stencil_weight_gradient(maps: torch.Tensor, grads: list[torch.Tensor]) -> torch.Tensor:
    """The S kernels' gradients [S, 3, 3, 3] in fp64 from maps [N, D, H, W] and S output gradients (CPU, any
    strides), computed in the wider of the two dtypes."""
    dtype = torch.promote_types(maps.dtype, grads[0].dtype)
    return stencil_library().weight_gradient(maps.to(dtype).contiguous(),
                                             [grad.to(dtype).contiguous() for grad in grads])
