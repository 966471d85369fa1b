"""Export a student (log-mel front end + student) to ONNX, check parity, quantise to int8.

An export folder holds:

- `model.onnx`    waveform (B, 220500) at 44.1 kHz -> L2-normalised embedding (B, D); dynamic batch.
- `student.onnx`  log-mel (B, T, 64) -> L2-normalised embedding (B, D); dynamic batch and frames.
- `model.int8.onnx`, `student.int8.onnx` (with `quantize="int8"`): ONNX Runtime static QDQ quantisation.
- `classes.npz`   the zero-shot class matrix (`tinyclap.zeroshot.ZeroShotClassifier.save`).
- `manifest.json` rates, clip length, front-end and student config, versions, SHA-256 of every file,
  parity and quantisation results. `tinyclap.runtime` (torch-free) refuses files whose hash differs.

Front end in ONNX. `tinyclap.audio.frontend.LogMel` computes the STFT as one strided conv1d against a
(1026, 1024) DFT basis: 725 M multiply-accumulates per 5 s clip, about 22 ms in ONNX Runtime on one core,
more than the whole int8 student. `FactorisedLogMel` computes the same log-mel with a two-stage
Cooley-Tukey factorisation of the 1024-point DFT written as plain matrix products (block framing by
slicing, a 16-point DFT over the blocks, then twiddled 64-point DFTs per residue), keeping only the bins
that the mel filterbank uses (up to 14 kHz): ~110 M MACs and ~4 ms. Its output equals LogMel's up to
float32 rounding (max |difference| ~2e-5 dB); `check_parity` compares the ONNX model against the plain
PyTorch `LogMel` + student on real recordings, so a wrong factorisation cannot pass.

What does not quantise well, and why (measured on UrbanSound8K, calibration on fold 1, held-out fold 2,
phinet_alpha_1.50_beta_0.75_t0_6_N_7 with random weights whose BatchNorm statistics were re-estimated on
real audio; every export records its own numbers in manifest.json under "quantization"):

- The front end. Its tensors span a huge dynamic range: the power spectrum covers ~100 dB (amin 1e-10)
  and the log turns *relative* error in small values into large absolute errors in dB. One per-tensor
  8-bit scale (256 levels, ~48 dB) set by the loudest bin rounds every quiet bin to 0, which the log maps
  to -100 dB; the 8-bit waveform itself has only ~48 dB SNR. Quantising it too drops the held-out mean
  cosine to int8 from 0.998 to ~0.3 and zero-shot top-1 agreement to ~10 % ("frontend_int8" in the
  manifest). It stays fp32 in model.int8.onnx (its nodes are excluded); it costs ~4 ms anyway.
- The student's first blocks. The stem sees the log-mel itself (its 3x3 depthwise conv has ONE channel),
  so 8 bits there (~0.5 dB steps over a ~120 dB range) perturb everything downstream: all-int8 student
  0.83 mean cosine; stem fp32 0.963; + block 1 0.968; + block 2 0.992; + block 3 0.995; + block 4 0.998.
  `quant_plan` therefore keeps the first `fp32_blocks` blocks fp32, cutting on block outputs (the narrow
  residual stream, so the fp32->int8 boundary is cheap), and `search_fp32_blocks` picks the fewest that
  reach a target cosine on the calibration clips. Those full-resolution blocks have few, odd channel
  counts (18-72) where ONNX Runtime's int8 kernels are no faster than its fp32 NCHWc ones anyway.
- The graph optimisation of `quant_pre_process` fuses the projection head's residual add into a Gemm with
  a non-constant bias, which the quantiser cannot convert: its int8 weight would be dequantised on every
  run (~4 ms). The pre-processing therefore does shape inference only.
- Everything else (pointwise and depthwise convolutions of the later blocks, the projection head)
  quantises well: per-channel int8 weights, uint8 activations (percentile calibration is slightly better
  than min/max: 0.9979 vs 0.9976 mean cosine here).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import platform
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from tinyclap._util import atomic_write_text
from tinyclap.audio import CLIP_SAMPLES, CLIP_SECONDS, SAMPLE_RATE, AudioError, fit_clip, load_audio
from tinyclap.audio.frontend import LogMel
from tinyclap.deploy.runtime import ort_session
from tinyclap.zeroshot import ZeroShotClassifier

EXPORT_FORMAT = "tinyclap-export/1"
MODEL_FILE = "model.onnx"
STUDENT_FILE = "student.onnx"
MODEL_INT8_FILE = "model.int8.onnx"
STUDENT_INT8_FILE = "student.int8.onnx"
CLASSES_FILE = "classes.npz"
MANIFEST_FILE = "manifest.json"
DEFAULT_OPSET = 17
PARITY_MIN_COSINE = 0.9999
INT8_TARGET_COSINE = 0.99
INT8_TARGET_TOP1 = 0.98
FRONTEND_SCOPE = "/frontend/"  # ONNX node-name prefix of the front end inside model.onnx
AUDIO_SUFFIXES = (".wav", ".flac", ".ogg", ".oga", ".opus", ".mp3", ".aif", ".aiff", ".au", ".w64", ".caf")


class ParityError(ValueError):
    """The exported ONNX model does not reproduce the PyTorch model."""


# ---------------------------------------------------------------------------------------------------------
# ONNX-friendly front end
# ---------------------------------------------------------------------------------------------------------


class FactorisedLogMel(nn.Module):
    """LogMel (same numbers) for fixed-length clips, as a factorised DFT made of matrix products.

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
        n1, g, k2n, n_fft = self.n1, self.g, self.k2n, self.n_fft

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

        self.register_buffer("window", torch.from_numpy(window.reshape(n1, 1, g)).float(), persistent=False)
        self.register_buffer("w1", torch.from_numpy(w1).float(), persistent=False)
        self.register_buffer("w2", torch.from_numpy(w2).float(), persistent=False)
        self.register_buffer("mel", torch.from_numpy(mel_ri).float(), persistent=False)

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
        bsz, t, n1, g, step = wave.shape[0], self.n_frames, self.n1, self.g, self.step
        pad = self.n_fft // 2
        x = F.pad(wave.float()[:, None, :], (pad, pad), mode="reflect")[:, 0]  # (B, N + n_fft)
        q, rem = divmod(n1, step)
        groups = t + q + (1 if rem else 0)
        x = F.pad(x, (0, groups * step * g - (self.n_samples + 2 * pad)))  # zeros past the last frame
        blocks = x.reshape(bsz, groups, step, g).transpose(1, 2)  # (B, step, groups, g)
        # frame t = blocks step*t .. step*t + n1 - 1: slot b = step*j + m is blocks[:, m, t + j]
        parts = [blocks[:, :, j : j + t] for j in range(q)] + ([blocks[:, :rem, q : q + t]] if rem else [])
        frames = torch.cat(parts, dim=1) * self.window  # (B, n1, T, g), windowed
        y = torch.matmul(self.w1, frames.reshape(bsz, n1, t * g))  # (B, 2 n1, T g): 16-point DFTs
        y = y.reshape(bsz, n1, 2, t, g)  # (B, k1, re|im, T, r)
        z = torch.matmul(y, self.w2).sum(dim=2)  # (B, k1, T, 2 k2n): twiddled 64-point DFTs
        z = z * z  # re^2 | im^2
        power_mel = torch.matmul(z.transpose(1, 2).reshape(bsz, t, -1), self.mel)  # (B, T, n_mels)
        logmel = 10.0 * torch.log10(torch.clamp(power_mel, min=self.amin))
        if self.db_offset != 0.0:
            logmel = logmel - self.db_offset
        return logmel  # (B, T, n_mels)


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


# ---------------------------------------------------------------------------------------------------------
# Export wrappers
# ---------------------------------------------------------------------------------------------------------


class WaveformEmbedder(nn.Module):
    """front end + student + L2 normalisation: (B, N) -> (B, D); the graph of model.onnx."""

    def __init__(self, frontend: nn.Module, student: nn.Module) -> None:
        super().__init__()
        self.frontend = frontend  # attribute names give ONNX node scopes /frontend/*, /student/*
        self.student = student

    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.student(self.frontend(wave)), dim=-1)


class LogmelEmbedder(nn.Module):
    """student + L2 normalisation: (B, T, n_mels) -> (B, D); the graph of student.onnx."""

    def __init__(self, student: nn.Module) -> None:
        super().__init__()
        self.student = student

    def forward(self, logmel: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.student(logmel), dim=-1)


def onnx_export(
    module: nn.Module,
    example: torch.Tensor,
    path: str | os.PathLike,
    input_name: str,
    dynamic: dict[int, str],
    opset: int = DEFAULT_OPSET,
) -> Path:
    """TorchScript-based ONNX export (dynamo=False: onnxscript is not a dependency), eval mode, no grad.

    Eval mode lets the exporter fold BatchNorm into the preceding convolutions.
    """
    if opset < 17:
        raise ValueError(f"opset must be >= 17 (LayerNormalization and the STFT ops), got {opset}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    was_training = module.training
    module.eval()
    try:
        with torch.no_grad(), warnings.catch_warnings():
            # tracer warnings about Python-level shape checks are expected (they are skipped while tracing)
            warnings.simplefilter("ignore")
            torch.onnx.export(
                module,
                (example,),
                str(path),
                dynamo=False,
                opset_version=opset,
                input_names=[input_name],
                output_names=["embedding"],
                dynamic_axes={input_name: dynamic, "embedding": {0: "batch"}},
                do_constant_folding=True,
            )
    finally:
        module.train(was_training)
    return path


def export_onnx_models(
    student: nn.Module,
    out_dir: str | os.PathLike,
    *,
    opset: int = DEFAULT_OPSET,
    frontend: str = "factorised",
    logmel: LogMel | None = None,
) -> dict[str, Path]:
    """Write model.onnx (front end + student) and student.onnx into `out_dir`; returns their paths.

    `frontend="factorised"` (default) uses `FactorisedLogMel`; `"conv"` exports `LogMel` as it is (the
    conv1d STFT, ~5x slower in ONNX Runtime).
    """
    lm = LogMel() if logmel is None else logmel
    if frontend == "factorised":
        fe: nn.Module = FactorisedLogMel(lm, CLIP_SAMPLES)
    elif frontend == "conv":
        fe = lm
    else:
        raise ValueError(f"frontend must be 'factorised' or 'conv', got {frontend!r}")
    out_dir = Path(out_dir)
    wave = torch.randn(2, CLIP_SAMPLES, generator=torch.Generator().manual_seed(0)) * 0.1  # (2, N)
    with torch.no_grad():
        mel = lm(wave)  # (2, T, n_mels)
    model_path = onnx_export(
        WaveformEmbedder(fe, student).eval(), wave, out_dir / MODEL_FILE, "waveform", {0: "batch"}, opset
    )
    student_path = onnx_export(
        LogmelEmbedder(student).eval(),
        mel,
        out_dir / STUDENT_FILE,
        "logmel",
        {0: "batch", 1: "frames"},
        opset,
    )
    return {"model": model_path, "student": student_path}


# ---------------------------------------------------------------------------------------------------------
# ONNX Runtime helpers
# ---------------------------------------------------------------------------------------------------------


def ort_embed(session: Any, x: np.ndarray, batch_size: int = 16) -> np.ndarray:
    """Run a one-input session over `x` in batches -> (B, D) float32."""
    name = session.get_inputs()[0].name
    out = [
        session.run(None, {name: np.ascontiguousarray(x[i : i + batch_size], dtype=np.float32)})[0]
        for i in range(0, len(x), batch_size)
    ]
    return np.concatenate(out).astype(np.float32, copy=False)


def sha256_file(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a / np.maximum(np.linalg.norm(a, axis=-1, keepdims=True), 1e-12)
    b = b / np.maximum(np.linalg.norm(b, axis=-1, keepdims=True), 1e-12)
    return (a * b).sum(-1)


# ---------------------------------------------------------------------------------------------------------
# Real audio for parity and calibration
# ---------------------------------------------------------------------------------------------------------


def find_audio(folder: str | os.PathLike) -> list[Path]:
    """Audio files (by suffix) under `folder`, recursively, sorted; error if there are none."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ValueError(f"{folder}: not a folder of audio files")
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in AUDIO_SUFFIXES)
    if not files:
        raise ValueError(f"{folder}: no audio files ({', '.join(AUDIO_SUFFIXES)}) found")
    return files


def pick(files: Sequence[Path], n: int, seed: int = 0) -> list[Path]:
    """A deterministic, order-independent sample of up to `n` files (seeded shuffle of the sorted list)."""
    files = sorted(files)
    if len(files) <= n:
        return files
    idx = np.random.default_rng(seed).permutation(len(files))[:n]
    return [files[i] for i in sorted(idx)]


@dataclass
class Clips:
    """5 s clips (centre crop / zero pad) of the files that decoded; bad files are listed, not fatal."""

    paths: list[str] = field(default_factory=list)
    waves: np.ndarray = field(default_factory=lambda: np.zeros((0, CLIP_SAMPLES), np.float32))  # (K, N)
    failed: list[tuple[str, str]] = field(default_factory=list)


def load_clips(paths: Iterable[str | os.PathLike]) -> Clips:
    out = Clips()
    waves = []
    for p in paths:
        try:
            waves.append(fit_clip(load_audio(p, SAMPLE_RATE), CLIP_SAMPLES, policy="eval"))
        except AudioError as e:
            out.failed.append((os.fsdecode(p), e.problem))
            continue
        out.paths.append(os.fsdecode(p))
    if waves:
        out.waves = np.stack(waves)
    return out


# ---------------------------------------------------------------------------------------------------------
# Parity
# ---------------------------------------------------------------------------------------------------------


def check_parity(
    reference: np.ndarray, onnx: np.ndarray, what: str, threshold: float = PARITY_MIN_COSINE
) -> dict[str, Any]:
    """Cosine between PyTorch and ONNX Runtime embeddings (B, D); raises ParityError under `threshold`."""
    if reference.shape != onnx.shape or reference.size == 0:
        raise ParityError(f"{what}: shapes differ or are empty ({reference.shape} vs {onnx.shape})")
    cos = _cosines(reference.astype(np.float64), onnx.astype(np.float64))
    res = {
        "clips": int(len(cos)),
        "min_cosine": float(cos.min()),
        "mean_cosine": float(cos.mean()),
        "max_abs_diff": float(np.abs(reference - onnx).max()),
        "threshold": threshold,
        "passed": bool(cos.min() >= threshold),
    }
    if not res["passed"]:
        raise ParityError(
            f"{what}: ONNX Runtime does not reproduce PyTorch: min cosine {res['min_cosine']:.6f} "
            f"< {threshold} over {res['clips']} clips"
        )
    return res


def parity_report(
    student: nn.Module, model_path: Path, student_path: Path, waves: np.ndarray, logmel: LogMel | None = None
) -> dict[str, Any]:
    """Parity of model.onnx vs PyTorch LogMel + student, and of student.onnx vs the student, on `waves`."""
    lm = (LogMel() if logmel is None else logmel).eval()
    ref_model = WaveformEmbedder(lm, student).eval()
    with torch.no_grad():
        x = torch.from_numpy(waves)
        mel = torch.cat([lm(x[i : i + 8]) for i in range(0, len(x), 8)])  # (K, T, n_mels)
        ref = torch.cat([ref_model(x[i : i + 8]) for i in range(0, len(x), 8)]).numpy()
        ref_student = torch.cat([F.normalize(student(mel[i : i + 8]), dim=-1) for i in range(0, len(x), 8)])
    return {
        MODEL_FILE: check_parity(ref, ort_embed(ort_session(model_path), waves), MODEL_FILE),
        STUDENT_FILE: check_parity(
            ref_student.numpy(), ort_embed(ort_session(student_path), mel.numpy()), STUDENT_FILE
        ),
    }


# ---------------------------------------------------------------------------------------------------------
# int8 quantisation
# ---------------------------------------------------------------------------------------------------------


def _calibration_reader(inputs: np.ndarray, name: str, batch_size: int = 4) -> Any:
    """An onnxruntime CalibrationDataReader over `inputs` (K, ...) in small batches."""
    from onnxruntime.quantization import CalibrationDataReader

    class _Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self._it: Iterator[dict[str, np.ndarray]] = iter(())
            self.rewind()

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self._it, None)

        def rewind(self) -> None:
            self._it = iter(
                [
                    {name: np.ascontiguousarray(inputs[i : i + batch_size])}
                    for i in range(0, len(inputs), batch_size)
                ]
            )

    return _Reader()


def _preprocess(src: Path, dst: Path) -> Path:
    """Prepare a graph for the quantiser: symbolic shape inference, and constant Identity nodes inlined.

    ORT's own graph optimisation step of `quant_pre_process` is skipped: it fuses the projection head's
    residual add into a Gemm with a non-constant bias, which the quantiser cannot convert, leaving an int8
    weight to be dequantised on every run (~4 ms). ONNX Runtime optimises the quantised graph at load
    anyway. The exporter deduplicates identical initialisers (e.g. the all-zero biases that BatchNorm
    folding gives freshly initialised layers) behind Identity nodes; a convolution whose bias is not an
    initialiser is not turned into an int8 QLinearConv (it runs in float on dequantised weights), so
    such Identity nodes are replaced by copies of their initialiser.
    """
    import onnx
    from onnxruntime.quantization.shape_inference import quant_pre_process

    with warnings.catch_warnings(), _quiet_root_logger():
        warnings.simplefilter("ignore")
        quant_pre_process(str(src), str(dst), skip_optimization=True)
    model = onnx.load(str(dst))
    graph = model.graph
    inits = {t.name: t for t in graph.initializer}
    outputs = {o.name for o in graph.output}
    keep = []
    for node in graph.node:
        if node.op_type == "Identity" and node.input[0] in inits and node.output[0] not in outputs:
            copy = onnx.TensorProto()
            copy.CopyFrom(inits[node.input[0]])
            copy.name = node.output[0]
            graph.initializer.append(copy)
        else:
            keep.append(node)
    if len(keep) != len(graph.node):
        del graph.node[:]
        graph.node.extend(keep)
        onnx.save(model, str(dst))
    return dst


class _quiet_root_logger:
    """onnxruntime.quantization logs per-tensor warnings on the root logger; silence them while it runs."""

    def __enter__(self) -> None:
        import logging

        self._logger = logging.getLogger()
        self._level = self._logger.level
        self._logger.setLevel(logging.ERROR)

    def __exit__(self, *exc: object) -> None:
        self._logger.setLevel(self._level)


def _base_units(nodes: Sequence[Any]) -> list[tuple[str, int]]:
    """The student encoder's top-level modules that hold convolutions, in graph order, with the index (in
    `nodes`) of their last node: PhiNet's stem and blocks (`_layers.1`, `_layers.2`, ..., `pn_block`) or
    Cnn14's `conv_block1..6`, read from the ONNX node scopes /student/base/<unit>/..."""
    last: dict[str, int] = {}
    with_conv: list[str] = []
    for i, n in enumerate(nodes):
        parts = n.name.split("/")
        if len(parts) > 4 and parts[1] == "student" and parts[2] == "base":
            last[parts[3]] = i
            if n.op_type == "Conv" and parts[3] not in with_conv:
                with_conv.append(parts[3])
    return [(u, last[u]) for u in with_conv]


def quant_plan(path: str | os.PathLike, fp32_blocks: int = 0) -> tuple[list[str], list[str]]:
    """(nodes to quantise, nodes kept fp32) for an exported graph.

    Quantised: the student's nodes (ONNX scope /student/) after its first `fp32_blocks` convolutional
    blocks (PhiNet: the stem, then block 1, 2, ...; Cnn14: conv_block1, ...). Kept fp32: the front end
    (see the module docstring), those leading blocks and what precedes them (bn0), and the final L2
    normalisation (the embedding stays float). Cutting at block outputs puts the fp32/int8 boundary on
    the narrow residual stream rather than on a block's expanded (widest) tensor, which is cheaper.
    """
    import onnx

    nodes = list(onnx.load(str(path), load_external_data=False).graph.node)
    units = _base_units(nodes)
    if not 0 <= fp32_blocks <= len(units):
        raise ValueError(f"fp32_blocks must be in [0, {len(units)}] for this model, got {fp32_blocks}")
    cut = units[fp32_blocks - 1][1] + 1 if fp32_blocks else 0
    quantised = [n.name for n in nodes[cut:] if n.name.startswith("/student/")]
    chosen = set(quantised)
    return quantised, [n.name for n in nodes if n.name not in chosen]


def quantize_int8(
    src: str | os.PathLike,
    dst: str | os.PathLike,
    calibration: np.ndarray,
    input_name: str,
    *,
    fp32_blocks: int = 0,
    keep_frontend_fp32: bool = True,
    method: str = "percentile",
) -> dict[str, Any]:
    """Static QDQ int8 quantisation (per-channel int8 weights, uint8 activations) calibrated on `calibration`.

    Which nodes are quantised: `quant_plan`. `keep_frontend_fp32=False` quantises the front end too (used
    only to measure how badly that goes).
    """
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    methods = {
        "minmax": CalibrationMethod.MinMax,
        "entropy": CalibrationMethod.Entropy,
        "percentile": CalibrationMethod.Percentile,
    }
    if method not in methods:
        raise ValueError(f"calibration method must be one of {sorted(methods)}, got {method!r}")
    if len(calibration) == 0:
        raise ValueError("int8 calibration needs at least one clip of real audio")
    src, dst = Path(src), Path(dst)
    with tempfile.TemporaryDirectory(prefix="tinyclap-q-") as tmp:
        pre = _preprocess(src, Path(tmp) / "pre.onnx")
        quantised, kept = quant_plan(pre, fp32_blocks)
        if not keep_frontend_fp32:
            quantised += [n for n in kept if n.startswith(FRONTEND_SCOPE)]
        used = method

        def run(calibrate: str) -> None:
            # (the histogram calibrators print progress to stdout, which would corrupt --json output)
            with warnings.catch_warnings(), _quiet_root_logger(), contextlib.redirect_stdout(sys.stderr):
                warnings.simplefilter("ignore")
                quantize_static(
                    str(pre),
                    str(dst),
                    _calibration_reader(calibration, input_name),
                    quant_format=QuantFormat.QDQ,
                    per_channel=True,
                    activation_type=QuantType.QUInt8,
                    weight_type=QuantType.QInt8,
                    calibrate_method=methods[calibrate],
                    nodes_to_quantize=quantised,
                )

        try:
            run(method)
        except ValueError as e:
            # onnxruntime's histogram calibrators fail on a tensor whose calibration values are (nearly)
            # constant ("Too many bins for data range"); min/max ranges are always defined
            if method == "minmax":
                raise
            used = f"minmax (fallback: {method} calibration failed: {e})"
            run("minmax")
    return {"fp32_blocks": fp32_blocks, "quantised_nodes": len(quantised), "method": used}


def search_fp32_blocks(
    student_path: str | os.PathLike,
    calibration_logmel: np.ndarray,
    *,
    target: float = 0.995,
    max_blocks: int = 5,
    method: str = "minmax",
    classifier: ZeroShotClassifier | None = None,
    top1_target: float = INT8_TARGET_TOP1,
) -> tuple[int, list[dict[str, float]]]:
    """Smallest number of leading student blocks (`quant_plan`) to keep fp32 so that int8 reaches `target`.

    Mean cosine int8 vs fp32 is measured on the calibration clips themselves (never on held-out audio,
    which stays for the final report), by bisection over k in [0, max_blocks] (error falls as k grows).
    With a `classifier`, zero-shot top-1 agreement on those clips must also reach `top1_target`: a trained
    student's class margins can be small enough that a 0.999 cosine still flips a few decisions.
    Returns (k, [{"fp32_blocks": k, "calibration_cosine": c[, "calibration_top1_agreement": a]}, ...]).
    """
    fp32 = ort_embed(ort_session(student_path), calibration_logmel)
    import onnx

    n_units = len(_base_units(list(onnx.load(str(student_path), load_external_data=False).graph.node)))
    hi = min(max_blocks, n_units)
    history: list[dict[str, float]] = []
    passed: dict[int, bool] = {}

    def ok(k: int) -> bool:
        if k not in passed:
            with tempfile.TemporaryDirectory(prefix="tinyclap-qs-") as tmp:
                q = Path(tmp) / "q.onnx"
                quantize_int8(student_path, q, calibration_logmel, "logmel", fp32_blocks=k, method=method)
                int8 = ort_embed(ort_session(q), calibration_logmel)
            entry = {"fp32_blocks": k, "calibration_cosine": float(_cosines(fp32, int8).mean())}
            good = entry["calibration_cosine"] >= target
            if classifier is not None:
                entry["calibration_top1_agreement"] = agreement(fp32, int8, classifier)["top1_agreement"]
                good = good and entry["calibration_top1_agreement"] >= top1_target
            history.append(entry)
            passed[k] = good
        return passed[k]

    if ok(0):
        return 0, history
    if not ok(hi):
        return hi, history
    lo = 0  # fails at lo, passes at hi
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if ok(mid):
            hi = mid
        else:
            lo = mid
    return hi, history


def agreement(fp32: np.ndarray, int8: np.ndarray, classifier: ZeroShotClassifier | None) -> dict[str, Any]:
    """int8 vs fp32 embeddings (B, D) of the same clips: cosines and zero-shot top-1 agreement.

    Besides the plain cosine, `centred_cosine` compares the embeddings after removing the fp32 mean over
    the clips: when all clips share a large common direction (typical of random weights) the plain cosine
    is near 1 whatever int8 does, the centred one is not. `clip_spread` (mean pairwise cosine between
    different clips' fp32 embeddings) and `distinct_top1` show whether the numbers are meaningful at all.
    """
    fp32, int8 = fp32.astype(np.float64), int8.astype(np.float64)
    cos = _cosines(fp32, int8)
    mu = fp32.mean(0)
    n = len(fp32)
    gram = _cosines(fp32[:, None, :], fp32[None, :, :]) if n > 1 else np.ones((1, 1))
    res: dict[str, Any] = {
        "clips": int(n),
        "mean_cosine": float(cos.mean()),
        "min_cosine": float(cos.min()),
        "centred_cosine": float(_cosines(fp32 - mu, int8 - mu).mean()) if n > 1 else float("nan"),
        "clip_spread": float(gram[~np.eye(n, dtype=bool)].mean()) if n > 1 else float("nan"),
    }
    if classifier is not None:
        a = np.argmax(classifier.logits(fp32.astype(np.float32)), axis=-1)
        b = np.argmax(classifier.logits(int8.astype(np.float32)), axis=-1)
        res["top1_agreement"] = float((a == b).mean())
        res["distinct_top1"] = int(len(set(a.tolist())))
    return res


# ---------------------------------------------------------------------------------------------------------
# The whole export
# ---------------------------------------------------------------------------------------------------------


def _versions() -> dict[str, str]:
    import onnx
    import onnxruntime

    import tinyclap

    return {
        "tinyclap": tinyclap.__version__,
        "torch": torch.__version__,
        "onnx": onnx.__version__,
        "onnxruntime": onnxruntime.__version__,
        "numpy": np.__version__,
        "python": platform.python_version(),
    }


def _student_of(model: Any) -> nn.Module:
    """The student in what `tinyclap.models.load_model` returned (a StudentEmbedder) or a bare student."""
    if hasattr(model, "projection") and hasattr(model, "config"):
        return model
    student = getattr(model, "student", None)
    if student is None or not hasattr(student, "config"):
        raise ValueError(
            f"export handles students only, got a {type(model).__name__}; "
            "to deploy a Cnn14 audio tower export the student 'cnn14'"
        )
    return student


@dataclass
class Int8Options:
    """How to quantise: calibration method (percentile: ranges at the 0.001/99.999 % percentiles of each
    tensor's histogram, a little better than min/max, ~3x slower), and how many leading student blocks
    stay fp32 ("auto": the fewest that reach `search_target` mean cosine on the calibration clips, found
    with the faster, slightly pessimistic MinMax calibration)."""

    method: str = "percentile"
    fp32_blocks: int | str = "auto"
    search_target: float = 0.995
    max_fp32_blocks: int = 5
    measure_frontend: bool = True


def export(
    model: Any,
    out_dir: str | os.PathLike,
    classifier: ZeroShotClassifier,
    *,
    parity_audio: Sequence[str | os.PathLike],
    opset: int = DEFAULT_OPSET,
    frontend: str = "factorised",
    quantize: str | None = None,
    calibration_audio: Sequence[str | os.PathLike] = (),
    heldout_audio: Sequence[str | os.PathLike] = (),
    int8: Int8Options | None = None,
    source: str | None = None,
    log: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Export `model` (StudentEmbedder or student) with its class matrix to `out_dir`; returns the manifest.

    fp32 parity (cosine >= 0.9999 on `parity_audio`, real recordings) is checked and a failure raises
    ParityError; the manifest is written last, so a failed export is never loadable. With quantize="int8",
    `calibration_audio` calibrates and `heldout_audio` (disjoint from it) measures int8 against fp32.
    """
    say = log or (lambda msg: None)
    student = _student_of(model).eval()
    lm = getattr(model, "frontend", None)
    lm = lm if isinstance(lm, LogMel) else LogMel()
    if classifier.embed_dim != student.embed_dim:
        raise ValueError(
            f"class matrix has {classifier.embed_dim} dims "
            f"but student {student.name} gives {student.embed_dim}"
        )
    if quantize not in (None, "int8"):
        raise ValueError(f"quantize must be None or 'int8', got {quantize!r}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / MANIFEST_FILE).unlink(missing_ok=True)  # until the new one is written, the folder is no export
    for stale in (MODEL_INT8_FILE, STUDENT_INT8_FILE):
        (out / stale).unlink(missing_ok=True)

    t0 = time.perf_counter()
    say(f"exporting {student.name} to {out} (opset {opset}, {frontend} front end)")
    paths = export_onnx_models(student, out, opset=opset, frontend=frontend, logmel=lm)
    classifier.save(out / CLASSES_FILE)

    clips = load_clips(parity_audio)
    if len(clips.waves) == 0:
        raise ValueError("parity needs real recordings, but none of the parity files could be decoded")
    say(f"parity on {len(clips.waves)} clips")
    parity = parity_report(student, paths["model"], paths["student"], clips.waves, lm)
    parity["files"] = [os.path.basename(p) for p in clips.paths]
    parity["failed"] = clips.failed

    quant: dict[str, Any] | None = None
    if quantize == "int8":
        quant = _quantize_all(
            out, lm, classifier, calibration_audio, heldout_audio, int8 or Int8Options(), say
        )

    files = {}
    for name in (MODEL_FILE, STUDENT_FILE, MODEL_INT8_FILE, STUDENT_INT8_FILE, CLASSES_FILE):
        if (out / name).is_file():
            files[name] = {"sha256": sha256_file(out / name), "bytes": (out / name).stat().st_size}
    manifest = {
        "format": EXPORT_FORMAT,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "sample_rate": SAMPLE_RATE,
        "clip_seconds": CLIP_SECONDS,
        "clip_samples": CLIP_SAMPLES,
        "n_frames": lm.n_frames(CLIP_SAMPLES),
        "frontend": lm.config(),
        "frontend_onnx": frontend,
        "student": {"name": student.name, "config": student.config(), "source": source},
        "embed_dim": int(student.embed_dim),
        "opset": int(opset),
        "inputs": {
            MODEL_FILE: {"name": "waveform", "shape": ["batch", CLIP_SAMPLES], "dtype": "float32"},
            STUDENT_FILE: {"name": "logmel", "shape": ["batch", "frames", lm.n_mels], "dtype": "float32"},
        },
        "output": {"name": "embedding", "shape": ["batch", int(student.embed_dim)], "normalised": True},
        "classes": {
            "file": CLASSES_FILE,
            "num_classes": classifier.num_classes,
            "labels": classifier.labels,
            "templates": classifier.templates,
            "logit_scale": classifier.logit_scale,
        },
        "versions": _versions(),
        "files": files,
        "parity": parity,
        "quantization": quant,
        "export_seconds": round(time.perf_counter() - t0, 1),
    }
    atomic_write_text(out / MANIFEST_FILE, json.dumps(manifest, indent=2) + "\n")
    return manifest


def _mels(lm: LogMel, waves: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return torch.cat([lm(torch.from_numpy(waves[i : i + 8])) for i in range(0, len(waves), 8)]).numpy()


def _quantize_all(
    out: Path,
    lm: LogMel,
    classifier: ZeroShotClassifier,
    calibration_audio: Sequence[str | os.PathLike],
    heldout_audio: Sequence[str | os.PathLike],
    opts: Int8Options,
    say: Callable[[str], None],
) -> dict[str, Any]:
    cal_set = {os.path.realpath(p) for p in calibration_audio}
    overlap = [p for p in heldout_audio if os.path.realpath(p) in cal_set]
    if overlap:
        raise ValueError(
            f"held-out audio must not contain calibration files ({len(overlap)} do, e.g. {overlap[0]})"
        )
    cal, held = load_clips(calibration_audio), load_clips(heldout_audio)
    if len(cal.waves) == 0:
        raise ValueError("int8 calibration needs real recordings (--calibration DIR); none could be decoded")
    if len(held.waves) == 0:
        raise ValueError("int8 evaluation needs held-out recordings not used for calibration; none available")
    cal_mel, held_mel = _mels(lm, cal.waves), _mels(lm, held.waves)
    res: dict[str, Any] = {
        "format": "QDQ",
        "tool": "onnxruntime.quantization.quantize_static (after quant_pre_process)",
        "weights": "int8, per channel, symmetric",
        "activations": "uint8, per tensor, asymmetric",
        "calibration_method": opts.method,
        "calibration_files": [os.path.basename(p) for p in cal.paths],
        "heldout_clips": len(held.paths),
        "kept_fp32": "front end, the student's first fp32_blocks blocks (stem, block 1, ...; and bn0), "
        "final L2 normalisation",
        "targets": {"mean_cosine": INT8_TARGET_COSINE, "top1_agreement": INT8_TARGET_TOP1},
    }
    if opts.fp32_blocks == "auto":
        say(f"int8: searching how many leading blocks to keep fp32 ({len(cal.waves)} calibration clips)")
        k, history = search_fp32_blocks(
            out / STUDENT_FILE,
            cal_mel,
            target=opts.search_target,
            max_blocks=opts.max_fp32_blocks,
            method="minmax",
            classifier=classifier,
        )
        res["fp32_blocks_search"] = {
            "target_calibration_cosine": opts.search_target,
            "target_calibration_top1_agreement": INT8_TARGET_TOP1,
            "tried": history,
        }
    else:
        k = int(opts.fp32_blocks)
    res["fp32_blocks"] = k
    say(f"int8: quantising ({k} leading blocks fp32), evaluating on {len(held.waves)} held-out clips")
    for src, dst, name, x_cal, x_held in (
        (MODEL_FILE, MODEL_INT8_FILE, "waveform", cal.waves, held.waves),
        (STUDENT_FILE, STUDENT_INT8_FILE, "logmel", cal_mel, held_mel),
    ):
        info = quantize_int8(out / src, out / dst, x_cal, name, fp32_blocks=k, method=opts.method)
        fp32 = ort_embed(ort_session(out / src), x_held)
        res[dst] = {**info, **agreement(fp32, ort_embed(ort_session(out / dst), x_held), classifier)}
    if opts.measure_frontend:
        # the experiment behind "keep the front end fp32": quantise it too and measure the damage
        with tempfile.TemporaryDirectory(prefix="tinyclap-qfe-") as tmp:
            full = Path(tmp) / "model.all-int8.onnx"
            quantize_int8(
                out / MODEL_FILE,
                full,
                cal.waves,
                "waveform",
                fp32_blocks=k,
                keep_frontend_fp32=False,
                method=opts.method,
            )
            fp32 = ort_embed(ort_session(out / MODEL_FILE), held.waves)
            res["frontend_int8"] = {
                "note": "model.onnx with the front end quantised too (not written; for comparison only)",
                **agreement(fp32, ort_embed(ort_session(full), held.waves), classifier),
            }
    m = res[MODEL_INT8_FILE]
    res["targets_met"] = bool(
        m["mean_cosine"] >= INT8_TARGET_COSINE and m.get("top1_agreement", 1.0) >= INT8_TARGET_TOP1
    )
    if not res["targets_met"]:
        print(
            f"warning: int8 misses its targets: mean cosine {m['mean_cosine']:.4f} "
            f"(>= {INT8_TARGET_COSINE}), "
            f"top-1 agreement {m.get('top1_agreement', float('nan')):.3f} (>= {INT8_TARGET_TOP1})",
            file=sys.stderr,
        )
    return res
