"""The intra-op thread rule (mass_nn.threads) and its use by mass_train."""
from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from mass_nn.cli.train import build_parser, options_from_args
from mass_nn.errors import MassError
from mass_nn.threads import ThreadGovernor, plan_threads, ranks_on_this_node, usable_cores


@pytest.fixture(autouse=True)
def _keep_torch_threads():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize("cores,workers,ranks,busy,expected", [
    (2, 0, 1, 0.0, 2),    # an idle 2-core machine, loading in the training process
    (2, 1, 1, 0.0, 1),    # one loader worker takes a core
    (2, 0, 1, 1.0, 1),    # another program keeps one core busy
    (2, 1, 1, 1.0, 1),    # never below one thread
    (16, 3, 1, 0.0, 13),
    (16, 2, 4, 0.0, 2),   # four ranks on the node share the cores, each with its own two workers
    (16, 0, 2, 4.0, 6),   # busy cores are shared out between the ranks too
    (8, 0, 1, 2.6, 5),    # a core three-quarters free still counts
])
def test_thread_rule(cores, workers, ranks, busy, expected):
    plan = plan_threads(workers, ranks, busy_elsewhere=busy, cores=cores)
    assert plan.threads == expected
    assert f"{cores} usable core" in plan.describe() and "--threads N overrides" in plan.describe()


def test_requested_threads_win_and_are_described():
    plan = plan_threads(3, requested=5, cores=2)
    assert plan.threads == 5 and plan.describe() == "torch threads 5 (--threads 5)"
    with pytest.raises(MassError, match="at least 1"):
        plan_threads(0, requested=0)


def test_usable_cores_follow_the_affinity():
    if not hasattr(os, "sched_getaffinity"):
        pytest.skip("no CPU affinity on this platform")
    assert usable_cores() == len(os.sched_getaffinity(0))


def test_ranks_on_this_node_read_torchrun_environment(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    assert ranks_on_this_node() == 1
    monkeypatch.setenv("WORLD_SIZE", "8")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")
    assert ranks_on_this_node() == 4


def test_governor_applies_the_plan_and_keeps_a_requested_count():
    governor = ThreadGovernor(loader_workers=0, requested=1, ranks_per_node=1, interval=0.0)
    assert torch.get_num_threads() == 1 and governor.plan.threads == 1
    assert governor.update() is None  # an explicit count is never changed
    governor = ThreadGovernor(loader_workers=usable_cores() + 5, ranks_per_node=1, first_look=0.0)
    assert governor.plan.threads == 1 and torch.get_num_threads() == 1


def test_governor_gives_cores_back_to_a_busy_program(caplog):
    cores = usable_cores()
    if cores < 2:
        pytest.skip("needs at least two usable cores to see a busy one")
    governor = ThreadGovernor(loader_workers=0, ranks_per_node=1, interval=0.0, first_look=0.0)
    assert governor.plan.threads == cores
    # a busy program outside this process tree: started through a shell that exits, so it is nobody's child
    code = "import time\nend = time.time() + 30\nwhile time.time() < end: pass"
    launched = subprocess.run(["sh", "-c", f'"{sys.executable}" -c "{code}" >/dev/null 2>&1 & echo $!'],
                              capture_output=True, text=True, check=True)
    spinner = int(launched.stdout.strip())
    try:
        time.sleep(0.3)
        governor._mark()
        end = time.time() + 1.5
        while time.time() < end:
            pass  # this process keeps a core busy too, as training would
        with caplog.at_level(logging.INFO, logger="mass_nn.threads"):
            plan = governor.update()
    finally:
        os.kill(spinner, signal.SIGKILL)
    assert plan is not None and plan.threads <= cores - 1
    assert plan.busy_elsewhere >= 0.75 and torch.get_num_threads() == plan.threads
    assert "busy with other programs" in caplog.text


def test_mass_train_parses_threads():
    args = build_parser().parse_args(["PRETRAIN", "-d", "990", "--threads", "3"])
    assert options_from_args(args).threads == 3
    assert options_from_args(build_parser().parse_args(["PRETRAIN", "-d", "990"])).threads is None


def test_governor_restores_the_thread_count_it_found():
    torch.set_num_threads(2)
    governor = ThreadGovernor(loader_workers=0, requested=1, ranks_per_node=1)
    assert torch.get_num_threads() == 1
    governor.restore()
    assert torch.get_num_threads() == 2
