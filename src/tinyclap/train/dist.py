"""Data parallel pieces of a distillation: this process's place in the process group (`Dist`), joining
the torchrun group (`init_process_group`), the resumable epoch sampler and the validation shards.

Under `torchrun` (WORLD_SIZE > 1) `distill` joins the process group (nccl on CUDA, gloo on CPU);
`train_stage` uses DDP and shards the data whenever a group is initialised. Only rank 0 writes files;
losses and cosines are all-reduced. Everything here also works without a process group (one rank).
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch.utils.data import Dataset, DistributedSampler

__all__ = ["Dist", "EpochSampler", "ValShard", "init_process_group"]


@dataclass
class Dist:
    """This process's place in the (optional) process group."""

    rank: int = 0
    world: int = 1

    @property
    def main(self) -> bool:
        return self.rank == 0

    @classmethod
    def current(cls) -> Dist:
        if dist.is_available() and dist.is_initialized():
            return cls(dist.get_rank(), dist.get_world_size())
        return cls()

    def all_sum(self, values: Sequence[float], device: torch.device) -> list[float]:
        """Sum float64 values over ranks (identity without a process group)."""
        if self.world == 1:
            return [float(v) for v in values]
        t = torch.tensor([float(v) for v in values], dtype=torch.float64, device=device)
        dist.all_reduce(t)
        return t.tolist()

    def all_gather(self, obj: Any) -> list[Any]:
        """Every rank's `obj` (picklable), in rank order (collective under DDP)."""
        if self.world == 1:
            return [obj]
        out: list[Any] = [None] * self.world
        dist.all_gather_object(out, obj)
        return out

    def broadcast_buffers(self, module: torch.nn.Module) -> None:
        """Give every rank rank 0's buffers (e.g. BatchNorm running statistics) of `module`."""
        if self.world > 1:
            for buf in module.buffers():
                dist.broadcast(buf, 0)

    def barrier(self) -> None:
        if self.world > 1:
            dist.barrier()


def init_process_group(device: torch.device) -> bool:
    """Join the torchrun process group (WORLD_SIZE > 1) unless already in one; True if we created it."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or (dist.is_available() and dist.is_initialized()):
        return False
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return True


class EpochSampler(DistributedSampler):
    """torch's DistributedSampler (seeded per-epoch permutation, `set_epoch`, rank shards) that can also
    start mid-epoch (`set_start(n)` skips this rank's first n items of the SAME permutation) and can tag
    each index with its epoch (`tag_epoch=True` yields `(epoch, index)` for `WaveformDataset`).

    Works without a process group (num_replicas=1, rank=0).
    """

    def __init__(
        self,
        dataset: Dataset,
        *,
        num_replicas: int = 1,
        rank: int = 0,
        shuffle: bool = True,
        seed: int = 0,
        tag_epoch: bool = False,
    ) -> None:
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=shuffle, seed=seed)
        self.start = 0
        self.tag_epoch = tag_epoch

    def set_start(self, start: int) -> None:
        self.start = max(0, int(start))

    def __iter__(self) -> Iterator[Any]:
        it = itertools.islice(super().__iter__(), self.start, None)
        if self.tag_epoch:
            epoch = self.epoch
            return ((epoch, int(i)) for i in it)
        return it

    def __len__(self) -> int:
        return max(0, self.num_samples - self.start)


class ValShard(Dataset):
    """This rank's share of the validation set (indices rank::world, no padding), epoch-tagged if asked."""

    def __init__(self, dataset: Dataset, rank: int, world: int, tag_epoch: bool) -> None:
        self.dataset = dataset
        self.indices = list(range(rank, len(dataset), world))
        self.tag_epoch = tag_epoch

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> Any:
        j = self.indices[i]
        return self.dataset[(0, j) if self.tag_epoch else j]
