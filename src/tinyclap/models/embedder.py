"""The one waveform embedder of a student, and the interface every audio model shares.

Every model tinyclap evaluates, prunes or exports is used through `AudioEmbedder`: a `sample_rate`, an
`embed_dim` and `embed_waveform(wave (B, N), normalize=True) -> (B, D)`. Teachers (MS CLAP 2022, the proxy)
implement it themselves; a student gets it from `StudentEmbedder` (CLAP log-mel front end + student).

Normalisation is said out loud, as in open_clip: every encoder takes `normalize=`. Embedders default to
`normalize=True` (cosine / zero-shot use); the bare student module returns unnormalised projections
(`student(logmel)`, `student.encode(logmel, normalize=False)`), which is what distillation trains on.

**Pooled windows** (`pool_window=W` seconds, what a microcontroller does with a clip it cannot hold at once):
the clip is cut into windows of W s (`tinyclap.audio.io.window_starts`: back to back, the last one aligned
to the clip's end when W does not divide it), the front end and the student's backbone run on each window,
the (2048,) backbone features are averaged over the windows and the projection head runs once on the mean.
Averaging the final embeddings of the windows instead loses more (bench/REPORT.md, "Pooled windows").
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["AudioEmbedder", "StudentEmbedder", "with_pool_window"]

MIN_POOL_WINDOW = 0.05  # seconds: a window must hold a few STFT frames (n_fft 1024 at 44.1 kHz is 23 ms)


@runtime_checkable
class AudioEmbedder(Protocol):
    """What evaluation, pruning and export need from an audio model: waveform (B, N) at `sample_rate` ->
    (B, embed_dim), L2-normalised unless `normalize=False`."""

    sample_rate: int
    embed_dim: int

    def embed_waveform(self, wave: torch.Tensor, normalize: bool = True) -> torch.Tensor: ...


class StudentEmbedder(nn.Module):
    """CLAP log-mel front end + a student: waveform (B, N) at 44.1 kHz -> (B, D), normalised by default.

    The attribute names `frontend` and `student` name the ONNX node scopes (`/frontend/*`, `/student/*`) of
    the exported graph; `forward(wave)` is `embed_waveform(wave)`, the graph of `model.onnx`.
    """

    kind = "student"

    def __init__(self, student: nn.Module, frontend: nn.Module | None = None, pool_window: float | None = None
                 ) -> None:
        super().__init__()
        from tinyclap.audio.frontend import LogMel

        self.frontend = frontend if frontend is not None else LogMel()
        self.student = student
        self.sample_rate = int(getattr(self.frontend, "sample_rate", 44100))
        self.embed_dim = int(student.embed_dim)
        self.name = getattr(student, "name", type(student).__name__)
        self.pool_window: float | None = None
        self.set_pool_window(pool_window)

    def set_pool_window(self, seconds: float | None) -> None:
        """Embed waveforms as pooled windows of `seconds` (see the module docstring); None: the whole clip."""
        if seconds is not None:
            if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or not (
                MIN_POOL_WINDOW <= seconds <= 3600
            ):
                raise ValueError(f"pool window must be a number of seconds from {MIN_POOL_WINDOW} to 3600, "
                                 f"got {seconds!r}")
            seconds = float(seconds)
        self.pool_window = seconds

    @property
    def pool_samples(self) -> int | None:
        """The pool window in samples (None without one)."""
        return None if self.pool_window is None else int(round(self.pool_window * self.sample_rate))

    def pool_split(self, wave: torch.Tensor) -> tuple[torch.Tensor, int]:
        """(B, N) waveforms -> ((B * K, win) windows of the pool window, K): `window_starts`' windows of each
        row (a row shorter than the window is zero-padded to it)."""
        from tinyclap.audio.io import window_starts

        win, n = self.pool_samples, int(wave.shape[-1])
        if win is None:
            raise ValueError("pool_split needs a pool window (set_pool_window)")
        if n < win:
            wave = F.pad(wave, (0, win - n))
        starts = window_starts(max(n, win), win)
        return torch.stack([wave[:, s : s + win] for s in starts], 1).reshape(-1, win), len(starts)

    def encode_audio(self, logmel: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        """(B, T, n_mels) log-mel -> (B, D) shared-space embeddings."""
        emb = self.student(logmel)
        return F.normalize(emb, dim=-1) if normalize else emb

    def embed_waveform(self, wave: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        """(B, N) waveforms at `sample_rate` -> (B, D); with a pool window, head(mean of window features)."""
        if self.pool_window is None:
            return self.encode_audio(self.frontend(wave), normalize=normalize)
        windows, k = self.pool_split(wave)
        emb = self.student(self.frontend(windows), windows=k)  # one module call: ONNX scopes /student/...
        return F.normalize(emb, dim=-1) if normalize else emb

    def forward(self, wave: torch.Tensor) -> torch.Tensor:  # (B, N) -> normalised (B, D)
        return self.embed_waveform(wave)


def with_pool_window(model: Any, seconds: float | None) -> Any:
    """`model` set to embed with pooled windows of `seconds` (None: leaves it as it is). Only a student's
    backbone and head run apart: a teacher is a one-line ValueError, and so is an export unless it was
    exported with that window (`tinyclap.classifier.export_pool_window`)."""
    if seconds is None:
        return model
    if getattr(model, "kind", None) == "export" and hasattr(model, "runtime"):
        from tinyclap.classifier import export_pool_window

        export_pool_window(model.runtime.manifest, seconds, model.runtime.export_dir)
        return model
    if not isinstance(model, StudentEmbedder) or not hasattr(model.student, "features"):
        kind = getattr(model, "kind", None) or type(model).__name__
        raise ValueError(f"a pool window needs a student (backbone per window, head once), not a {kind}")
    model.set_pool_window(seconds)
    return model
