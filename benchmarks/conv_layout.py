"""Each convolution of a MASS training step in both memory layouts: NCDHW against channels-last (NDHWC).

`mass_nn.networks.conv_blocks.conv3d` runs a CPU convolution channels-last when `uses_channels_last` says so (by
its input and output channels and the dtype it computes in). This benchmark checks that rule on the machine at
hand (oneDNN picks different kernels on different CPUs): it records the dense convolutions of one forward pass of
the in-context network at a 3d_cpu shape (channels 8-128, one block per stage, 64×48×48 patch, batch 2, 13 tasks)
and at the recipe's batch-16 shape (48³), times forward + backward of each distinct one in both layouts, in fp32
and under bf16 autocast (on CPUs that compute bf16 natively), and prints which layout the rule takes and what all
the convolutions cost under NCDHW only, under the rule and under the faster layout of each. Layout copies are
part of the channels-last side, as in the network.

    python benchmarks/conv_layout.py [--no-write]
"""
from __future__ import annotations

import contextlib
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils._python_dispatch import TorchDispatchMode

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.measure import machine_description, publish_section, timing_arguments  # noqa: E402
from benchmarks.step_cost import median_seconds  # noqa: E402
from mass_nn.networks import conv_blocks  # noqa: E402
from mass_nn.networks.conv_blocks import uses_channels_last  # noqa: E402
from mass_nn.networks.in_context.config import InContextNetworkConfig  # noqa: E402
from mass_nn.networks.in_context.in_context_model import InContextSegmenter  # noqa: E402
from mass_nn.training.precision import cpu_has_native_bf16, step_autocast  # noqa: E402

PAGE = Path(__file__).resolve().parent.parent / "documentation" / "benchmarks.md"
NUM_TASKS = 13
WORKLOADS = {"3d_cpu, batch 2": ([64, 48, 48], 2), "48³, batch 16": ([48, 48, 48], 16)}


@dataclass(frozen=True)
class Convolution:
    """One dense convolution call: shapes and geometry, as aten.convolution receives them."""

    input_shape: tuple[int, ...]
    weight_shape: tuple[int, ...]
    stride: tuple[int, ...]
    padding: tuple[int, ...]

    def label(self) -> str:
        out_channels, in_channels, *kernel = self.weight_shape
        batch, _, *size = self.input_shape
        stride = "" if set(self.stride) == {1} else f", stride {self.stride[0]}"
        kernel_text, size_text = "×".join(map(str, kernel)), "×".join(map(str, size))
        return f"{in_channels} → {out_channels}, {kernel_text} on {batch}×{size_text}{stride}"


class ConvolutionRecorder(TorchDispatchMode):
    """Collects the dense (groups 1, not transposed) convolutions a forward pass calls, with their multiplicity."""

    def __init__(self):
        super().__init__()
        self.counts: dict[Convolution, int] = {}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func is torch.ops.aten.convolution.default:
            x, weight, _, stride, padding, dilation, transposed, _, groups = args
            if groups == 1 and not transposed and set(dilation) == {1}:
                key = Convolution(tuple(x.shape), tuple(weight.shape), tuple(stride), tuple(padding))
                self.counts[key] = self.counts.get(key, 0) + 1
        return func(*args, **(kwargs or {}))


def network_convolutions(patch: list[int], batch: int) -> dict[Convolution, int]:
    """The dense convolutions of one forward pass of the 3d_cpu-shaped network on `batch` samples."""
    config = InContextNetworkConfig(in_channels=1, channels=[8, 16, 32, 64, 128], num_blocks=[1, 1, 1, 1],
                                    input_size_zyx=patch)
    network = InContextSegmenter(config)
    images = torch.randn(batch, 1, *patch)
    masks = (torch.rand(batch, NUM_TASKS, *patch) > 0.5).float()
    # with autograd on, as in a training step: without it a batch of one would take conv3d's direct oneDNN call,
    # which is not an aten.convolution
    with ConvolutionRecorder() as recorder:
        network(images, images, masks)
    return recorder.counts


@contextlib.contextmanager
def layout_forced(channels_last: bool):
    """`conv3d` with every dense convolution forced channels-last (or NCDHW): each side is timed through the
    network's own code, layout copies and gradient copy included."""
    saved = conv_blocks.CHANNELS_LAST_FORCED
    conv_blocks.CHANNELS_LAST_FORCED = channels_last
    try:
        yield
    finally:
        conv_blocks.CHANNELS_LAST_FORCED = saved


def time_forward_backward(conv: Convolution, channels_last: bool, precision: str, repeats: int) -> float:
    """Median seconds of forward + backward (input and weight gradients) of `conv` in one layout."""
    torch.manual_seed(0)
    x = torch.randn(conv.input_shape, requires_grad=True)
    weight = torch.randn(conv.weight_shape, requires_grad=True)

    def step():
        x.grad = weight.grad = None
        with step_autocast(precision, torch.device("cpu")):
            out = conv_blocks.conv3d(x, weight, None, conv.stride, conv.padding)
        out.float().sum().backward()

    with layout_forced(channels_last):
        return median_seconds(step, repeats)


def measure(precisions: list[str], repeats: int) -> list[dict]:
    rows = []
    for workload, (patch, batch) in WORKLOADS.items():
        for conv, count in network_convolutions(patch, batch).items():
            for precision in precisions:
                rule = uses_channels_last(torch.empty(conv.input_shape), torch.empty(conv.weight_shape),
                                          dtype=torch.bfloat16 if precision == "bf16" else torch.float32)
                ncdhw = time_forward_backward(conv, False, precision, repeats)
                ndhwc = time_forward_backward(conv, True, precision, repeats)
                rows.append(dict(workload=workload, conv=conv, count=count, precision=precision, ncdhw=ncdhw,
                                 ndhwc=ndhwc, rule=rule))
                print(f"{workload} {precision} {conv.label()} x{count}: {ncdhw * 1e3:.1f} vs {ndhwc * 1e3:.1f} ms",
                      flush=True)
    return rows


def section(rows: list[dict], precisions: list[str], threads: int, seconds: float) -> str:
    lines = ["## Convolution memory layout: NCDHW against channels-last, per convolution of a MASS step", "",
             f"Machine: {machine_description()}; {threads} torch threads. Every dense convolution of one forward pass "
             f"of the in-context network at two training shapes (channels 8-128, one residual block per stage, "
             f"{NUM_TASKS} tasks), forward + backward timed alone in each layout through `conv3d` "
             f"(mass_nn/networks/conv_blocks.py; median of repeats; the channels-last side includes its layout "
             f"copies and the gradient's copy back). `rule`: the layout `conv3d` gives it in the network. Produced "
             f"by `python benchmarks/conv_layout.py` in "
             f"{seconds / 60:.1f} min.", "",
             "| shape | precision | convolution | calls per forward | NCDHW (ms) | channels-last (ms) | "
             "**NCDHW / channels-last** | rule |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['workload']} | {r['precision']} | {r['conv'].label()} | {r['count']} | "
                     f"{r['ncdhw'] * 1e3:.1f} | {r['ndhwc'] * 1e3:.1f} | **{r['ncdhw'] / r['ndhwc']:.2f}×** | "
                     f"{'channels-last' if r['rule'] else 'NCDHW'} |")
    lines += ["", "| shape | precision | all NCDHW (ms) | the rule (ms) | each at its faster layout (ms) | "
              "rule's speed-up |", "|---|---|---|---|---|---|"]
    reading = []
    for workload in WORKLOADS:
        for precision in precisions:
            group = [r for r in rows if r["workload"] == workload and r["precision"] == precision]
            plain = sum(r["count"] * r["ncdhw"] for r in group)
            ruled = sum(r["count"] * (r["ndhwc"] if r["rule"] else r["ncdhw"]) for r in group)
            best = sum(r["count"] * min(r["ncdhw"], r["ndhwc"]) for r in group)
            lines.append(f"| {workload} | {precision} | {plain * 1e3:.0f} | {ruled * 1e3:.0f} | {best * 1e3:.0f} | "
                         f"**{plain / ruled:.2f}×** |")
            reading.append(f"{workload}, {precision}: the rule takes the convolutions from {plain * 1e3:.0f} to "
                           f"{ruled * 1e3:.0f} ms ({plain / ruled:.2f}×); the faster layout of each would give "
                           f"{best * 1e3:.0f} ms")
    return "\n".join(lines + ["", "Reading: " + "; ".join(reading) + "."])


def main(argv=None) -> int:
    args = timing_arguments(__doc__.splitlines()[0], argv)
    precisions = ["fp32"] + (["bf16"] if cpu_has_native_bf16() else [])
    start = time.perf_counter()
    rows = measure(precisions, args.repeats)
    publish_section(PAGE, "conv_layout", section(rows, precisions, args.threads, time.perf_counter() - start),
                    write=not args.no_write)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
