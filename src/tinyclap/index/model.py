"""The audio model of an index: numpy windows in, numpy embeddings out, whatever runs it.

An export folder runs on ONNX Runtime through `tinyclap.models.exported.ExportedModel` and imports no torch
(an index can be built and searched on a machine without it); every other spec goes through
`tinyclap.models.load_model` (torch). The model's identity (fingerprint), front end and the teacher it was
distilled from (the default text side of `tinyclap search`) are recorded in the index's manifest.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["IndexModel", "load_index_model"]


class IndexModel:
    """`embed((B, clip_samples) float32) -> (B, D)` plus what the manifest records about the model."""

    def __init__(self, model: Any, info: dict[str, Any], clip_samples: int, frontend: dict[str, Any] | None) -> None:
        self.model, self.info = model, info
        self.sample_rate = int(model.sample_rate)
        self.embed_dim = int(model.embed_dim)
        self.clip_samples = int(clip_samples)
        self.frontend = frontend
        self._torch = getattr(model, "kind", None) != "export"
        # ONNX Runtime sessions take concurrent calls (and release the GIL): an export is run by the decoding
        # threads themselves, one file's windows per call; torch models stay batched on the calling thread
        self.thread_safe = not self._torch

    def embed(self, waves: np.ndarray) -> np.ndarray:
        waves = np.ascontiguousarray(waves, dtype=np.float32)
        if not self._torch:
            return np.asarray(self.model.embed_waveform(waves), dtype=np.float32)
        import torch

        with torch.inference_mode():
            out = self.model.embed_waveform(torch.from_numpy(waves), normalize=True)
        return out.float().cpu().numpy()

    def manifest(self, window: float, hop: float) -> dict[str, Any]:
        """What an index built with this model records (the teacher's fingerprint hashed here, once per
        `embed`, not on every load: `search --teacher` compares it)."""
        info = dict(self.info)
        teacher = info.get("teacher")
        if teacher and "teacher_fingerprint" not in info and os.path.exists(teacher):
            from tinyclap.models.fingerprint import model_fingerprint

            info["teacher_fingerprint"] = model_fingerprint(teacher)
        return {
            "kind": "audio",
            "model": info,
            "frontend": self.frontend,
            "sample_rate": self.sample_rate,
            "clip_samples": self.clip_samples,
            "window": float(window),
            "hop": float(hop),
            "embed_dim": self.embed_dim,
        }


def _export_model(path: Path, int8: bool, threads: int | None = None) -> IndexModel:
    from tinyclap.deploy.runtime import MODEL_INT8_FILE
    from tinyclap.models.exported import ExportedModel

    folder = path.parent if path.suffix == ".onnx" else path
    int8 = int8 or path.name == MODEL_INT8_FILE
    model = ExportedModel(folder, int8=int8, threads=threads)
    man = model.runtime.manifest
    source = (man.get("student") or {}).get("source")
    info = {
        "spec": str(folder.resolve()),
        "kind": "export",
        "int8": bool(int8),
        "name": model.name,
        "fingerprint": "sha256:" + str(man["files"][model.runtime.model_file]["sha256"]),
        "teacher": None,
        "source": source,
    }
    return IndexModel(model, info, model.clip_samples, man.get("frontend"))


def load_index_model(spec: str | os.PathLike | Any, *, int8: bool = False, seed: int = 0,
                     threads: int | None = None) -> IndexModel:
    """The model of `spec` (an export folder: torch-free; anything `load_model` takes), or a loaded model
    (its fingerprint is then its weights' hash). `threads`: ONNX Runtime's intra-op threads for an export
    folder (None: its default; `embed_sources` runs one single-threaded call per decoding thread)."""
    if not isinstance(spec, (str, os.PathLike)):
        return _loaded_model(spec)
    from tinyclap.models.exported import is_export

    path = Path(spec)
    if path.exists() and is_export(path):
        return _export_model(path, int8, threads)
    if int8:
        raise ValueError(f"{spec}: --int8 needs an export folder (int8 models exist only in exports)")
    from tinyclap.models.fingerprint import load_model_for_eval, model_kind, recorded_teacher

    model, fingerprint = load_model_for_eval(spec, seed=seed)
    kind = model_kind(model)
    teacher = None
    if hasattr(model, "encode_text"):
        teacher = os.path.abspath(os.fspath(spec))
    elif path.exists():
        rec = recorded_teacher(spec)
        teacher = os.path.abspath(rec[0]) if rec else None
    info = {"spec": os.path.abspath(os.fspath(spec)) if path.exists() else os.fspath(spec), "kind": kind,
            "int8": False, "name": getattr(model, "name", None) or path.stem, "fingerprint": fingerprint,
            "teacher": teacher}
    if hasattr(model, "encode_text"):
        info["teacher_fingerprint"] = fingerprint
    return IndexModel(model, info, _clip_samples(model), _frontend_config(model))


def _clip_samples(model: Any) -> int:
    """5 s (the models' clip length) at the model's own rate (the proxy teacher runs at 16 kHz)."""
    from tinyclap.audio import CLIP_SECONDS

    return int(round(CLIP_SECONDS * int(model.sample_rate)))


def _loaded_model(model: Any) -> IndexModel:
    if isinstance(model, IndexModel):
        return model
    if getattr(model, "kind", None) == "export":
        fp = "sha256:" + str(model.runtime.manifest["files"][model.runtime.model_file]["sha256"])
        clip = model.clip_samples
    else:
        from tinyclap.models.fingerprint import weights_fingerprint

        fp, clip = weights_fingerprint(model), _clip_samples(model)
    info = {"spec": None, "kind": str(getattr(model, "kind", type(model).__name__)), "int8": False,
            "name": getattr(model, "name", type(model).__name__), "fingerprint": fp, "teacher": None}
    return IndexModel(model, info, clip, _frontend_config(model))


def _frontend_config(model: Any) -> dict[str, Any] | None:
    fe = getattr(model, "frontend", None)
    if callable(getattr(fe, "config", None)):
        return dict(fe.config())
    man = getattr(getattr(model, "runtime", None), "manifest", None)
    return man.get("frontend") if isinstance(man, dict) else None
