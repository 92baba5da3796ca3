"""How many intra-op threads torch may use in a training process, and keeping that number right while it runs.

torch's default is one thread per core of the machine. On a small machine that is the worst choice as soon as
anything else runs: the threads of one operator wait for each other at its end, so a single thread that loses
its core to another process (a loader worker of the same run, another rank, someone else's job) stalls all of
them. Measured on 2 cores: a 3d_cpu MASS step took 16 s with one thread and 48 s with two under a 3-process load,
against 2-4 s alone.

The rule: threads = (cores this process may run on, from os.sched_getaffinity) / (ranks of this run on the
node) - (the run's own loader workers) - (cores that other programs kept busy over the last interval), at least
1. The last term is re-measured while training (`ThreadGovernor`), so a run gives cores back when another job
starts and takes them again when it ends. An explicit thread count (`--threads`) is used as given, never changed.
"""
from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass

import psutil
import torch

from mass_nn.errors import MassError

logger = logging.getLogger(__name__)

REPLAN_SECONDS = 20.0  # how often the governor looks at the other programs' CPU use
FIRST_LOOK_SECONDS = 0.5  # the look before training starts


def usable_cores() -> int:
    """The cores this process may run on (its CPU affinity), or the machine's where affinity is unknown."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not available outside Linux
        return max(1, os.cpu_count() or 1)


@dataclass(frozen=True)
class ThreadPlan:
    """A thread count and what it was derived from."""

    threads: int
    cores: int
    ranks_per_node: int
    loader_workers: int
    busy_elsewhere: float  # cores other programs used over the last interval (0 before the first look)
    requested: int | None = None

    def describe(self) -> str:
        if self.requested is not None:
            return f"torch threads {self.threads} (--threads {self.requested})"
        parts = [f"{self.cores} usable core{'s' if self.cores != 1 else ''}"]
        if self.ranks_per_node > 1:
            parts.append(f"/ {self.ranks_per_node} ranks on this node")
        parts.append(f"- {self.loader_workers} loader worker{'s' if self.loader_workers != 1 else ''}")
        if self.busy_elsewhere >= 0.5:
            parts.append(f"- {self.busy_elsewhere:.1f} cores busy with other programs")
        return f"torch threads {self.threads} ({' '.join(parts)}; --threads N overrides)"


def plan_threads(loader_workers: int, ranks_per_node: int = 1, requested: int | None = None,
                 busy_elsewhere: float = 0.0, cores: int | None = None) -> ThreadPlan:
    """The thread count by the module's rule; `requested` (>= 1) wins when given."""
    cores = usable_cores() if cores is None else cores
    ranks_per_node, loader_workers = max(1, ranks_per_node), max(0, loader_workers)
    if requested is not None:
        if requested < 1:
            raise MassError(f"--threads must be at least 1, got {requested}")
        threads = requested
    else:
        share = cores / ranks_per_node - loader_workers - busy_elsewhere / ranks_per_node
        threads = max(1, int(share + 0.25))  # a core three-quarters free is worth a thread
    return ThreadPlan(threads=threads, cores=cores, ranks_per_node=ranks_per_node, loader_workers=loader_workers,
                      busy_elsewhere=busy_elsewhere, requested=requested)


def default_loader_workers(device_type: str) -> int:
    """Loader worker processes for MASS pretraining and segmentation finetuning when the user gives none.

    On a CPU with at most 2 usable cores: none. Loading between steps costs a few per cent of the step, while a
    worker beside the step takes a core from it. Measured on 2 cores: MASS pretraining (3d_cpu phantom) 3.6 s per
    step with 0 workers and 2 threads + 0.15 s loading, 4.7-5.2 s with 1 worker and 2 threads, 6.1-6.9 s with 1
    worker and 1 thread; finetuning on CHAOS MR (48³, batch 2, AVX2 EPYC) 1.10 s per step + 0.04 s loading with
    0 workers and 2 threads against 1.83-1.92 s with 1 worker and 1 thread. Elsewhere one worker per spare core,
    at most 4.
    """
    cores = usable_cores()
    if device_type == "cpu" and cores <= 2:
        return 0
    return max(1, min(4, cores - 1))


def ranks_on_this_node() -> int:
    """Processes of this run on this machine (torchrun's LOCAL_WORLD_SIZE; 1 outside torchrun)."""
    return max(1, int(os.environ.get("LOCAL_WORLD_SIZE", os.environ.get("WORLD_SIZE", "1"))))


def _tree_cpu_seconds(process: psutil.Process) -> float:
    """CPU seconds of this process and its descendants, the finished ones included (children_user and
    children_system hold what reaped children used, so a worker that ended since the last look is not taken
    for another program)."""
    total = 0.0
    for member in [process, *process.children(recursive=True)]:
        try:
            times = member.cpu_times()
            total += times.user + times.system + times.children_user + times.children_system
        except psutil.Error:
            pass
    return total


def _machine_busy_seconds() -> float:
    """CPU seconds all programs used on this machine: user (which already contains guest time), nice, system and
    interrupts; idle, I/O wait and the hypervisor's steal are not work of a program here."""
    times = psutil.cpu_times()
    return sum(getattr(times, name, 0.0) for name in ("user", "nice", "system", "irq", "softirq"))


class ThreadGovernor:
    """Applies a ThreadPlan to torch now and re-plans every `interval` seconds from the CPU time that programs
    outside this process tree took (machine busy time minus this process and its children). `restore()` puts
    back the thread count torch had before, so a training run called as a library leaves no trace."""

    def __init__(self, loader_workers: int, requested: int | None = None, ranks_per_node: int | None = None,
                 interval: float = REPLAN_SECONDS, first_look: float = FIRST_LOOK_SECONDS):
        self.loader_workers = loader_workers
        self.requested = requested
        self.ranks_per_node = ranks_on_this_node() if ranks_per_node is None else ranks_per_node
        self.interval = interval
        self._process = psutil.Process()
        self._threads_before = torch.get_num_threads()
        busy = 0.0
        if requested is None and first_look > 0:
            self._mark()
            time.sleep(first_look)
            busy = self.busy_elsewhere()
        self.plan = self._apply(plan_threads(loader_workers, self.ranks_per_node, requested, busy))
        self._mark()

    def _mark(self) -> None:
        self._wall, self._machine, self._own = (time.monotonic(), _machine_busy_seconds(),
                                                _tree_cpu_seconds(self._process))

    def _apply(self, plan: ThreadPlan) -> ThreadPlan:
        if torch.get_num_threads() != plan.threads:
            torch.set_num_threads(plan.threads)
        return plan

    def busy_elsewhere(self) -> float:
        """Cores that programs outside this process tree kept busy since the last look."""
        wall = time.monotonic() - self._wall
        machine = _machine_busy_seconds() - self._machine
        own = _tree_cpu_seconds(self._process) - self._own
        return max(0.0, (machine - own) / max(wall, 1e-6))

    def update(self) -> ThreadPlan | None:
        """Re-plan when `interval` seconds have passed; returns the new plan when the thread count changed."""
        if self.requested is not None or time.monotonic() - self._wall < self.interval:
            return None
        plan = plan_threads(self.loader_workers, self.ranks_per_node, None, self.busy_elsewhere())
        self._mark()
        changed = plan.threads != self.plan.threads
        self.plan = self._apply(plan)
        if changed:
            logger.info("%s", plan.describe())
            return plan
        return None

    def restore(self) -> None:
        """Give torch back the thread count it had when the governor was made."""
        torch.set_num_threads(self._threads_before)
