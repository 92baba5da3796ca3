"""Where one MASSPretrainer step's time goes: its FLOPs, the processor's peak fp32 FLOP/s, and a profile by part.

The peak is derived from what the OS reports, never measured into existence:
    usable cores (os.sched_getaffinity) × clock (cpufreq's cpuinfo_max_freq, else the largest "cpu MHz" in
    /proc/cpuinfo) × fp32 SIMD lanes (16 with avx512f, 8 with avx/avx2, else 4) × 2 when the CPU has fused
    multiply-add (flag fma: a multiply and an add per lane and cycle) × 2 FMA pipes per core.
Two 256-bit FMA pipes per core is what every x86 server core since Intel Haswell and AMD Zen 2 has; Zen 1
(two 128-bit pipes) and some AVX-512 parts with one 512-bit pipe have half, so on those the share of peak is
understated by 2×. Beside it, the sgemm rate of a large matrix product is measured: the practical ceiling that
oneDNN/BLAS reach on this machine.

The profile splits one step into encoder (the reference and the query pass), task encoder, decoder, head, loss,
optimiser (gradient clipping + LAMB) and EMA: each part's forward and backward run alone on the tensors the full
step would give it (inputs detached, fixed upstream gradients), so its time, FLOPs and top operators belong to it.
"""
from __future__ import annotations

import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
from torch.profiler import ProfilerActivity, profile
from torch.utils.flop_counter import FlopCounterMode

from mass_nn.threads import usable_cores

PARTS = ("encoder", "task encoder", "decoder", "head", "loss", "optimiser", "EMA")
FMA_PIPES_PER_CORE = 2


@dataclass(frozen=True)
class PeakEstimate:
    """The processor's peak fp32 FLOP/s and the numbers it was derived from."""

    cores: int
    ghz: float
    lanes: int
    fma: bool
    clock_source: str

    @property
    def flops(self) -> float:
        return self.cores * self.ghz * 1e9 * self.lanes * (2 if self.fma else 1) * FMA_PIPES_PER_CORE

    def formula(self) -> str:
        return (f"{self.cores} cores × {self.ghz:.2f} GHz ({self.clock_source}) × {self.lanes} fp32 lanes × "
                f"{2 if self.fma else 1} (FMA) × {FMA_PIPES_PER_CORE} pipes = {self.flops / 1e9:.0f} GFLOP/s")


def _cpu_flags_and_mhz() -> tuple[set[str], float]:
    flags, mhz = set(), 0.0
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "flags":
                flags = set(value.split())
            elif key.strip() == "cpu MHz":
                mhz = max(mhz, float(value))
    except OSError:
        pass
    return flags, mhz


def peak_fp32_flops() -> PeakEstimate:
    """The peak from cores, clock, SIMD width and FMA as the OS reports them (see the module docstring)."""
    flags, mhz = _cpu_flags_and_mhz()
    ghz, source = mhz / 1e3, "cpu MHz in /proc/cpuinfo"
    max_freq = Path("/sys/devices/system/cpu/cpu0/cpufreq/cpuinfo_max_freq")
    if max_freq.is_file():
        ghz, source = int(max_freq.read_text()) / 1e6, "cpufreq cpuinfo_max_freq"
    lanes = 16 if "avx512f" in flags else 8 if flags & {"avx", "avx2"} else 4
    return PeakEstimate(cores=usable_cores(), ghz=ghz, lanes=lanes, fma="fma" in flags or lanes == 16,
                        clock_source=source)


def measured_sgemm_flops(size: int = 1536, repeats: int = 5) -> float:
    """FLOP/s of a size³ fp32 matrix product with torch's current thread count (median of repeats)."""
    a, b = torch.randn(size, size), torch.randn(size, size)
    a @ b
    seconds = []
    for _ in range(repeats):
        started = time.perf_counter()
        a @ b
        seconds.append(time.perf_counter() - started)
    return 2 * size ** 3 / statistics.median(seconds)


@dataclass
class PartCost:
    """One part of the step: median seconds, FLOPs and its top operators (name, self seconds, calls)."""

    name: str
    seconds: float
    flops: float
    top_ops: list[tuple[str, float, int]] = field(default_factory=list)


def median_seconds(function: Callable[[], object], repeats: int) -> float:
    """Median wall time of `repeats` calls after one untimed warm-up call."""
    function()
    seconds = []
    for _ in range(repeats):
        started = time.perf_counter()
        function()
        seconds.append(time.perf_counter() - started)
    return statistics.median(seconds)


def count_flops(function: Callable[[], object]) -> float:
    """FLOPs of the matrix products and convolutions (forward and backward) one call executes."""
    counter = FlopCounterMode(display=False)
    with counter:
        function()
    return float(counter.get_total_flops())


def top_operators(function: Callable[[], object], count: int) -> list[tuple[str, float, int]]:
    """The `count` operators with the most self CPU time in one profiled call: (name, seconds, calls)."""
    with profile(activities=[ProfilerActivity.CPU]) as profiler:
        function()
    events = sorted(profiler.key_averages(), key=lambda e: -e.self_cpu_time_total)
    return [(e.key, e.self_cpu_time_total / 1e6, e.count) for e in events[:count]]


def _backward(outputs: list[torch.Tensor]) -> None:
    grads = [torch.ones_like(o) for o in outputs]
    torch.autograd.backward(outputs, grads)


def _leaves(tensors) -> list[torch.Tensor]:
    return [t.detach().requires_grad_() for t in tensors]


def part_functions(network, loss, optimizer, ema, grad_clip: float, tensors: dict) -> dict[str, Callable]:
    """One callable per part of the step, each running that part's forward and backward (or update) alone on
    the inputs the full step gives it. `tensors` are a batch on the network's device (batch_to_device)."""
    query, reference = tensors["query_image"], tensors["reference_image"]
    masks, query_masks, weights = tensors["reference_masks"], tensors["query_masks"], tensors["task_weights"]
    stages = network.config.num_prior_stages
    with torch.no_grad():
        reference_features, query_features = network.encoder(reference), network.encoder(query)
        embedding = network.task_encoder(reference_features[:stages], masks)
        dense, posteriors = network.decoder(query_features, embedding)
        logits = network.head(dense, posteriors)
    network.zero_grad(set_to_none=True)
    full_loss, _ = loss(network(query, reference, masks), query_masks, weights)
    full_loss.backward()  # the optimiser and EMA parts step on real gradients

    def encoder():
        _backward(network.encoder(reference) + network.encoder(query))

    def task_encoder():
        _backward(network.task_encoder(_leaves(reference_features[:stages]), masks))

    def decoder():
        features_in, embedding_in = _leaves(query_features), _leaves(embedding)
        out, posts = network.decoder(features_in, embedding_in)
        _backward([out, *posts])

    def head():
        _backward([network.head(*_leaves([dense]), _leaves(posteriors))])

    def loss_part():
        value, _ = loss(*_leaves([logits]), query_masks, weights)
        value.backward()

    def optimiser():
        torch.nn.utils.clip_grad_norm_(network.parameters(), grad_clip)
        optimizer.step()

    def ema_update():
        ema.update(network)

    return dict(zip(PARTS, (encoder, task_encoder, decoder, head, loss_part, optimiser, ema_update)))


def measure_parts(functions: dict[str, Callable], repeats: int, top: int = 5) -> list[PartCost]:
    """Median seconds, FLOPs and top operators of every part."""
    costs = []
    for name, function in functions.items():
        seconds = median_seconds(function, repeats)
        costs.append(PartCost(name, seconds, count_flops(function), top_operators(function, top)))
    return costs
