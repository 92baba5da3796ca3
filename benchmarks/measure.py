"""Run a command and measure its wall time and the peak resident memory of its whole process tree."""
from __future__ import annotations

import argparse
import os
import platform
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import psutil
import torch

from mass_nn.threads import usable_cores
from mass_nn.training.precision import NATIVE_BF16_CPU_FLAGS, cpu_flags


@dataclass
class Measurement:
    seconds: float
    peak_rss_bytes: int
    returncode: int


def _tree_rss(process: psutil.Process) -> int:
    total = 0
    for p in [process, *process.children(recursive=True)]:
        try:
            total += p.memory_info().rss
        except psutil.NoSuchProcess:
            pass
    return total


def run_measured(command: list[str], env: dict | None = None, log_path: Path | None = None,
                 poll_seconds: float = 0.05) -> Measurement:
    """Run `command`; sample the summed RSS of it and all its descendants every `poll_seconds`."""
    log = open(log_path, "w") if log_path else subprocess.DEVNULL
    start = time.perf_counter()
    proc = subprocess.Popen(command, env={**os.environ, **(env or {})}, stdout=log, stderr=subprocess.STDOUT)
    handle = psutil.Process(proc.pid)
    peak = 0
    stop = threading.Event()

    def sample():
        nonlocal peak
        while not stop.is_set():
            try:
                peak = max(peak, _tree_rss(handle))
            except psutil.NoSuchProcess:
                return
            time.sleep(poll_seconds)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    returncode = proc.wait()
    seconds = time.perf_counter() - start
    stop.set()
    sampler.join()
    if log_path:
        log.close()
    return Measurement(seconds=seconds, peak_rss_bytes=peak, returncode=returncode)


def folder_bytes(folder: Path, pattern: str = "*") -> int:
    return sum(p.stat().st_size for p in Path(folder).rglob(pattern) if p.is_file())


def machine_description() -> str:
    """Cores, processor model with its widest vector instructions, memory and Python: the facts that move the
    numbers (the same "AMD EPYC" name covers AVX2-only and AVX-512 machines with 4x apart peak FLOP/s)."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    flags = cpu_flags() or set()
    vector = next((name for flag, name in (("avx512f", "AVX-512"), ("avx2", "AVX2")) if flag in flags), None)
    if vector and flags & set(NATIVE_BF16_CPU_FLAGS):
        vector += " with bf16"
    memory_gib = psutil.virtual_memory().total / 2 ** 30
    return (f"{os.cpu_count()} cores ({cpu}{', ' + vector if vector else ''}), {memory_gib:.0f} GiB RAM, "
            f"Python {platform.python_version()}")


def replace_section(page: Path, name: str, body: str) -> None:
    """Replace (or append) the block between <!-- name:start --> and <!-- name:end --> in `page`."""
    start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
    text = page.read_text() if page.is_file() else "# Benchmarks\n"
    block = f"{start}\n{body.rstrip()}\n{end}"
    if start in text and end in text:
        text = text[: text.index(start)] + block + text[text.index(end) + len(end):]
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    page.write_text(text)


def publish_section(page: Path, name: str, body: str, write: bool = True) -> None:
    """Print a benchmark's section and, unless `write` is False (the scripts' --no-write), put it on `page`."""
    print(body)
    if write:
        replace_section(Path(page), name, body)


def timing_arguments(description: str, argv: list[str] | None = None, repeats: int = 5) -> argparse.Namespace:
    """The arguments of a timing benchmark that publishes one section (--no-write, --repeats); torch's threads are
    set to the usable cores, recorded as `threads`."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--no-write", action="store_true", help="print the section without updating the page")
    parser.add_argument("--repeats", type=int, default=repeats)
    args = parser.parse_args(argv)
    args.threads = usable_cores()
    torch.set_num_threads(args.threads)
    return args

