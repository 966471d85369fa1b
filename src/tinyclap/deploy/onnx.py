"""ONNX export of a student and the fp32 parity check against PyTorch.

Two graphs, both ending in the L2 normalisation (`tinyclap.models.StudentEmbedder`):

- `model.onnx`    waveform (B, 220500) at 44.1 kHz -> front end -> student -> embedding (B, D).
- `student.onnx`  log-mel (B, T, 64) -> student -> embedding (B, D); dynamic batch and frames.

With a pool window W (`pool_window=`), `model.onnx` pools as `StudentEmbedder` does: the clip is cut into W s
windows inside the graph, the front end (built for W s) and the backbone run on each, the features are
averaged and the head runs once; `student.onnx` stays one window's log-mel -> embedding.

Front end in ONNX. `tinyclap.audio.frontend.LogMel` computes the STFT as one strided conv1d against a
(1026, 1024) DFT basis: 725 M multiply-accumulates per 5 s clip, about 22 ms in ONNX Runtime on one core,
more than the whole int8 student. `tinyclap.audio.frontend.FactorisedLogMel` computes the same log-mel
with a two-stage Cooley-Tukey factorisation written as plain matrix products, keeping only the bins that
the mel filterbank uses: ~110 M MACs and ~4 ms, equal to LogMel up to float32 rounding (~2e-5 dB).
`parity_report` compares the ONNX graphs against the plain PyTorch `LogMel` + student on real
recordings, so a wrong factorisation (or a wrong export) cannot pass.

The module attribute names `frontend` and `student` give the ONNX node scopes `/frontend/...` and
`/student/...` that the int8 plan (`tinyclap.deploy.quantize.quant_plan`) cuts on.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from tinyclap._util import l2_normalize
from tinyclap.audio import CLIP_SAMPLES
from tinyclap.audio.frontend import FactorisedLogMel, LogMel
from tinyclap.deploy.runtime import MODEL_FILE, STUDENT_FILE, ort_session

DEFAULT_OPSET = 17
PARITY_MIN_COSINE = 0.9999
FRONTEND_SCOPE = "/frontend/"  # ONNX node-name prefix of the front end inside model.onnx
FRONTENDS = ("factorised", "conv")


class ParityError(ValueError):
    """The exported ONNX model does not reproduce the PyTorch model."""


def student_of(model: Any) -> nn.Module:
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


def embedder(student: nn.Module, frontend: nn.Module | None, pool_window: float | None = None) -> nn.Module:
    """front end (None: log-mel input) + student + L2 normalisation, in eval mode: what the ONNX files run
    (`pool_window`: pooled windows of that many seconds, see the module docstring)."""
    from tinyclap.models import StudentEmbedder

    fe = nn.Identity() if frontend is None else frontend
    return StudentEmbedder(student, frontend=fe, pool_window=pool_window).eval()


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


def onnx_frontend(kind: str, logmel: LogMel, n_samples: int = CLIP_SAMPLES) -> nn.Module:
    """The front end that model.onnx runs on `n_samples`-sample inputs: `FactorisedLogMel` ("factorised") or
    LogMel itself ("conv")."""
    if kind == "factorised":
        return FactorisedLogMel(logmel, n_samples)
    if kind == "conv":
        return logmel
    raise ValueError(f"frontend must be one of {FRONTENDS}, got {kind!r}")


def export_onnx_models(
    student: nn.Module,
    out_dir: str | os.PathLike,
    *,
    opset: int = DEFAULT_OPSET,
    frontend: str = "factorised",
    logmel: LogMel | None = None,
    pool_window: float | None = None,
) -> dict[str, Path]:
    """Write model.onnx (front end + student) and student.onnx into `out_dir`; returns their paths.

    `frontend="factorised"` (default) uses `FactorisedLogMel`; `"conv"` exports `LogMel` as it is (the
    conv1d STFT, ~5x slower in ONNX Runtime). `pool_window`: model.onnx pools windows of that many seconds.
    """
    lm = LogMel() if logmel is None else logmel
    pooled = embedder(student, lm, pool_window)
    fe = onnx_frontend(frontend, lm, pooled.pool_samples or CLIP_SAMPLES)
    out_dir = Path(out_dir)
    wave = torch.randn(2, CLIP_SAMPLES, generator=torch.Generator().manual_seed(0)) * 0.1  # (2, N)
    with torch.no_grad():
        mel = lm(wave)  # (2, T, n_mels)
    model_path = onnx_export(embedder(student, fe, pool_window), wave, out_dir / MODEL_FILE, "waveform",
                             {0: "batch"}, opset)
    student_path = onnx_export(
        embedder(student, None), mel, out_dir / STUDENT_FILE, "logmel", {0: "batch", 1: "frames"}, opset
    )
    return {"model": model_path, "student": student_path}


# ------------------------------------------------------------------------------------ running and comparing


def ort_embed(session: Any, x: np.ndarray, batch_size: int = 16) -> np.ndarray:
    """Run a one-input session over `x` in batches -> (B, D) float32."""
    name = session.get_inputs()[0].name
    out = [
        session.run(None, {name: np.ascontiguousarray(x[i : i + batch_size], dtype=np.float32)})[0]
        for i in range(0, len(x), batch_size)
    ]
    return np.concatenate(out).astype(np.float32, copy=False)


def torch_run(module: nn.Module, x: np.ndarray, batch_size: int = 8) -> np.ndarray:
    """Run a torch module over numpy `x` (K, ...) in batches, without gradients -> numpy (K, ...)."""
    with torch.no_grad():
        t = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
        return torch.cat([module(t[i : i + batch_size]) for i in range(0, len(t), batch_size)]).numpy()


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise cosine similarity of (..., D) arrays (broadcasting) -> (...)."""
    return (l2_normalize(a) * l2_normalize(b)).sum(-1)


def check_parity(
    reference: np.ndarray, onnx: np.ndarray, what: str, threshold: float = PARITY_MIN_COSINE
) -> dict[str, Any]:
    """Cosine between PyTorch and ONNX Runtime embeddings (B, D); raises ParityError under `threshold`."""
    if reference.shape != onnx.shape or reference.size == 0:
        raise ParityError(f"{what}: shapes differ or are empty ({reference.shape} vs {onnx.shape})")
    cos = cosines(reference.astype(np.float64), onnx.astype(np.float64))
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
    student: nn.Module, model_path: Path, student_path: Path, waves: np.ndarray, logmel: LogMel | None = None,
    pool_window: float | None = None,
) -> dict[str, Any]:
    """Parity of model.onnx vs PyTorch LogMel + student (pooled like model.onnx), and of student.onnx vs the
    student, on `waves`."""
    lm = (LogMel() if logmel is None else logmel).eval()
    mel = torch_run(lm, waves)  # (K, T, n_mels)
    ref_model = torch_run(embedder(student, lm, pool_window), waves)
    ref_student = torch_run(embedder(student, None), mel)
    return {
        MODEL_FILE: check_parity(ref_model, ort_embed(ort_session(model_path), waves), MODEL_FILE),
        STUDENT_FILE: check_parity(ref_student, ort_embed(ort_session(student_path), mel), STUDENT_FILE),
    }
