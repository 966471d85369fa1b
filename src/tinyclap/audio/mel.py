"""MS CLAP 2022's log-mel settings and the numpy parts of its front end (torch-free).

`mel_filterbank` (librosa's Slaney filters, computed here so librosa is no run-time dependency) and
`dft_basis` (the windowed real DFT) are what `tinyclap.audio.frontend.LogMel` builds its buffers from.
`NumpyLogMel` computes the same log-mel with numpy's FFT, for the torch-free runtime's timelines
(`tinyclap.timeline`), where the front end runs once over a long recording and windows are sliced from it.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

SAMPLE_RATE = 44100
N_FFT = 1024
HOP_LENGTH = 320
WIN_LENGTH = 1024
N_MELS = 64
F_MIN = 50.0
F_MAX = 14000.0
AMIN = 1e-10
REF = 1.0
CONFIG_KEYS = ("sample_rate", "n_fft", "hop_length", "win_length", "n_mels", "f_min", "f_max", "amin", "ref")
DEFAULTS = dict(zip(CONFIG_KEYS, (SAMPLE_RATE, N_FFT, HOP_LENGTH, WIN_LENGTH, N_MELS, F_MIN, F_MAX, AMIN, REF)))


def n_frames(num_samples: int, hop_length: int = HOP_LENGTH) -> int:
    """STFT frames for a centred (reflect-padded) STFT of `num_samples`: 220500 samples (5 s) -> 690."""
    return int(num_samples) // int(hop_length) + 1


# Slaney's Auditory Toolbox mel scale: linear below 1 kHz (200/3 Hz per mel), logarithmic above
_F_SP = 200.0 / 3.0
_MIN_LOG_HZ = 1000.0
_MIN_LOG_MEL = _MIN_LOG_HZ / _F_SP
_LOGSTEP = math.log(6.4) / 27.0


def _hz_to_mel(hz: np.ndarray) -> np.ndarray:
    """Slaney's mel scale of frequencies in Hz."""
    hz = np.asarray(hz, dtype=np.float64)
    # np.maximum keeps log() away from 0 for the branch np.where discards
    log = _MIN_LOG_MEL + np.log(np.maximum(hz, _MIN_LOG_HZ) / _MIN_LOG_HZ) / _LOGSTEP
    return np.where(hz >= _MIN_LOG_HZ, log, hz / _F_SP)


def _mel_to_hz(mel: np.ndarray) -> np.ndarray:
    """Inverse of `_hz_to_mel`."""
    mel = np.asarray(mel, dtype=np.float64)
    log = _MIN_LOG_HZ * np.exp(_LOGSTEP * (mel - _MIN_LOG_MEL))
    return np.where(mel >= _MIN_LOG_MEL, log, mel * _F_SP)


def mel_filterbank(
    sample_rate: int = SAMPLE_RATE,
    n_fft: int = N_FFT,
    n_mels: int = N_MELS,
    f_min: float = F_MIN,
    f_max: float | None = F_MAX,
) -> np.ndarray:
    """Slaney-style triangular mel filters with area normalisation -> (n_mels, n_fft // 2 + 1) float64.

    The same matrix as `librosa.filters.mel(sr=..., n_fft=..., n_mels=..., fmin=..., fmax=...)` with its
    defaults (htk=False, norm='slaney'), computed in float64.
    """
    if f_max is None:
        f_max = sample_rate / 2.0
    if not 0.0 <= f_min < f_max <= sample_rate / 2.0:
        raise ValueError(f"need 0 <= f_min < f_max <= sample_rate/2, got f_min={f_min}, f_max={f_max}")
    n_bins = n_fft // 2 + 1
    fft_hz = np.linspace(0.0, sample_rate / 2.0, n_bins)  # (n_bins,)
    # n_mels + 2 edges equally spaced in mel: band i rises from edge i, peaks at i+1, falls to i+2
    edges_hz = _mel_to_hz(np.linspace(_hz_to_mel(f_min), _hz_to_mel(f_max), n_mels + 2))  # (n_mels+2,)
    widths = np.diff(edges_hz)  # (n_mels+1,)
    dist = edges_hz[:, None] - fft_hz[None, :]  # (n_mels+2, n_bins)
    rising = -dist[:-2] / widths[:-1, None]  # (n_mels, n_bins)
    falling = dist[2:] / widths[1:, None]  # (n_mels, n_bins)
    weights = np.maximum(0.0, np.minimum(rising, falling))
    # Slaney normalisation: each triangle has unit area in Hz, i.e. peak 2 / (its bandwidth)
    weights *= (2.0 / (edges_hz[2:] - edges_hz[:-2]))[:, None]
    return weights


def dft_basis(n_fft: int, win_length: int) -> np.ndarray:
    """Real DFT basis with a periodic Hann window folded in -> (2 * (n_fft//2+1), n_fft) float64.

    Rows [0, n_bins) are w[n] cos(2 pi k n / N), rows [n_bins, 2 n_bins) are -w[n] sin(2 pi k n / N)
    (the sign is irrelevant for the power, kept to match exp(-i...)). Built in float64 and cast once.
    """
    n_bins = n_fft // 2 + 1
    n = np.arange(win_length, dtype=np.float64)
    window = 0.5 - 0.5 * np.cos(2.0 * np.pi * n / win_length)  # periodic ("fftbins") Hann
    if win_length < n_fft:  # centred in the frame, as librosa.util.pad_center does
        left = (n_fft - win_length) // 2
        window = np.pad(window, (left, n_fft - win_length - left))
    k = np.arange(n_bins, dtype=np.int64)[:, None]
    t = np.arange(n_fft, dtype=np.int64)[None, :]
    # reduce k*t mod N in integers first: the angle stays in [0, 2 pi) and loses no precision
    angle = 2.0 * np.pi * ((k * t) % n_fft) / n_fft  # (n_bins, n_fft)
    return np.concatenate([np.cos(angle) * window, -np.sin(angle) * window], axis=0)


class NumpyLogMel:
    """`LogMel` in numpy (float64 FFT, float32 out): waveform (N,) -> log-mel (T, n_mels), T = N // hop + 1.

    Same settings and numbers as `tinyclap.audio.frontend.LogMel` up to float32 rounding (`tests/test_classifier.py`
    bounds the difference); `frames` computes frames without the centre padding, for slicing long audio.
    """

    def __init__(self, config: dict[str, Any] | None = None) -> None:
        cfg = {**DEFAULTS, **(config or {})}
        unknown = sorted(set(cfg) - set(CONFIG_KEYS))
        if unknown:
            raise ValueError(f"unknown log-mel config keys {unknown}; valid: {list(CONFIG_KEYS)}")
        self.sample_rate, self.n_fft = int(cfg["sample_rate"]), int(cfg["n_fft"])
        self.hop_length, self.win_length = int(cfg["hop_length"]), int(cfg["win_length"])
        self.n_mels, self.amin, self.ref = int(cfg["n_mels"]), float(cfg["amin"]), float(cfg["ref"])
        # bounded: an export's manifest (hostile until checked) sets these, and the filterbank is (bins, M)
        if not (0 < self.win_length <= self.n_fft <= 1 << 15 and 0 < self.hop_length <= self.n_fft
                and 0 < self.n_mels <= 4096 and self.amin > 0 and self.ref > 0 and 1 <= self.sample_rate <= 768_000):
            raise ValueError(f"invalid log-mel settings {cfg}")
        window = 0.5 - 0.5 * np.cos(2.0 * np.pi * np.arange(self.win_length) / self.win_length)
        left = (self.n_fft - self.win_length) // 2
        self.window = np.pad(window, (left, self.n_fft - self.win_length - left))  # (n_fft,)
        f_max = cfg["f_max"] if cfg["f_max"] is not None else self.sample_rate / 2.0
        mel = mel_filterbank(self.sample_rate, self.n_fft, self.n_mels, float(cfg["f_min"]), f_max).T  # (bins, M)
        used = np.flatnonzero(mel.any(axis=1))  # only the FFT bins some mel band uses (up to f_max)
        self.bins = slice(int(used[0]), int(used[-1]) + 1) if used.size else slice(0, 1)
        self.mel = np.ascontiguousarray(mel[self.bins], dtype=np.float32)  # (used bins, M)
        self.db_offset = 10.0 * math.log10(max(self.amin, self.ref))
        self.frames_per_step = 128

    def n_frames(self, num_samples: int) -> int:
        return n_frames(num_samples, self.hop_length)

    def frames(self, x: np.ndarray) -> np.ndarray:
        """Log-mel of the frames x[i*hop : i*hop + n_fft] (no padding) -> ((len(x) - n_fft) // hop + 1, M)."""
        x = np.asarray(x, dtype=np.float32)
        if x.ndim != 1 or x.shape[0] < self.n_fft:
            raise ValueError(f"need a 1-D signal of at least {self.n_fft} samples, got shape {x.shape}")
        fr = np.lib.stride_tricks.sliding_window_view(x, self.n_fft)[:: self.hop_length]  # (T, n_fft) view
        out = np.empty((fr.shape[0], self.n_mels), np.float32)
        for i in range(0, fr.shape[0], self.frames_per_step):  # a few frames at a time: small temporaries
            spec = np.fft.rfft(fr[i : i + self.frames_per_step] * self.window, axis=-1)[:, self.bins]  # complex128
            power = (spec.real**2 + spec.imag**2).astype(np.float32)
            out[i : i + self.frames_per_step] = 10.0 * np.log10(np.maximum(power @ self.mel, self.amin))
        return out - np.float32(self.db_offset) if self.db_offset else out

    def __call__(self, wave: np.ndarray) -> np.ndarray:
        """(N,) -> (T, n_mels), centred frames with reflect padding, exactly as `LogMel.forward`."""
        wave = np.asarray(wave, dtype=np.float32)
        pad = self.n_fft // 2
        if wave.ndim != 1 or wave.shape[0] <= pad:
            raise ValueError(f"need a 1-D waveform longer than {pad} samples, got shape {wave.shape}")
        return self.frames(np.pad(wave, pad, mode="reflect"))
