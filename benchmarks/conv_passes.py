"""The three passes of each convolution of a MASS training step against the machine's SGEMM speed.

A convolution's training cost is three passes of equal FLOP count: the forward, the input gradient and the weight
gradient. This benchmark times each pass alone (oneDNN through `aten.convolution_backward`'s output mask, or the
block-wise tap sums where the step uses them) for every dense convolution of one forward pass of the in-context
network at the 3d_cpu shape, in the memory layout `conv3d` gives it (`uses_channels_last`, fp32), and sets the
rates beside the FLOP/s of one large SGEMM on the same threads: how close the convolutions already run to what
this CPU can do, and which pass is left behind.

    python benchmarks/conv_passes.py [--no-write] [--repeats N]
"""
from __future__ import annotations

import math
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.conv_layout import WORKLOADS, Convolution, network_convolutions  # noqa: E402
from benchmarks.measure import machine_description, publish_section, timing_arguments  # noqa: E402
from benchmarks.step_cost import measured_sgemm_flops, median_seconds  # noqa: E402
from mass_nn.networks.conv_blocks import uses_channels_last, uses_tap_weight_gradient  # noqa: E402
from mass_nn.networks.kernel_gradients import kernel_weight_gradients  # noqa: E402

PAGE = Path(__file__).resolve().parent.parent / "documentation" / "benchmarks.md"
WORKLOAD = "3d_cpu, batch 2"
PASSES = ("forward", "input gradient", "weight gradient")


def output_shape(conv: Convolution) -> tuple[int, ...]:
    """[batch, out channels, *size] of the convolution's output (dilation 1)."""
    batch, _, *size = conv.input_shape
    kernel = conv.weight_shape[2:]
    out = [(side + 2 * pad - k) // stride + 1 for side, pad, k, stride in zip(size, conv.padding, kernel, conv.stride)]
    return (batch, conv.weight_shape[0], *out)


def pass_flops(conv: Convolution) -> float:
    """FLOPs of one pass: 2 × output voxels × in channels × kernel volume (each of the three passes has as many)."""
    return 2.0 * math.prod(output_shape(conv)) * math.prod(conv.weight_shape[1:])


def uses_tap_sums(conv: Convolution) -> bool:
    """Whether an fp32 training step takes this convolution's weight gradient from `kernel_gradients` (conv3d's
    own rule, `uses_tap_weight_gradient`, asked with empty tensors of its shapes)."""
    weight = torch.empty(conv.weight_shape, requires_grad=True)
    with torch.enable_grad():
        return uses_tap_weight_gradient(torch.empty(conv.input_shape), weight, conv.stride, conv.padding)


def pass_seconds(conv: Convolution, channels_last: bool, repeats: int) -> dict[str, float]:
    """Median seconds of the forward, the input gradient and the weight gradient of `conv`, each alone, with
    input, weight and output gradient in the given layout; the weight gradient by `kernel_gradients` where the
    step takes it from there (`uses_tap_sums`), else by oneDNN."""
    layout = torch.channels_last_3d if channels_last else torch.contiguous_format
    torch.manual_seed(0)
    x = torch.randn(conv.input_shape).contiguous(memory_format=layout)
    weight = torch.randn(conv.weight_shape).contiguous(memory_format=layout)
    grad = torch.randn(output_shape(conv)).contiguous(memory_format=layout)
    geometry = (conv.stride, conv.padding, (1, 1, 1), False, (0, 0, 0), 1)

    def backward(mask: list[bool]):
        return lambda: torch.ops.aten.convolution_backward(grad, x, weight, None, *geometry, mask)

    def tap_sums():
        return kernel_weight_gradients(x[:, 0], grad.transpose(0, 1))

    functions = (lambda: F.conv3d(x, weight, None, conv.stride, conv.padding), backward([True, False, False]),
                 tap_sums if uses_tap_sums(conv) else backward([False, True, False]))
    return {name: median_seconds(function, repeats) for name, function in zip(PASSES, functions)}


def measure(repeats: int) -> list[dict]:
    rows = []
    patch, batch = WORKLOADS[WORKLOAD]
    for conv, count in network_convolutions(patch, batch).items():
        channels_last = uses_channels_last(torch.empty(conv.input_shape), torch.empty(conv.weight_shape),
                                           dtype=torch.float32)
        seconds = pass_seconds(conv, channels_last, repeats)
        rows.append(dict(conv=conv, count=count, channels_last=channels_last, seconds=seconds,
                         flops=pass_flops(conv)))
        print(f"{conv.label()} x{count}: " + ", ".join(f"{k} {v * 1e3:.1f} ms" for k, v in seconds.items()),
              flush=True)
    return rows


def section(rows: list[dict], sgemm: float, threads: int, seconds: float) -> str:
    lines = ["## Convolution passes against SGEMM: forward, input gradient, weight gradient", "",
             f"Machine: {machine_description()}; {threads} torch threads; one SGEMM of 1536² on the same threads: "
             f"**{sgemm / 1e9:.0f} GFLOP/s**. Every dense convolution of one forward pass of the in-context network "
             f"at {WORKLOAD} (64×48×48, channels 8-128, {len(rows)} distinct convolutions), fp32, in the layout "
             f"`conv3d` gives it; each pass timed alone (median of repeats; GFLOP/s = the pass's FLOPs / its time; "
             f"each pass has the forward's FLOP count; a training step skips the input gradient of the 1 → 8 stem "
             f"convolutions, whose input is the image, and takes their weight gradient from the block-wise tap sums "
             f"of mass_nn/networks/kernel_gradients.py, timed so here). Produced by "
             f"`python benchmarks/conv_passes.py` in "
             f"{seconds / 60:.1f} min.", "",
             "| convolution | layout | calls per forward | " + " | ".join(f"{p} ms (GFLOP/s)" for p in PASSES) + " |",
             "|---|---|---|---|---|---|"]
    totals = {p: 0.0 for p in PASSES}
    flops = 0.0
    for r in sorted(rows, key=lambda r: -r["count"] * sum(r["seconds"].values())):
        cells = [f"{r['seconds'][p] * 1e3:.1f} ({r['flops'] / r['seconds'][p] / 1e9:.0f})" for p in PASSES]
        layout = ("channels-last" if r["channels_last"] else "NCDHW") + (
            "; weight gradient: tap sums" if uses_tap_sums(r["conv"]) else "")
        lines.append(f"| {r['conv'].label()} | {layout} | {r['count']} | "
                     + " | ".join(cells) + " |")
        for p in PASSES:
            totals[p] += r["count"] * r["seconds"][p]
        flops += r["count"] * r["flops"]
    rates = {p: flops / totals[p] for p in PASSES}
    lines.append("| **all, weighted by calls** | | | " + " | ".join(
        f"**{totals[p] * 1e3:.0f} ({rates[p] / 1e9:.0f})**" for p in PASSES) + " |")
    at_forward_rate = flops / rates["forward"]
    reading = (f"Reading: the forward passes run at {rates['forward'] / sgemm:.0%} of this machine's SGEMM speed, the "
               f"input gradients at {rates['input gradient'] / sgemm:.0%}, the weight gradients at "
               f"{rates['weight gradient'] / sgemm:.0%}; at the forward's rate the weight gradients would take "
               f"{at_forward_rate * 1e3:.0f} instead of {totals['weight gradient'] * 1e3:.0f} ms per forward pass's "
               f"convolutions.")
    return "\n".join(lines + ["", reading])


def main(argv=None) -> int:
    args = timing_arguments(__doc__.splitlines()[0], argv)
    start = time.perf_counter()
    sgemm = measured_sgemm_flops()
    rows = measure(args.repeats)
    publish_section(PAGE, "conv_passes", section(rows, sgemm, args.threads, time.perf_counter() - start),
                    write=not args.no_write)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
