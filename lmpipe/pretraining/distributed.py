"""The process group a pretraining run trains in: one process, or DDP ranks under torchrun.

With `nproc > 1` every rank draws its own blocks (gloo on CPU, nccl on CUDA) and rank 0 writes
every output. A single-process run has world 1 and every collective is a no-op, so the loop reads
the same either way.

On several nodes (lmpipe.pretraining.launch) torchrun's c10d rendezvous numbers the nodes in an
order of its own (sorted host names); the process group is formed with the rank the params give
instead, node_rank x processes per node + local rank, so rank 0, the one that writes, is always on
node 0 and a rank draws the same blocks whichever node joins first.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from lmpipe.pretraining.launch import NODE_RANK_ENV


@dataclass
class Distributed:
    world: int = 1
    rank: int = 0

    @classmethod
    def start(cls, device: torch.device) -> tuple[Distributed, torch.device]:
        """Join torchrun's process group when launched by it; on CUDA each rank takes its own GPU."""
        world = int(os.environ.get("WORLD_SIZE", "1"))
        rank = int(os.environ.get("RANK", "0"))
        if NODE_RANK_ENV in os.environ:  # set by relaunch_with_torchrun on a multi-node run
            rank = int(os.environ[NODE_RANK_ENV]) * int(os.environ["LOCAL_WORLD_SIZE"]) + int(os.environ["LOCAL_RANK"])
        if world > 1:
            dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo", rank=rank, world_size=world)
            if device.type == "cuda":
                device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
                torch.cuda.set_device(device)
        return cls(world, rank), device

    @property
    def active(self) -> bool:
        return self.world > 1

    def mean_(self, t: torch.Tensor) -> torch.Tensor:
        """In place: the mean of `t` over ranks (a rank's own loss is only its share)."""
        if self.active:
            dist.all_reduce(t)
            t /= self.world
        return t

    def any(self, flag: bool, device: torch.device) -> bool:
        """True on every rank when it is true on one: all ranks must stop at the same step."""
        if not self.active:
            return flag
        t = torch.tensor([float(flag)], device=device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return bool(t.item())

    def barrier(self) -> None:
        if self.active:
            dist.barrier()

    def close(self) -> None:
        if self.active:
            dist.barrier()
            dist.destroy_process_group()

    def wrap(self, module: torch.nn.Module):
        """DDP around `module` (it broadcasts rank 0's weights); None on a single process."""
        if not self.active:
            return None
        from torch.nn.parallel import DistributedDataParallel

        return DistributedDataParallel(module)
