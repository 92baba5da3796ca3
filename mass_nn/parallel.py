"""Process pools for per-case work: spawn-started workers (safe with torch and OpenMP in the parent), a
memory budget that holds back large cases while others are in flight, and per-item error collection."""
from __future__ import annotations

import logging
import multiprocessing
import os
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from contextlib import contextmanager, nullcontext
from typing import Callable, Iterable, Iterator

import psutil
from tqdm import tqdm

logger = logging.getLogger(__name__)

MEMORY_BUDGET_FRACTION = 0.7  # of the memory available when the run starts


def default_num_processes() -> int:
    """Worker count when the user gives none: the machine's cores, at most 8."""
    return max(1, min(8, os.cpu_count() or 1))


def _worker_init() -> None:
    # one thread per worker: the pool already uses the cores; set before torch/numpy read it on import
    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[name] = "1"


@contextmanager
def worker_pool(num_processes: int):
    """A spawn-started pool to share between several run_per_item calls (workers import modules once);
    None when num_processes <= 1 (work then runs in this process)."""
    if num_processes <= 1:
        yield None
        return
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=num_processes, mp_context=context, initializer=_worker_init) as pool:
        yield pool


def run_per_item(func: Callable, items: list, num_processes: int, desc: str,
                 memory_bytes: Iterable[int] | None = None, progress: bool = True,
                 pool: ProcessPoolExecutor | None = None) -> Iterator[tuple[int, object]]:
    """Yield (index, result) for every item as it finishes; a raised exception is yielded as the result.

    With `memory_bytes` (an estimate per item), new items start only while the estimates of the items in flight
    fit the budget (one item always runs, however large). `pool` reuses a worker_pool(); without one, a pool
    is made for this call.
    """
    estimates = list(memory_bytes) if memory_bytes is not None else [0] * len(items)
    bar = tqdm(total=len(items), desc=desc, disable=not progress, unit="case")
    if num_processes <= 1 or len(items) <= 1:
        for i, item in enumerate(items):
            try:
                yield i, func(item)
            except Exception as err:  # collected per item, reported by the caller
                yield i, err
            bar.update()
        bar.close()
        return
    budget = MEMORY_BUDGET_FRACTION * psutil.virtual_memory().available
    pending = list(range(len(items)))
    with (nullcontext(pool) if pool is not None else worker_pool(num_processes)) as pool:
        running: dict = {}
        while pending or running:
            while pending and len(running) < num_processes:
                in_flight = sum(estimates[i] for i in running.values())
                if running and in_flight + estimates[pending[0]] > budget:
                    break
                index = pending.pop(0)
                running[pool.submit(func, items[index])] = index
            done, _ = wait(running, return_when=FIRST_COMPLETED)
            for future in done:
                index = running.pop(future)
                error = future.exception()
                yield index, error if error is not None else future.result()
                bar.update()
    bar.close()
