"""`CacheOptions`: how `build_cache` crops, splits, batches and shards. Torch-free, so `tinyclap cache
--help` reads its defaults from here without importing torch."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from tinyclap._util import is_int_in

if TYPE_CHECKING:
    import torch

CROP_MODES = ("even", "random")

# Augmented views (`tinyclap cache --views K`): the ranges every view's draw comes from, in ONE place (each
# view's `aug` record in items.json says what was drawn; cache.json records these under "view_augment").
VIEW_MAX = 64  # views per (file, crop), at most
VIEW_AUGMENT = {
    "keep_fraction": (0.5, 1.0),  # the sub-segment kept: this share of the crop's audible length, uniform
    "gain_db": (-12.0, 6.0),  # gain in dB, uniform; the result is clipped to [-1, 1]
    "mix_probability": 0.5,  # chance of mixup with a partner clip from the train split
    "mix_lambda": (0.1, 0.5),  # mixture = (1 - lam) * view + lam * partner, lam uniform; peak-normalised if > 1
}


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
    views: int = 0  # augmented views per (file, crop) of the train split, 0..VIEW_MAX (0: the clean rows only)

    def check(self) -> None:
        """Raise ValueError naming the first setting out of range."""
        if self.crops_per_clip < 1 or self.batch_size < 1 or self.shard_size < 1 or self.workers < 0:
            raise ValueError(
                f"need crops_per_clip, batch_size, shard_size >= 1 and workers >= 0, got {self.crops_per_clip}, "
                f"{self.batch_size}, {self.shard_size}, {self.workers}"
            )
        if not 0.0 <= self.val_fraction < 1.0:
            raise ValueError(f"val_fraction must be in [0, 1), got {self.val_fraction}")
        if not is_int_in(self.views, 0, VIEW_MAX):
            raise ValueError(f"views must be an integer in 0..{VIEW_MAX}, got {self.views!r}")
        if self.crop not in CROP_MODES:
            raise ValueError(f"crop must be one of {CROP_MODES}, got {self.crop!r}")
