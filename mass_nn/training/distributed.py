"""torchrun + DistributedDataParallel plumbing: one process per device, rank 0 writes every file.

A run is distributed when torchrun sets WORLD_SIZE > 1. The backend is nccl on CUDA and gloo on CPU, so the same
code path is tested on a 2-core CPU machine.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from mass_nn.errors import MassError


@dataclass(frozen=True)
class DistributedContext:
    """Where this process sits in the job."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def _pick_device(requested: str, local_rank: int) -> torch.device:
    if requested == "auto":
        requested = "cuda" if torch.cuda.is_available() else "cpu"
    if requested == "cuda":
        if not torch.cuda.is_available():
            raise MassError("--device cuda was asked for but torch sees no CUDA device; use --device cpu")
        return torch.device("cuda", local_rank)
    return torch.device(requested)


def init_distributed(requested_device: str = "auto") -> DistributedContext:
    """Join the torchrun job described by the environment (or run alone when there is none)."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = _pick_device(requested_device, local_rank)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo", rank=rank,
                                world_size=world_size)
    return DistributedContext(rank=rank, world_size=world_size, local_rank=local_rank, device=device)


def shutdown_distributed() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def mean_over_ranks(values: dict[str, float], context: DistributedContext) -> dict[str, float]:
    """Average scalar metrics over all ranks (identity when alone)."""
    if not context.is_distributed or not values:
        return dict(values)
    keys = sorted(values)
    tensor = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64, device=context.device)
    dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return {k: float(v) / context.world_size for k, v in zip(keys, tensor.tolist())}


def any_rank(flag: bool, context: DistributedContext) -> bool:
    """True on every rank when `flag` is true on at least one (used to stop all ranks at the same step)."""
    if not context.is_distributed:
        return flag
    tensor = torch.tensor([1.0 if flag else 0.0], device=context.device)
    dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    return bool(tensor.item() > 0)


def parameter_checksums(model: torch.nn.Module, context: DistributedContext) -> list[float]:
    """Sum of all parameters on every rank (gathered), to check that replicas stay in sync."""
    local = torch.stack([p.detach().double().sum() for p in model.parameters()]).sum().reshape(1).to(context.device)
    if not context.is_distributed:
        return [float(local.item())]
    gathered = [torch.zeros_like(local) for _ in range(context.world_size)]
    dist.all_gather(gathered, local)
    return [float(t.item()) for t in gathered]
