"""The data side of a distillation step: teacher targets and the loss they define (tinyCLAP, Eq. 7).

Targets come either from a cache written by `tinyclap.train.cache.build_cache` (log-mel fp16 + teacher
target per clip, `cached_batch`: the fast path) or are computed on the fly from waveforms (`WaveformDataset`
+ `TeacherTargets`: the log-mel and the teacher's embedding are computed on the training device, under
no_grad). `select_targets` restricts targets to some entries (pruned students), `distill_loss` is minus the
cosine between student and teacher embeddings, `split_paths` the seeded train/val split of a file list,
`spec_augment` the student-side masking of training log-mels.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

__all__ = [
    "BatchFn",
    "TeacherTargets",
    "WaveformDataset",
    "cached_batch",
    "distill_loss",
    "select_targets",
    "spec_augment",
    "split_paths",
]

# SpecAugment (student side only): masks per clip and their widest extent
SPEC_TIME_MASKS, SPEC_TIME_MAX = 2, 0.10  # time masks, each up to 10 % of the frames
SPEC_FREQ_MASKS, SPEC_FREQ_MAX = 2, 8  # frequency masks, each up to 8 mel bands (of 64)

# batch, device -> (logmel (B, T, M), target (B, D)) on the device
BatchFn = Callable[[Any, torch.device], tuple[torch.Tensor, torch.Tensor]]


# --------------------------------------------------------------------------------------------------- loss


def select_targets(target: torch.Tensor, dims: torch.Tensor | None) -> torch.Tensor:
    """Teacher targets (B, D) restricted to `dims` (K,) and renormalised -> (B, K); unchanged when None."""
    if dims is None:
        return target
    return F.normalize(target.index_select(-1, dims), dim=-1)


def distill_loss(student_out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Eq. 7 of the paper: -mean_b cos(student_b, teacher_b). Inputs (B, D); computed in float32."""
    return -F.cosine_similarity(student_out.float(), target.float(), dim=-1).mean()



def _mask_rows(b: int, n: int, width_max: int, size: int, generator: torch.Generator | None) -> torch.Tensor:
    """(b, size) bool: the union of `n` bands per row, each of a uniform width 0..width_max at a uniform start."""
    width = torch.randint(0, width_max + 1, (b, n), generator=generator)
    start = (torch.rand(b, n, generator=generator) * (size - width + 1)).floor().long()  # start in 0..size - width
    pos = torch.arange(size)
    return ((pos >= start[..., None]) & (pos < (start + width)[..., None])).any(dim=1)


def spec_augment(logmel: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """SpecAugment-style masks on a training batch of student log-mels (B, T, M) -> a masked copy.

    Each clip gets `SPEC_TIME_MASKS` time masks of up to `SPEC_TIME_MAX` of its frames and `SPEC_FREQ_MASKS`
    frequency masks of up to `SPEC_FREQ_MAX` bands, filled with the clip's mean log-mel value (a neutral
    level: neither silence, which the log floor would be, nor energy the clip does not have). Only the student
    sees it: the target stays the teacher's embedding of the unmasked row. The draws are on the CPU, from
    `generator` or torch's global RNG (which a training stage seeds and checkpoints), so they do not depend
    on the device and a resumed run draws the same masks.
    """
    b, t, m = logmel.shape
    time_mask = _mask_rows(b, SPEC_TIME_MASKS, int(SPEC_TIME_MAX * t), t, generator)  # (B, T)
    freq_mask = _mask_rows(b, SPEC_FREQ_MASKS, min(SPEC_FREQ_MAX, m), m, generator)  # (B, M)
    mask = (time_mask[:, :, None] | freq_mask[:, None, :]).to(logmel.device, non_blocking=True)  # (B, T, M)
    fill = logmel.mean(dim=(1, 2), keepdim=True)  # (B, 1, 1)
    return torch.where(mask, fill.to(logmel.dtype), logmel)


# ---------------------------------------------------------------------------------------- batches / data


def cached_batch(batch: Any, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """A cache batch (logmel fp16 (B, T, M), target (B, D)) -> float32 tensors on `device`."""
    logmel, target = batch
    # copy the fp16 log-mel (half the bytes), widen on the device
    return logmel.to(device, non_blocking=True).float(), target.to(device, non_blocking=True).float()


class WaveformDataset(Dataset):
    """Audio files -> fixed-length 44.1 kHz crops for on-the-fly distillation.

    Items are `(wave (N,), teacher_wave (M,))`: the crop for the student's log-mel and, for a teacher with
    another sample rate, the same crop resampled to it (an empty tensor when the rates agree). Training
    crops are random (`fit_clip(policy="train")`) from a generator derived from (seed, epoch, index), so
    they are reproducible and independent of worker processes; index the dataset with `(epoch, index)`
    (what `EpochSampler(tag_epoch=True)` yields). Validation crops are the deterministic centre crops.
    """

    def __init__(
        self,
        paths: Sequence[str | os.PathLike],
        *,
        train: bool,
        seed: int = 1234,
        teacher_rate: int | None = None,
        clip_samples: int | None = None,
    ) -> None:
        from tinyclap.audio import CLIP_SAMPLES, SAMPLE_RATE

        self.paths = [Path(p) for p in paths]
        self.train = bool(train)
        self.seed = int(seed)
        self.sample_rate = SAMPLE_RATE
        self.teacher_rate = int(teacher_rate or SAMPLE_RATE)
        self.clip_samples = int(clip_samples or CLIP_SAMPLES)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, key: int | tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        import soxr

        from tinyclap.audio import RESAMPLE_QUALITY, fit_clip, load_audio

        epoch, index = key if isinstance(key, tuple) else (0, int(key))
        wave = load_audio(self.paths[index], self.sample_rate)  # (n,)
        if self.train:
            rng = np.random.default_rng([self.seed, epoch, index])
            clip = fit_clip(wave, self.clip_samples, policy="train", rng=rng)
        else:
            clip = fit_clip(wave, self.clip_samples, policy="eval")  # (N,)
        if self.teacher_rate == self.sample_rate:
            return torch.from_numpy(clip), torch.empty(0)
        tw = soxr.resample(clip, self.sample_rate, self.teacher_rate, quality=RESAMPLE_QUALITY)  # (M,)
        return torch.from_numpy(clip), torch.from_numpy(np.ascontiguousarray(tw, dtype=np.float32))


class TeacherTargets:
    """On-the-fly batches: (wave (B, N), teacher_wave (B, M)) -> (logmel (B, T, 64), target (B, D)) on device.

    The log-mel is MS CLAP's front end on the device (by default `tinyclap.audio.frontend.FFTLogMel`, the FFT form of
    `tinyclap.audio.frontend.LogMel` the cache uses too), in float32 outside autocast: the log of small powers
    needs the precision. The target is the teacher's normalised embedding under no_grad, in float32. A
    teacher with the same front end and `encode_audio` (CLAPTeacher) reuses the student's log-mel instead of
    computing it twice; any other teacher gets `embed_waveform` on its own-rate waveform.
    """

    def __init__(self, teacher: Any, frontend: nn.Module | None = None) -> None:
        from tinyclap.audio.frontend import FFTLogMel, LogMel

        self.teacher = teacher
        self.frontend = frontend if frontend is not None else FFTLogMel(LogMel())
        cfg = getattr(self.frontend, "frontend_config", None)
        if cfg is None and hasattr(self.frontend, "config"):
            cfg = self.frontend.config()
        t_front = getattr(teacher, "frontend", None)
        self.shared_frontend = (
            callable(getattr(teacher, "encode_audio", None))
            and int(getattr(teacher, "sample_rate", 0)) == int(getattr(self.frontend, "sample_rate", -1))
            and callable(getattr(t_front, "config", None))
            and t_front.config() == cfg
        )

    def to(self, device: torch.device) -> TeacherTargets:
        self.frontend.to(device)
        if isinstance(self.teacher, nn.Module):
            self.teacher.to(device).eval()
            self.teacher.requires_grad_(False)
        return self

    def __call__(self, batch: Any, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        wave, teacher_wave = batch
        wave = wave.to(device, non_blocking=True)  # (B, N)
        with torch.no_grad():
            logmel = self.frontend(wave)  # (B, T, M)
            if self.shared_frontend:
                target = self.teacher.encode_audio(logmel)  # (B, D)
            else:
                tw = teacher_wave.to(device, non_blocking=True) if teacher_wave.numel() else wave
                target = self.teacher.embed_waveform(tw)  # (B, D)
        return logmel, F.normalize(target.float(), dim=-1)


def split_paths(paths: Sequence[Path], val_fraction: float, seed: int) -> tuple[list[Path], list[Path]]:
    """Deterministic train/val split of a file list: a seeded permutation, at least one file on each side."""
    paths = sorted(set(Path(p) for p in paths))
    if len(paths) < 2:
        raise ValueError(
            f"need at least 2 audio files to make a train and a validation split, got {len(paths)}"
        )
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}")
    n_val = min(len(paths) - 1, max(1, round(len(paths) * val_fraction)))
    order = np.random.default_rng(seed).permutation(len(paths))
    val = sorted(paths[i] for i in order[:n_val])
    train = sorted(paths[i] for i in order[n_val:])
    return train, val
