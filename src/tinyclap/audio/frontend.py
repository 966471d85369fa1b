"""MS CLAP 2022's log-mel front end, ONNX-exportable.

Computes exactly what msclap's Cnn14 front end computes (torchlibrosa `Spectrogram` + `LogmelFilterBank`
built with window 'hann', center=True, pad_mode 'reflect', ref 1.0, amin 1e-10, top_db None; see
msclap/models/audio.py and torchlibrosa/stft.py, followed for the settings, not copied):

    power STFT (n_fft 1024, hop 320, periodic Hann 1024) -> Slaney mel (64 bands, 50-14000 Hz)
    -> 10 * log10(max(x, 1e-10))

The STFT is a strided conv1d with a fixed real DFT basis (cos and sin rows, window folded in), not
torch.stft, so the module exports to ONNX (opset 17) with a dynamic batch axis and needs no complex ops.
The mel filterbank is computed in numpy (`tinyclap.audio.mel`, librosa's `filters.mel` defaults: Slaney scale
and area normalisation) so librosa is not a runtime dependency.

Two faster forms give the same numbers up to float32 rounding: `FFTLogMel` (torch.fft, for caching a
corpus) and `FactorisedLogMel` (a factorised DFT of plain matrix products for fixed 5 s clips, what the
ONNX export runs: ~110 M instead of ~725 M multiply-adds per clip; `frontend_macs` counts both).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from tinyclap.audio.io import CLIP_SAMPLES
from tinyclap.audio.mel import (  # noqa: F401  (the settings are part of this module's public face)
    AMIN,
    CONFIG_KEYS,
    F_MAX,
    F_MIN,
    HOP_LENGTH,
    N_FFT,
    N_MELS,
    REF,
    SAMPLE_RATE,
    WIN_LENGTH,
    dft_basis,
    mel_filterbank,
    n_frames,
)

# a config (e.g. a hostile checkpoint's front end) beyond this is refused before any basis is built: the
# float64 DFT basis is (n_fft + 2) x n_fft, 134 MB at 4096 (MS CLAP uses 1024)
MAX_N_FFT = 1 << 12


class LogMel(nn.Module):
    """Waveform (B, N) or (N,) at `sample_rate` -> log-mel (B, T, n_mels) in dB, T = N // hop + 1.

    Buffers are non-persistent: they are recomputed from the config, so state dicts stay free of them.
    """

    def __init__(
        self,
        sample_rate: int = SAMPLE_RATE,
        n_fft: int = N_FFT,
        hop_length: int = HOP_LENGTH,
        win_length: int = WIN_LENGTH,
        n_mels: int = N_MELS,
        f_min: float = F_MIN,
        f_max: float | None = F_MAX,
        amin: float = AMIN,
        ref: float = REF,
    ) -> None:
        super().__init__()
        self.check_config(dict(sample_rate=sample_rate, n_fft=n_fft, hop_length=hop_length, win_length=win_length,
                               n_mels=n_mels, amin=amin, ref=ref))
        self.sample_rate = int(sample_rate)
        self.n_fft = int(n_fft)
        self.hop_length = int(hop_length)
        self.win_length = int(win_length)
        self.n_mels = int(n_mels)
        self.f_min = float(f_min)
        self.f_max = float(sample_rate / 2.0 if f_max is None else f_max)
        self.amin = float(amin)
        self.ref = float(ref)
        self.n_bins = self.n_fft // 2 + 1
        basis = dft_basis(self.n_fft, self.win_length)  # (2 * n_bins, n_fft)
        mel = mel_filterbank(self.sample_rate, self.n_fft, self.n_mels, self.f_min, self.f_max)
        self.register_buffer("dft", torch.from_numpy(basis[:, None, :]).float(), persistent=False)
        self.register_buffer("mel", torch.from_numpy(mel.T.copy()).float(), persistent=False)
        # power_to_db's "- 10 log10(max(amin, ref))": 0 for ref 1.0, kept so other refs also match
        self.db_offset = 10.0 * math.log10(max(self.amin, self.ref))

    def config(self) -> dict[str, Any]:
        """JSON-able settings; `LogMel.from_config(m.config())` rebuilds an identical module."""
        return {key: getattr(self, key) for key in CONFIG_KEYS}

    @staticmethod
    def check_config(config: dict[str, Any]) -> None:
        """ValueError for settings that are inconsistent or absurd (checked before any basis is built; upper
        bounds too: the DFT basis is (n_fft + 2, n_fft) floats, built even for a meta-device model)."""
        c = {"n_fft": N_FFT, "hop_length": HOP_LENGTH, "win_length": WIN_LENGTH, "n_mels": N_MELS,
             "sample_rate": SAMPLE_RATE, "amin": AMIN, "ref": REF, **config}
        n_fft, win, hop, n_mels = c["n_fft"], c["win_length"], c["hop_length"], c["n_mels"]
        if not 0 < win <= n_fft <= MAX_N_FFT or not 0 < hop <= n_fft or not 0 < n_mels <= 4096:
            raise ValueError(f"invalid STFT settings: n_fft={n_fft}, win_length={win}, hop_length={hop}, "
                             f"n_mels={n_mels} (n_fft at most {MAX_N_FFT}, n_mels at most 4096)")
        if not c["amin"] > 0 or not c["ref"] > 0:  # `not >` also refuses NaN
            raise ValueError(f"amin and ref must be > 0, got amin={c['amin']}, ref={c['ref']}")
        if not 1 <= c["sample_rate"] <= 768_000:
            raise ValueError(f"invalid sample_rate={c['sample_rate']} (1..768000)")

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> LogMel:
        """Inverse of `config()`; unknown keys are an error (a typo must not silently use a default)."""
        unknown = sorted(set(config) - set(CONFIG_KEYS))
        if unknown:
            raise ValueError(f"unknown LogMel config keys {unknown}; valid: {list(CONFIG_KEYS)}")
        return cls(**config)

    def n_frames(self, num_samples: int) -> int:
        """Output frames T for an input of `num_samples` samples."""
        return n_frames(num_samples, self.hop_length)

    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        if wave.dim() == 1:
            wave = wave[None, :]  # (1, N): a single waveform is a batch of one
        if wave.dim() != 2:
            raise ValueError(f"LogMel expects a waveform of shape (B, N) or (N,), got {tuple(wave.shape)}")
        pad = self.n_fft // 2
        # (skipped while tracing for ONNX: a Python check on a shape would be frozen into the graph)
        if not torch.jit.is_tracing() and wave.shape[-1] <= pad:
            raise ValueError(f"waveform too short for reflect padding: {wave.shape[-1]} samples, need > {pad}")
        x = wave.to(self.dft.dtype)[:, None, :]  # (B, 1, N)
        x = F.pad(x, (pad, pad), mode="reflect")  # (B, 1, N + n_fft)
        return self.frames(x[:, 0])

    def frames(self, x: torch.Tensor) -> torch.Tensor:
        """Log-mel of the frames x[:, i*hop : i*hop + n_fft], without padding: (B, N) -> (B, T', n_mels) with
        T' = (N - n_fft) // hop + 1. `forward` is this on the reflect-padded waveform; timelines call it on
        a long recording's samples once and slice windows from the result (`tinyclap.timeline`)."""
        spec = F.conv1d(x.to(self.dft.dtype)[:, None, :], self.dft, stride=self.hop_length)  # (B, 2 * n_bins, T)
        real, imag = spec.chunk(2, dim=1)  # (B, n_bins, T) each
        power = (real * real + imag * imag).transpose(1, 2)  # (B, T, n_bins)
        mel = torch.matmul(power, self.mel)  # (B, T, n_mels)
        logmel = 10.0 * torch.log10(torch.clamp(mel, min=self.amin))
        if self.db_offset != 0.0:
            logmel = logmel - self.db_offset
        return logmel  # (B, T, n_mels)

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v}" for k, v in self.config().items())


class FFTLogMel(nn.Module):
    """`LogMel` computed with an FFT: same settings, same output up to float rounding.

    Measured max |difference| to LogMel on noise and real recordings: 9e-4 dB for bins above -90 dB, up to
    ~8e-3 dB in near-silent bins by the 1e-10 (-100 dB) floor, where float32 rounding dominates.

    LogMel is a conv1d with a DFT basis so that it exports to ONNX; over a corpus that costs ~20x the
    FLOPs of an FFT. Here: reflect-pad, frame, window, rfft, then |X|^2 summed into the mel bands in one
    matmul (real and imaginary squares share each band weight). Bins above the top band are dropped.
    """

    def __init__(self, frontend: LogMel | None = None) -> None:
        super().__init__()
        frontend = LogMel() if frontend is None else frontend
        self.n_fft, self.hop_length = frontend.n_fft, frontend.hop_length
        self.amin, self.db_offset = frontend.amin, frontend.db_offset
        self.sample_rate = frontend.sample_rate
        self.frontend_config = frontend.config()
        # window = the DFT basis' cosine row 0 (the window with cos(0) = 1), so both paths use one window
        window = frontend.dft[0, 0, :].clone()  # (n_fft,)
        mel = frontend.mel  # (n_bins, n_mels)
        used = int(torch.nonzero(mel.abs().sum(dim=1)).max()) + 1  # bins past the last band add nothing
        self.register_buffer("window", window, persistent=False)
        self.register_buffer("mel2", mel[:used].repeat_interleave(2, dim=0).contiguous(), persistent=False)
        self.used_bins = used
        self.cpu_chunk = 4

    def n_frames(self, num_samples: int) -> int:
        return int(num_samples) // self.hop_length + 1

    def forward(self, wave: torch.Tensor) -> torch.Tensor:  # (B, N) -> (B, T, n_mels)
        if wave.device.type == "cpu" and wave.shape[0] > self.cpu_chunk:
            # small chunks on a CPU: the (B, T, n_fft) intermediates then stay small enough to be reused by
            # the allocator instead of being mapped and page-faulted afresh (measured: ~2x less CPU time)
            return torch.cat([self._logmel(c) for c in wave.split(self.cpu_chunk)])
        return self._logmel(wave)

    def _logmel(self, wave: torch.Tensor) -> torch.Tensor:  # (B, N) -> (B, T, n_mels)
        pad = self.n_fft // 2
        x = F.pad(wave.float()[:, None, :], (pad, pad), mode="reflect")[:, 0]  # (B, N + n_fft)
        frames = x.unfold(-1, self.n_fft, self.hop_length) * self.window  # (B, T, n_fft)
        spec = torch.fft.rfft(frames, dim=-1)[..., : self.used_bins]  # (B, T, used) complex
        power = torch.view_as_real(spec).square().flatten(-2)  # (B, T, 2 * used): re^2, im^2 interleaved
        mel = torch.clamp(power @ self.mel2, min=self.amin)  # (B, T, n_mels)
        logmel = 10.0 * torch.log10(mel)
        return logmel - self.db_offset if self.db_offset != 0.0 else logmel


def _factorised_tables(
    window: np.ndarray, mel: np.ndarray, n1: int, g: int, k2n: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """float64 tables of `FactorisedLogMel`: window (n1, 1, g), stage 1 (2 n1, n1), stage 2 (n1, 2, g, 2 k2n)
    with the twiddles folded in, and the mel rows (n1 * 2 * k2n, n_mels) duplicated for re^2 and im^2."""
    n_fft = n1 * g
    b = np.arange(n1)
    k1 = np.arange(n1)
    ang1 = 2.0 * np.pi * ((k1[:, None] * b[None, :]) % n1) / n1  # (k1, b), integers reduced first
    w1 = np.stack([np.cos(ang1), -np.sin(ang1)], axis=1).reshape(2 * n1, n1)  # rows (k1, re|im)

    r = np.arange(g)
    k = k1[:, None, None] + n1 * np.arange(k2n)[None, None, :]  # (k1, 1, k2)
    ang2 = 2.0 * np.pi * ((r[None, :, None] * k) % n_fft) / n_fft  # (k1, r, k2)
    c, s = np.cos(ang2), -np.sin(ang2)
    # (re, im) of stage 1 times exp(-i ang2): re' = re c - im s', im' = re s' + im c (s' = -sin)
    w2 = np.zeros((n1, 2, g, 2 * k2n))
    w2[:, 0, :, :k2n], w2[:, 0, :, k2n:] = c, s
    w2[:, 1, :, :k2n], w2[:, 1, :, k2n:] = -s, c

    melk = np.zeros((n1, k2n, mel.shape[1]))  # mel row of bin k1 + n1 k2 (0 past the last bin)
    for a in range(n1):
        for j in range(k2n):
            if a + n1 * j < mel.shape[0]:
                melk[a, j] = mel[a + n1 * j]
    mel_ri = np.concatenate([melk, melk], axis=1).reshape(n1 * 2 * k2n, -1)  # re^2 and im^2 rows
    return window.reshape(n1, 1, g), w1, w2, mel_ri


class FactorisedLogMel(nn.Module):
    """LogMel (same numbers) for fixed-length clips, as a factorised DFT made of matrix products.

    Why: LogMel's conv1d STFT costs ~725 M MACs per 5 s clip (~22 ms in ONNX Runtime on one core, more than
    a whole int8 student); this costs ~110 M (~4 ms), and it is what `model.onnx` runs.

    With g = gcd(n_fft, hop) (64), a frame of n_fft samples is n1 = n_fft / g (16) blocks of g samples and
    consecutive frames start hop / g (5) blocks apart, so framing is a few slices of the block matrix.
    Writing n = g b + r and k = k1 + n1 k2 (Cooley-Tukey, e.g. Van Loan, "Computational Frameworks for the
    FFT", 1992, sec. 1.3):

        X[k1 + n1 k2] = sum_r W_N^{r k1} W_g^{r k2} sum_b (w x)[g b + r] W_n1^{b k1}

    Stage 1 is one (2 n1, n1) matrix over b for every (frame, r); stage 2 a (2 g, 2 K2) matrix per k1 with
    the twiddles folded in, evaluated only for the K2 values of k2 whose bins the mel filterbank uses.
    |X|^2 and the mel projection are fused into one product with the mel rows duplicated for real and
    imaginary parts. Tables are computed in float64 and cast once. Input (B, n_samples) -> (B, T, n_mels).
    """

    def __init__(self, logmel: LogMel | None = None, n_samples: int = CLIP_SAMPLES) -> None:
        super().__init__()
        lm = LogMel() if logmel is None else logmel
        self.config_ = lm.config()
        self.n_fft, self.hop = lm.n_fft, lm.hop_length
        self.g = math.gcd(self.n_fft, self.hop)
        self.n1 = self.n_fft // self.g
        self.step = self.hop // self.g  # frame start distance in blocks
        self.n_samples = int(n_samples)
        self.n_frames = lm.n_frames(self.n_samples)
        self.amin, self.db_offset = lm.amin, lm.db_offset
        if self.n_samples <= self.n_fft // 2:
            raise ValueError(f"clip of {self.n_samples} samples is too short for n_fft={self.n_fft}")

        mel = lm.mel.double().cpu().numpy()  # (n_bins, n_mels)
        used = np.nonzero(np.abs(mel).sum(axis=1) > 0)[0]
        if used.size == 0:
            raise ValueError("the mel filterbank is all zeros")
        self.k2n = -(-(int(used[-1]) + 1) // self.n1)  # k2 = 0..k2n-1 covers every used bin
        # LogMel's basis row 0 is cos(0) * window = the analysis window itself
        window = lm.dft[0, 0].double().cpu().numpy()  # (n_fft,)
        tables = _factorised_tables(window, mel, self.n1, self.g, self.k2n)
        for name, table in zip(("window", "w1", "w2", "mel"), tables):
            self.register_buffer(name, torch.from_numpy(table).float(), persistent=False)

    def macs(self) -> int:
        """Multiply-accumulates for one clip: window, stage 1, stage 2, |X|^2 + mel product."""
        t, n1, g, k2n = self.n_frames, self.n1, self.g, self.k2n
        n_mels = self.mel.shape[1]
        return int(
            t * n1 * g + t * g * 2 * n1 * n1 + n1 * 2 * t * g * 2 * k2n + t * n1 * 2 * k2n * (1 + n_mels)
        )

    def forward(self, wave: torch.Tensor) -> torch.Tensor:  # (B, N) -> (B, T, n_mels)
        if not torch.jit.is_tracing() and (wave.dim() != 2 or wave.shape[1] != self.n_samples):
            raise ValueError(f"FactorisedLogMel expects (B, {self.n_samples}), got {tuple(wave.shape)}")
        bsz, t, n1, g = wave.shape[0], self.n_frames, self.n1, self.g
        frames = self._frames(wave)  # (B, n1, T, g), windowed
        y = torch.matmul(self.w1, frames.reshape(bsz, n1, t * g))  # (B, 2 n1, T g): 16-point DFTs
        y = y.reshape(bsz, n1, 2, t, g)  # (B, k1, re|im, T, r)
        z = torch.matmul(y, self.w2).sum(dim=2)  # (B, k1, T, 2 k2n): twiddled 64-point DFTs
        z = z * z  # re^2 | im^2
        power_mel = torch.matmul(z.transpose(1, 2).reshape(bsz, t, -1), self.mel)  # (B, T, n_mels)
        logmel = 10.0 * torch.log10(torch.clamp(power_mel, min=self.amin))
        if self.db_offset != 0.0:
            logmel = logmel - self.db_offset
        return logmel  # (B, T, n_mels)

    def _frames(self, wave: torch.Tensor) -> torch.Tensor:  # (B, N) -> (B, n1, T, g)
        """Reflect-padded, windowed frames as blocks of g samples, cut by slicing (no gather, no unfold)."""
        bsz, t, n1, g, step = wave.shape[0], self.n_frames, self.n1, self.g, self.step
        pad = self.n_fft // 2
        x = F.pad(wave.float()[:, None, :], (pad, pad), mode="reflect")[:, 0]  # (B, N + n_fft)
        q, rem = divmod(n1, step)
        groups = t + q + (1 if rem else 0)
        x = F.pad(x, (0, groups * step * g - (self.n_samples + 2 * pad)))  # zeros past the last frame
        blocks = x.reshape(bsz, groups, step, g).transpose(1, 2)  # (B, step, groups, g)
        # frame t = blocks step*t .. step*t + n1 - 1: slot b = step*j + m is blocks[:, m, t + j]
        parts = [blocks[:, :, j : j + t] for j in range(q)] + ([blocks[:, :rem, q : q + t]] if rem else [])
        return torch.cat(parts, dim=1) * self.window


def frontend_macs(logmel: LogMel | None = None, n_samples: int = CLIP_SAMPLES) -> dict[str, int]:
    """MACs of the front end for one clip, counted by hand (hooks do not see F.conv1d on buffers).

    conv STFT: T frames x (2 n_bins) outputs x n_fft taps; mel: T x n_bins x n_mels; the log is not
    counted. `factorised` is `FactorisedLogMel`'s total (what model.onnx runs).
    """
    lm = LogMel() if logmel is None else logmel
    t = lm.n_frames(n_samples)
    stft = t * 2 * lm.n_bins * lm.n_fft
    mel = t * lm.n_bins * lm.n_mels
    return {
        "conv_stft": stft,
        "mel": mel,
        "total": stft + mel,
        "factorised": FactorisedLogMel(lm, n_samples).macs(),
    }
