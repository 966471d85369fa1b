"""`CacheOptions`: how `build_cache` crops, splits, batches and shards. Torch-free, so `tinyclap cache
--help` reads its defaults from here without importing torch."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    import torch

CROP_MODES = ("even", "random")


@dataclass(frozen=True)
class CacheOptions:
    """How `build_cache` crops, splits, batches and shards. `tinyclap cache` reads its defaults from here
    (except `device`: the command's is `auto`)."""

    crops_per_clip: int = 1
    val_fraction: float = 0.1
    seed: int = 1234
    batch_size: int = 32
    workers: int = 2
    shard_size: int = 512
    device: str | torch.device = "cpu"
    progress: bool = True
    strict: bool = False
    crop: Literal["even", "random"] = "even"
    overwrite: bool = False

    def check(self) -> None:
        """Raise ValueError naming the first setting out of range."""
        if self.crops_per_clip < 1 or self.batch_size < 1 or self.shard_size < 1 or self.workers < 0:
            raise ValueError(
                f"need crops_per_clip, batch_size, shard_size >= 1 and workers >= 0, got {self.crops_per_clip}, "
                f"{self.batch_size}, {self.shard_size}, {self.workers}"
            )
        if not 0.0 <= self.val_fraction < 1.0:
            raise ValueError(f"val_fraction must be in [0, 1), got {self.val_fraction}")
        if self.crop not in CROP_MODES:
            raise ValueError(f"crop must be one of {CROP_MODES}, got {self.crop!r}")
