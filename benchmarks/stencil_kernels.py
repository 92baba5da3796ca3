"""The compiled 3×3×3 stencil kernels against the torch path they replace, alone and in the network's step.

`mass_nn/networks/native_stencils.py` runs the task encoder's mask merge (S = 3 kernels on B·K one-channel maps)
and the weight gradient of 3×3×3 kernels on one-channel maps (the mask merge and the stem) as compiled loops; the
reference is the torch path of the same tree (oneDNN's depthwise convolution, the block-wise matrix products of
`kernel_gradients.py`), timed in the same process on the same tensors, alternating. Then the in-context network's
forward + backward at the CPU recipe's batch-16 bf16 shape and at 3d_cpu, with either path.

    python benchmarks/stencil_kernels.py [--no-write] [--repeats N]
"""
from __future__ import annotations

import contextlib
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.measure import machine_description, publish_section, timing_arguments  # noqa: E402
from benchmarks.step_cost import median_seconds  # noqa: E402
from mass_nn.memory_reuse import keep_freed_memory  # noqa: E402
from mass_nn.networks import native_stencils  # noqa: E402
from mass_nn.networks.in_context.config import InContextNetworkConfig  # noqa: E402
from mass_nn.networks.in_context.in_context_model import InContextSegmenter  # noqa: E402
from mass_nn.networks.in_context.shared_kernel_conv import shared_maps_conv3d  # noqa: E402
from mass_nn.networks.kernel_gradients import kernel_weight_gradients  # noqa: E402

PAGE = Path(__file__).resolve().parent.parent / "documentation" / "benchmarks.md"
# (name, maps [N, D, H, W], kernels S, dtype): the mask merge at the recipe's batch 16 × 16 tasks and at 3d_cpu's
# batch 2 × 13 tasks, and the stem's 8 kernels on a batch of 2 images (weight gradient only)
OPERATIONS = (("mask merge, batch 16 × 16 tasks, 48³, bf16", (256, 48, 48, 48), 3, torch.bfloat16, True),
              ("mask merge, batch 16 × 16 tasks, 48³, fp32", (256, 48, 48, 48), 3, torch.float32, True),
              ("mask merge, 3d_cpu: batch 2 × 13 tasks, 64×48×48, fp32", (26, 64, 48, 48), 3, torch.float32, True),
              ("stem, 3d_cpu: batch 2, 8 kernels, fp32 (weight gradient)", (2, 64, 48, 48), 8, torch.float32, False))
# (name, patch, batch, tasks, bf16): the CPU recipe's step shape and 3d_cpu's
NETWORKS = (("recipe: 48³, batch 16, 16 tasks, bf16", (48, 48, 48), 16, 16, True),
            ("3d_cpu: 64×48×48, batch 2, 13 tasks, fp32", (64, 48, 48), 2, 13, False))


@contextlib.contextmanager
def torch_path():
    """Everything inside runs the torch path, as with MASS_NATIVE_KERNELS=0."""
    usable_for = native_stencils.usable_for
    native_stencils.usable_for = lambda maps: False
    try:
        yield
    finally:
        native_stencils.usable_for = usable_for


def both_paths(function, repeats: int) -> tuple[float, float]:
    """(torch path, compiled) median seconds of `function`, the two measured in alternating rounds."""
    reference, compiled = [], []
    for _ in range(repeats):
        with torch_path():
            reference.append(median_seconds(function, 1))
        compiled.append(median_seconds(function, 1))
    return statistics.median(reference), statistics.median(compiled)


def measure_operations(repeats: int) -> list[tuple[str, str, float, float]]:
    rows = []
    generator = torch.Generator().manual_seed(0)
    for name, shape, count, dtype, with_forward in OPERATIONS:
        maps = (torch.rand(shape, generator=generator) > 0.6).to(dtype)
        kernels = torch.randn(count, 3, 3, 3, generator=generator)
        grads = [torch.randn(shape, generator=generator).to(dtype) for _ in range(count)]
        if with_forward:
            rows.append((name, "forward", *both_paths(lambda: shared_maps_conv3d(maps, kernels), repeats)))
        rows.append((name, "weight gradient", *both_paths(lambda: kernel_weight_gradients(maps, grads), repeats)))
    return rows


def measure_networks(repeats: int) -> list[tuple[str, float, float]]:
    rows = []
    for name, patch, batch, tasks, bf16 in NETWORKS:
        torch.manual_seed(0)
        config = InContextNetworkConfig(in_channels=1, channels=[8, 16, 32, 64, 128], num_blocks=[1, 1, 1, 1],
                                        input_size_zyx=list(patch))
        network = InContextSegmenter(config)
        query, reference = torch.randn(batch, 1, *patch), torch.randn(batch, 1, *patch)
        coarse = [side // 8 for side in patch]
        masks = (torch.rand(batch, tasks, *coarse) > 0.7).float()
        for axis in (2, 3, 4):
            masks = masks.repeat_interleave(8, axis)

        def forward_backward():
            network.zero_grad(set_to_none=True)
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                output = network(query, reference, masks)
            output.float().sum().backward()

        rows.append((name, *both_paths(forward_backward, repeats)))
    return rows


def section(operations, networks, threads: int, built: str, seconds: float) -> str:
    lines = ["## Compiled stencil kernels: the mask merge and one-channel weight gradients against the torch path",
             "",
             f"Machine: {machine_description()}; {threads} torch threads; {built}. Reference: the torch path of the "
             "same tree (oneDNN's depthwise convolution forward, the block-wise matrix products of "
             "`kernel_gradients.py` for the weight gradient), on the same tensors in the same process, alternating "
             f"with the compiled kernels (median of rounds). Produced by `python benchmarks/stencil_kernels.py` in "
             f"{seconds / 60:.1f} min.",
             "",
             "| operation | pass | torch path (ms) | compiled (ms) | **speed-up** |",
             "|---|---|---|---|---|"]
    lines += [f"| {name} | {step} | {reference * 1e3:.1f} | {compiled * 1e3:.1f} | **{reference / compiled:.2f}×** |"
              for name, step, reference, compiled in operations]
    lines += ["", "The in-context network's forward + backward (random weights, masks of 8³ blocks), either path:", "",
              "| shape | torch path (s) | compiled (s) | **speed-up** |", "|---|---|---|---|"]
    lines += [f"| {name} | {reference:.3f} | {compiled:.3f} | **{reference / compiled:.2f}×** |"
              for name, reference, compiled in networks]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    args = timing_arguments(__doc__.splitlines()[0], argv)
    start = time.perf_counter()
    keep_freed_memory()  # as in mass_train: large blocks are reused, not page-faulted afresh every call
    library = native_stencils.stencil_library()
    if library is None:
        print("the compiled stencil kernels could not be built here (see the warning above); nothing to compare")
        return 1
    built = f"kernels built with {' '.join(native_stencils.COMPILER_FLAGS)}"
    operations, networks = measure_operations(args.repeats), measure_networks(args.repeats)
    publish_section(PAGE, "stencil_kernels", section(operations, networks, args.threads, built,
                                                     time.perf_counter() - start), write=not args.no_write)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
