"""Several processes, one run: torch.distributed under `torchrun`, and the single-process case as the same code.

    torchrun --nproc_per_node 4 -m vsaccade.cli train --preset megapixel ...          (one node, 4 GPUs)
    torchrun --nnodes 2 --nproc_per_node 8 --rdzv_backend c10d --rdzv_endpoint HOST:29500 -m vsaccade.cli train ...

`Cluster.from_environment()` reads what torchrun sets (RANK, WORLD_SIZE, LOCAL_RANK) and joins the process group:
NCCL on GPUs, gloo on CPUs. Without those variables it is a cluster of one and every collective is the identity.

What makes N processes train exactly as one (docs/distributed.md):
  * the global batch (train.batch_size) is split into equal contiguous shards, one per rank (`shard`);
  * each sample's random draws are keyed by (seed, epoch, index), not by rank (model/noise.py);
  * batch statistics the loss uses (the score-function baselines) are means over the global batch (`mean`);
  * normalisation is per sample (GroupNorm), so no statistic crosses the batch;
  * DDP averages the gradients of equal shards, i.e. the gradient of the global batch's mean loss.
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass
class Cluster:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world_size > 1

    @classmethod
    def from_environment(cls, device: str = "auto", timeout_minutes: float = 30.0) -> "Cluster":
        """The cluster torchrun describes (or a cluster of one), with this process's device chosen: `device` is
        "cpu", "cuda" or "auto" (CUDA when available)."""
        use_cuda = device == "cuda" or (device == "auto" and torch.cuda.is_available())
        if use_cuda and not torch.cuda.is_available():
            from .config import ConfigError

            raise ConfigError("train.device=cuda, but torch sees no CUDA device")
        world_size = int(os.environ.get("WORLD_SIZE", "1"))
        rank, local_rank = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
        torch_device = torch.device(f"cuda:{local_rank}" if use_cuda else "cpu")
        if use_cuda:
            torch.cuda.set_device(torch_device)
        if world_size > 1 and not dist.is_initialized():
            dist.init_process_group("nccl" if use_cuda else "gloo", timeout=datetime.timedelta(minutes=timeout_minutes),
                                    **({"device_id": torch_device} if use_cuda else {}))
        return cls(rank, world_size, local_rank, torch_device)

    def close(self) -> None:
        if self.active and dist.is_initialized():
            dist.destroy_process_group()

    def barrier(self) -> None:
        if self.active:
            dist.barrier()

    def from_main(self, read):
        """read() on rank 0, its result sent to every rank (nodes need not share a file system)."""
        if not self.active:
            return read()
        box = [read() if self.is_main else None]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def sum(self, values: torch.Tensor) -> torch.Tensor:
        """Elementwise sum over ranks (a new tensor on this rank's device; the input is unchanged)."""
        if not self.active:
            return values.clone()
        out = values.detach().to(self.device, copy=True)
        dist.all_reduce(out, op=dist.ReduceOp.SUM)
        return out.to(values.device)

    def any(self, *flags: bool) -> list[bool]:
        """For each flag: is it set on any rank? One collective for all of them."""
        if not self.active:
            return [bool(f) for f in flags]
        return [bool(v) for v in self.sum(torch.tensor([float(f) for f in flags])) > 0]

    def mean(self, values: torch.Tensor, dim: int = 0) -> torch.Tensor:
        """Mean over the global batch along `dim` (every rank holding an equal shard), detached, keepdim."""
        values = values.detach()
        if not self.active:
            return values.mean(dim, keepdim=True)
        return self.sum(values.sum(dim, keepdim=True)) / (values.shape[dim] * self.world_size)

    def shard(self, items: list) -> list:
        """This rank's contiguous share of one global batch; all shards equal (the batch is cut to a multiple of
        world_size, which only the last batch of an epoch can need)."""
        each = len(items) // self.world_size
        return items[self.rank * each:(self.rank + 1) * each]

    def split(self, count: int) -> range:
        """This rank's contiguous part of range(count) for evaluation: every index on exactly one rank, no padding."""
        start = count * self.rank // self.world_size
        return range(start, count * (self.rank + 1) // self.world_size)
