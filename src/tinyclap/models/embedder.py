"""The one waveform embedder of a student, and the interface every audio model shares.

Every model tinyclap evaluates, prunes or exports is used through `AudioEmbedder`: a `sample_rate`, an
`embed_dim` and `embed_waveform(wave (B, N), normalize=True) -> (B, D)`. Teachers (MS CLAP 2022, the proxy)
implement it themselves; a student gets it from `StudentEmbedder` (CLAP log-mel front end + student).

Normalisation is said out loud, as in open_clip: every encoder takes `normalize=`. Embedders default to
`normalize=True` (cosine / zero-shot use); the bare student module returns unnormalised projections
(`student(logmel)`, `student.encode(logmel, normalize=False)`), which is what distillation trains on.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["AudioEmbedder", "StudentEmbedder"]


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

    def __init__(self, student: nn.Module, frontend: nn.Module | None = None) -> None:
        super().__init__()
        from tinyclap.audio.frontend import LogMel

        self.frontend = frontend if frontend is not None else LogMel()
        self.student = student
        self.sample_rate = int(getattr(self.frontend, "sample_rate", 44100))
        self.embed_dim = int(student.embed_dim)
        self.name = getattr(student, "name", type(student).__name__)

    def encode_audio(self, logmel: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        """(B, T, n_mels) log-mel -> (B, D) shared-space embeddings."""
        emb = self.student(logmel)
        return F.normalize(emb, dim=-1) if normalize else emb

    def embed_waveform(self, wave: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        """(B, N) waveforms at `sample_rate` -> (B, D)."""
        return self.encode_audio(self.frontend(wave), normalize=normalize)

    def forward(self, wave: torch.Tensor) -> torch.Tensor:  # (B, N) -> normalised (B, D)
        return self.embed_waveform(wave)
