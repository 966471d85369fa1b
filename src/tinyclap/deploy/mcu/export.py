"""`tinyclap export --target tflm`: an MCU student -> a folder a TensorFlow Lite Micro firmware builds from.

The folder (built in a hidden sibling and swapped into place when complete, like the ONNX export):

- `backbone.tflite`, `head.tflite`  the two full-int8 graphs (`tinyclap.deploy.mcu.graphs`);
- `classes.npz`                    the class matrix (float, the pruned latent entries) for host-side checks;
- `classes_int8.npy`               the same, int8, one symmetric scale (`manifest.json: classes.scale`);
- `frontend.json`, `mel_filterbank.npy`, `input_norm.npy`  the front end's constants: LogMel settings, the
  window, the (n_mels, n_fft/2+1) Slaney filterbank, the log floor, the per-mel input normalisation;
- `tinyclap_model.h/.c`, `tinyclap_ops.h`  C sources for the firmware (`tinyclap.deploy.mcu.firmware`);
- `manifest.json` (last): SHA-256 and bytes of every file, the measured TFLM arena, the op list (and the ops
  left float), window, latent entries kept, and the parity report: TFLM's kernels against torch fp32 on the
  same windows of real recordings (cosine, top-1 agreement).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from torch import nn

from tinyclap._util import atomic_write_bytes, atomic_write_text, sha256_file, versions
from tinyclap.audio.frontend import LogMel
from tinyclap.audio.mel import mel_filterbank
from tinyclap.deploy.mcu import firmware, graphs
from tinyclap.deploy.mcu.runtime import (
    BACKBONE_FILE,
    CLASSES_FILE,
    HEAD_FILE,
    MANIFEST_FILE,
    NORM_FILE,
    TFLM_FORMAT,
    is_tflm_export,
)
from tinyclap.deploy.mcu.tflm import TflmGraph, convert_int8, op_list, op_summary, require_mcu
from tinyclap.models.mcu import INPUT_CLIP, PRESETS, preset_of
from tinyclap.zeroshot import ZeroShotClassifier

CLASSES_INT8_FILE = "classes_int8.npy"
FRONTEND_FILE, MEL_FILE = "frontend.json", "mel_filterbank.npy"
FLOAT_REASON = ("the projection head's LayerNorm (k values, once per clip) stays float: the PT2E int8 "
                "quantiser does not quantise layer_norm")


def _quiet(msg: str) -> None:
    """The silent log."""


def _latent(student: nn.Module, classifier: ZeroShotClassifier, dims: int | None,
            clips: Sequence[np.ndarray]) -> tuple[nn.Module, ZeroShotClassifier, list[int] | None]:
    """Prune the latent space to `dims` entries (default: the preset's k) chosen on the calibration clips."""
    from tinyclap.evaluation.prune import dim_scores, select_dims, shrink_student

    if dims is not None and not 1 <= dims <= student.embed_dim:
        raise ValueError(f"--dims must be in 1..{student.embed_dim} (the latent entries of {student.name}), got {dims}")
    preset = preset_of(student.name)
    k = dims if dims is not None else (PRESETS[preset].k if preset else None)
    if k is None or k >= student.embed_dim:
        return student, classifier, None
    backbone, head = graphs.torch_fns(student)
    audio = np.stack([graphs.clip_embedding(w, backbone, head) for w in clips])
    keep = select_dims(dim_scores(audio, classifier.weights, "contribution"), int(k))
    return shrink_student(student, keep).eval(), classifier.select(keep), [int(i) for i in keep]


def _frontend_files(out: Path, lm: LogMel, norm: np.ndarray, window: float, samples: int, frames: int) -> None:
    """The front end's constants (JSON + .npy), then the C front end when its writer is installed."""
    settings = {**lm.config(), "window_seconds": window, "window_samples": samples, "window_frames": frames,
                "log": "10*log10(max(power, amin)) - 10*log10(max(amin, ref))", "window_fn": "hann (periodic)",
                "center": "reflect padding of n_fft/2 on both sides of each window"}
    atomic_write_text(out / FRONTEND_FILE, json.dumps(settings, indent=2) + "\n")
    atomic_write_bytes(out / MEL_FILE, _npy(mel_filterbank(lm.sample_rate, lm.n_fft, lm.n_mels, lm.f_min,
                                                           lm.f_max).astype(np.float32)))
    atomic_write_bytes(out / NORM_FILE, _npy(norm))
    write_c_frontend(out, lm.config())


def write_c_frontend(out: Path, settings: dict[str, Any]) -> list[Path]:
    """The hook for the C log-mel front end (`tinyclap.deploy.mcu.frontend.write_frontend_sources`, given the
    student's `LogMel.config()`): its sources go to `out/frontend/` when that module is present; without it,
    nothing (the .npy/JSON constants above describe the front end)."""
    try:
        from tinyclap.deploy.mcu.frontend import write_frontend_sources  # type: ignore[import-not-found]
    except ImportError:
        return []
    return list(write_frontend_sources(out / "frontend", settings))


def _npy(arr: np.ndarray) -> bytes:
    import io

    buf = io.BytesIO()
    np.save(buf, arr, allow_pickle=False)
    return buf.getvalue()


def quantise_classes(weights: np.ndarray) -> tuple[np.ndarray, float]:
    """(C, D) rows -> int8 with one symmetric scale (weights ~= int8 * scale)."""
    scale = float(max(np.abs(weights).max(), 1e-12) / 127.0)
    return np.clip(np.round(weights / scale), -127, 127).astype(np.int8), scale


def _load_waves(paths: Sequence[str | os.PathLike], max_seconds: float = 5.0) -> tuple[list[np.ndarray], list[str]]:
    """Decode real recordings at 44.1 kHz (first `max_seconds`); undecodable files are skipped."""
    from tinyclap.audio import SAMPLE_RATE
    from tinyclap.audio.io import AudioError, load_audio

    waves, names = [], []
    for p in paths:
        try:
            waves.append(load_audio(p, SAMPLE_RATE)[: int(max_seconds * SAMPLE_RATE)])
            names.append(os.path.basename(os.fspath(p)))
        except AudioError:
            continue
    return waves, names


def export_tflm(model: Any, out_dir: str | os.PathLike, classifier: ZeroShotClassifier, *, window: float,
                calibration_audio: Sequence[str | os.PathLike], parity_audio: Sequence[str | os.PathLike],
                dims: int | None = None, source: str | None = None, log: Callable[[str], None] | None = None,
                overwrite: bool = False) -> dict[str, Any]:
    """Export an MCU student (StudentEmbedder or student) for TFLM into `out_dir`; returns the manifest."""
    from tinyclap.deploy.export import staged_folder
    from tinyclap.deploy.onnx import student_of

    if classifier.affinity is not None:
        raise ValueError("the class file carries example affinities (tinyclap adapt), which the MCU head does not "
                         "compute: adapt again with --affinity 0 for a plain class matrix")
    require_mcu()
    say = log or _quiet
    student = student_of(model).eval()
    graphs.check_student(student)
    lm = getattr(model, "frontend", None)
    lm = lm if isinstance(lm, LogMel) else LogMel()
    samples, frames = graphs.window_frames(student, lm, window)
    if classifier.embed_dim != student.embed_dim:
        raise ValueError(f"class matrix has {classifier.embed_dim} dims but {student.name} gives {student.embed_dim}")
    final = Path(out_dir)
    check_tflm_out(final, overwrite)
    norm = graphs.input_norm(student)
    cal_waves, _ = _load_waves(calibration_audio)
    par_waves, par_names = _load_waves(parity_audio)
    if not cal_waves or not par_waves:
        raise ValueError("the TFLM export needs real recordings that decode, for calibration and for parity")
    cal = [graphs.window_logmels(w, samples, lm, norm) for w in cal_waves]
    par = [graphs.window_logmels(w, samples, lm, norm) for w in par_waves]
    student, classifier, keep = _latent(student, classifier, dims, cal)
    with staged_folder(final) as out:
        manifest = _build(student, classifier, lm, out, say, (window, samples, frames, norm, keep, source),
                          cal, (par, par_names))
    return manifest


def check_tflm_out(out: Path, overwrite: bool) -> None:
    """Refuse to replace a non-empty folder that is not an earlier export, unless `overwrite`."""
    from tinyclap.deploy.export import check_out_dir

    if not is_tflm_export(out):
        check_out_dir(out, overwrite)


def _convert(student: nn.Module, cal: list[np.ndarray], say: Callable[[str], None]) -> tuple[bytes, bytes]:
    say(f"converting to int8 TFLite ({len(cal)} calibration clips)")
    wins, feats = graphs.calibration_sets(student, cal)
    backbone = convert_int8(graphs.Backbone(student).eval(), wins[0], wins)
    head = convert_int8(student.projection.eval(), feats[0], feats)
    return backbone, head


def _tflm_parity(student: nn.Module, backbone: TflmGraph, head: TflmGraph, clf: ZeroShotClassifier,
                 classes_int8: np.ndarray, par: tuple[list[np.ndarray], list[str]]) -> dict[str, Any]:
    ref_fns = graphs.torch_fns(student)
    ref = np.stack([graphs.clip_embedding(w, *ref_fns) for w in par[0]])
    dev = np.stack([graphs.clip_embedding(w, backbone.run, head.run) for w in par[0]])
    report = graphs.parity(ref, dev, clf.weights, classes_int8)
    report["windows_per_clip"] = [int(len(w)) for w in par[0]]
    report["files"] = par[1]
    report["reference"] = "torch fp32, same windows (backbone per window, mean features, head once)"
    report["device"] = "tflite-micro interpreter (TFLM reference kernels)"
    return report


def _build(student: nn.Module, clf: ZeroShotClassifier, lm: LogMel, out: Path, say: Callable[[str], None],
           opts: tuple, cal: list[np.ndarray], par: tuple[list[np.ndarray], list[str]]) -> dict[str, Any]:
    window, samples, frames, norm, keep, source = opts
    t0 = time.perf_counter()
    backbone_bytes, head_bytes = _convert(student, cal, say)
    atomic_write_bytes(out / BACKBONE_FILE, backbone_bytes)
    atomic_write_bytes(out / HEAD_FILE, head_bytes)
    backbone, head = TflmGraph(backbone_bytes), TflmGraph(head_bytes)
    classes_int8, classes_scale = quantise_classes(clf.weights)
    clf.save(out / CLASSES_FILE)
    atomic_write_bytes(out / CLASSES_INT8_FILE, _npy(classes_int8))
    _frontend_files(out, lm, norm, window, samples, frames)
    say(f"parity with TFLM's kernels on {len(par[0])} clips")
    parity = _tflm_parity(student, backbone, head, clf, classes_int8, par)
    ops = op_list(backbone_bytes) + op_list(head_bytes)
    summary = op_summary(ops)
    arena = {"backbone": backbone.arena_bytes, "head": head.arena_bytes}
    arena["total"] = arena["backbone"] + arena["head"]
    info = {"sample_rate": lm.sample_rate, "window_samples": samples, "window_frames": frames,
            "n_mels": lm.n_mels, "features": int(student.features_dim), "embed_dim": int(student.embed_dim),
            "num_classes": clf.num_classes, "arena": arena, "backbone_io": backbone.quantisation(),
            "head_io": head.quantisation(), "classes_scale": classes_scale}
    firmware.write_sources(out, info, backbone_bytes, head_bytes, classes_int8, norm, clf.labels,
                           sorted(summary["counts"]))
    files = {p.relative_to(out).as_posix(): {"sha256": sha256_file(p), "bytes": p.stat().st_size}
             for p in sorted(out.rglob("*")) if p.is_file()}
    flash = {"backbone": len(backbone_bytes), "head": len(head_bytes), "classes": int(classes_int8.size)}
    flash["total"] = sum(flash.values())
    manifest = {
        "format": TFLM_FORMAT, "target": "tflm", "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "student": {"name": student.name, "preset": preset_of(student.name), "config": student.config(),
                    "source": source},
        "window": {"seconds": window, "samples": samples, "frames": frames, "input_clip": INPUT_CLIP},
        "latent_dims": keep,
        "features": info["features"], "embed_dim": info["embed_dim"],
        "frontend": lm.config(), "io": {"backbone": info["backbone_io"], "head": info["head_io"]},
        "classes": {"labels": clf.labels, "num_classes": clf.num_classes, "int8_file": CLASSES_INT8_FILE,
                    "scale": classes_scale, "logit_scale": clf.logit_scale, "templates": clf.templates},
        "arena_bytes": arena, "flash_bytes": flash, "ops": summary["counts"],
        "float_ops": {"ops": summary["float_ops"], "why": FLOAT_REASON},
        "parity": parity, "versions": versions("torch", "litert-torch", "tflite-micro"), "files": files,
        "export_seconds": round(time.perf_counter() - t0, 1),
    }
    atomic_write_text(out / MANIFEST_FILE, json.dumps(manifest, indent=2) + "\n")
    return manifest
