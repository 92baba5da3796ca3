"""Two CPU processes under torchrun (gloo): replicas stay in sync and only rank 0 writes."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import pytest

from mass_nn.training.metrics_log import read_metrics


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow  # about 25 s on 2 cores (two processes): keeps the default run under 10 minutes
def test_two_process_ddp_stays_in_sync_and_rank0_writes(pretraining_roots):
    paths = pretraining_roots
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr",
               "127.0.0.1", "--master_port", str(_free_port()), "-m", "mass_nn.cli.train", "PRETRAIN", "-d", "990",
               "-c", "3d_cpu", "--raw", str(paths.raw), "--preprocessed", str(paths.preprocessed), "--results",
               str(paths.results), "--device", "cpu", "--num-workers", "0", "--batch-size", "1", "--epochs", "1",
               "--iters-per-epoch", "3", "--val-batches", "1", "-s", "num_tasks=3"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    folder = paths.results / "Dataset990_PhantomCT" / "MASSPretrainer__MassPlans__3d_cpu"
    sync = json.loads((folder / "replica_sync.json").read_text())
    assert sync["world_size"] == 2 and len(sync["parameter_checksums"]) == 2 and sync["in_sync"]
    assert sync["parameter_checksums"][0] == sync["parameter_checksums"][1]
    assert [r["epoch"] for r in read_metrics(folder)] == [1]  # one writer: no duplicated records
    log = (folder / "training_log.txt").read_text()
    assert log.count("training finished") == 1 and "batch 1 x 2 process(es) = global batch 2, lr 0.0005 " in log
    run_config = json.loads((folder / "run_config.json").read_text())  # the lr follows the global batch
    assert run_config["global_batch_size"] == 2 and run_config["lr"] == pytest.approx(2e-3 * (2 / 32) ** 0.5)
    assert done.stdout.count("finished: 1 epochs") == 1  # the summary line comes from rank 0 only
    assert sorted(p.name for p in folder.iterdir() if p.name.startswith(".")) == []  # no stray temporary files
