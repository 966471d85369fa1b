"""Deterministic clip embedding for evaluation and classification (no random crops, ever)."""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F

from tinyclap.audio import AudioError, eval_windows, fit_clip, load_audio

LongClip = Literal["windows", "centre"]
LONG_CLIP_MODES = ("windows", "centre")


def clip_windows(
    wave: np.ndarray, sample_rate: int, clip_seconds: float = 5.0, mode: LongClip = "windows"
) -> np.ndarray:
    """(N,) waveform -> (K, L) deterministic windows: all windows of a long clip, or its centre crop."""
    length = int(round(clip_seconds * sample_rate))
    if mode == "windows":
        return eval_windows(wave, length)
    if mode == "centre":
        return fit_clip(wave, length, policy="eval")[None]
    raise ValueError(f"long-clip mode must be one of {LONG_CLIP_MODES}, got {mode!r}")


@torch.no_grad()
def embed_waves(
    model: Any, windows: np.ndarray, batch_size: int = 16, device: str | torch.device = "cpu"
) -> torch.Tensor:
    """(K, L) windows -> (K, D) normalised embeddings, in batches."""
    out = []
    for i in range(0, len(windows), batch_size):
        x = torch.from_numpy(np.ascontiguousarray(windows[i : i + batch_size])).to(device)
        out.append(model.embed_waveform(x).float().cpu())
    return torch.cat(out)


@torch.no_grad()
def embed_clip(
    model: Any,
    wave: np.ndarray,
    mode: LongClip = "windows",
    clip_seconds: float = 5.0,
    batch_size: int = 16,
    device: str | torch.device = "cpu",
) -> torch.Tensor:
    """One clip -> one normalised (D,) embedding: the renormalised mean of its window embeddings."""
    win = clip_windows(wave, model.sample_rate, clip_seconds, mode)
    return F.normalize(embed_waves(model, win, batch_size, device).mean(0), dim=-1)


@dataclass
class BatchResult:
    """Embeddings of the files that worked, and (path, reason) for those that did not."""

    paths: list[str] = field(default_factory=list)
    embeddings: torch.Tensor | None = None  # (n_ok, D)
    failed: list[tuple[str, str]] = field(default_factory=list)


def embed_files(
    model: Any,
    paths: Sequence[str | os.PathLike],
    mode: LongClip = "windows",
    clip_seconds: float = 5.0,
    progress: bool = False,
    device: str | torch.device = "cpu",
) -> BatchResult:
    """Embed many files; a bad file is skipped and reported in `failed`, never fatal."""
    from tqdm import tqdm

    res = BatchResult()
    embs = []
    for p in tqdm(paths, desc="embed", unit="clip", disable=not progress, file=sys.stderr):
        try:
            wave = load_audio(p, model.sample_rate)
        except AudioError as e:
            res.failed.append((os.fsdecode(p), e.problem))
            continue
        embs.append(embed_clip(model, wave, mode, clip_seconds, device=device))
        res.paths.append(os.fsdecode(p))
    res.embeddings = torch.stack(embs) if embs else torch.zeros(0, model.embed_dim)
    return res
