"""The two microcontroller graphs of an MCU student and the clip decision they make together.

A clip is cut into windows of `window` seconds (back to back, the last one aligned to the clip's end), each
window's log-mel is normalised per mel bin (the student's `bn0`, done by the firmware while it quantises the
front end's output; values beyond the int8 input range saturate, as the student clips them to +-INPUT_CLIP),
the backbone runs per window, its pooled features are averaged over the clip's windows and the head runs once
on the mean. `torch_embedding` is that decision in torch fp32 (the reference the TFLM
graphs are checked against); `tflm_embedding` is the same with TFLM's kernels.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from tinyclap.audio.frontend import LogMel
from tinyclap.deploy.mcu.runtime import window_starts
from tinyclap.models.mcu import INPUT_CLIP, is_mcu_name, min_frames


class Backbone(nn.Module):
    """A normalised log-mel window (1, T, n_mels) -> pooled features (1, F): the student's base after bn0."""

    def __init__(self, student: nn.Module) -> None:
        super().__init__()
        self.base = student.base

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b = self.base
        x = x.unsqueeze(1)
        for layer in b._layers:
            x = layer(x)
        return b.pn_block(x).mean((-1, -2))


def input_norm(student: nn.Module) -> np.ndarray:
    """(2, n_mels) float32: the per-mel scale and shift (the student's eval-mode bn0) the firmware applies."""
    bn = student.base.bn0
    with torch.no_grad():
        scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
        shift = bn.bias - bn.running_mean * scale
    return torch.stack([scale, shift]).float().numpy()


def check_student(student: nn.Module) -> None:
    """Refuse anything but an MCU student (GELU and PAD ops have no place in a TFLM graph)."""
    if not is_mcu_name(getattr(student, "name", None)):
        raise ValueError(
            f"the TFLM export needs a microcontroller student (e.g. distil --student mcu-s or mcu-m); "
            f"{getattr(student, 'name', type(student).__name__)!r} is not one"
        )


def window_logmels(wave: np.ndarray, window_samples: int, lm: LogMel, norm: np.ndarray) -> np.ndarray:
    """A clip (N,) -> its windows' normalised log-mels (K, T, n_mels) float32, clipped to +-INPUT_CLIP as the
    student clips them (a short clip is zero padded)."""
    wave = np.asarray(wave, np.float32)
    if wave.shape[0] < window_samples:
        wave = np.pad(wave, (0, window_samples - wave.shape[0]))
    wins = np.stack([wave[s : s + window_samples] for s in window_starts(wave.shape[0], window_samples)])
    with torch.no_grad():
        mel = lm(torch.from_numpy(wins)).numpy()  # (K, T, M)
    return np.clip(mel * norm[0] + norm[1], -INPUT_CLIP, INPUT_CLIP).astype(np.float32)


def window_frames(student: nn.Module, lm: LogMel, window: float) -> tuple[int, int]:
    """(samples, frames) of a window of `window` seconds; ValueError if the backbone cannot take it."""
    samples = int(round(window * lm.sample_rate))
    if not 0 < window <= 10:
        raise ValueError(f"--window must be in (0, 10] seconds, got {window}")
    frames = lm.n_frames(samples)
    need = min_frames(student)
    if frames < need:
        raise ValueError(f"a {window} s window gives {frames} log-mel frames; {student.name} needs at least {need}")
    return samples, frames


def clip_embedding(windows: np.ndarray, backbone: Callable[[np.ndarray], np.ndarray],
                   head: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
    """(K, T, M) windows -> (D,) L2-normalised embedding: head(mean of backbone(window))."""
    feats = np.mean([backbone(w[None]) for w in windows], axis=0)
    emb = np.asarray(head(feats[None]), np.float64).reshape(-1)
    return (emb / max(np.linalg.norm(emb), 1e-12)).astype(np.float32)


def torch_fns(student: nn.Module) -> tuple[Callable, Callable]:
    """The fp32 torch backbone and head as numpy functions (batch of one)."""
    backbone = Backbone(student).eval()
    head = student.projection.eval()

    def run(module: nn.Module) -> Callable[[np.ndarray], np.ndarray]:
        def f(x: np.ndarray) -> np.ndarray:
            with torch.no_grad():
                return module(torch.from_numpy(np.asarray(x, np.float32))).numpy().reshape(-1)
        return f
    return run(backbone), run(head)


def calibration_sets(student: nn.Module, clips: Sequence[np.ndarray], max_windows: int = 96
                     ) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Calibration inputs of the backbone (windows) and of the head: each clip's mean window features and,
    since a clip may be one window, every window's features too (the head's int8 input range must hold a
    single window's features as well as a mean; calibrated on means alone, one held-out clip's features
    went past the range and its embedding fell to cosine 0.96)."""
    backbone, _ = torch_fns(student)
    windows, feats, window_feats = [], [], []
    for wins in clips:
        f = [backbone(w[None]) for w in wins]
        feats.append(torch.from_numpy(np.mean(f, axis=0)[None].astype(np.float32)))
        window_feats += [torch.from_numpy(x[None].astype(np.float32)) for x in f]
        windows += [torch.from_numpy(w[None]) for w in wins]
    step = max(1, len(windows) // max_windows)
    return windows[::step][:max_windows], feats + window_feats[::step][:max_windows]


def agreement(a: np.ndarray, b: np.ndarray, weights: np.ndarray, weights_b: np.ndarray | None = None) -> float:
    """Share of rows whose top-1 class is the same for embeddings a (scored by `weights` rows) and b (by
    `weights_b`, default the same)."""
    wb = weights if weights_b is None else weights_b
    return float(np.mean(np.argmax(a @ weights.T, 1) == np.argmax(b @ wb.T, 1)))


def parity(ref: np.ndarray, dev: np.ndarray, weights: np.ndarray, weights_int8: np.ndarray) -> dict[str, Any]:
    """Cosine of device to reference embeddings (rows) and top-1 agreement (float and int8 class matrix)."""
    cos = np.sum(ref * dev, axis=1)
    return {
        "clips": int(ref.shape[0]),
        "mean_cosine": float(cos.mean()),
        "min_cosine": float(cos.min()),
        "top1_agreement": agreement(ref, dev, weights),
        "top1_agreement_int8_classes": agreement(ref, dev, weights, weights_int8.astype(np.float32)),
    }
