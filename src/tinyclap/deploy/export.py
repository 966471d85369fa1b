"""Export a student with its class matrix to a folder that the torch-free runtime (`tinyclap.runtime`) loads.

An export folder holds:

- `model.onnx`    waveform (B, 220500) at 44.1 kHz -> L2-normalised embedding (B, D); dynamic batch.
- `student.onnx`  log-mel (B, T, 64) -> L2-normalised embedding (B, D); dynamic batch and frames.
  With `pool_window=W` (recorded in the manifest), model.onnx embeds each clip from W s windows (backbone
  per window, features averaged, head once; `tinyclap.deploy.onnx`) and the runtime uses it as it is.
- `model.int8.onnx`, `student.int8.onnx` (with `quantize="int8"`): ONNX Runtime static QDQ quantisation.
- `classes.npz`   the zero-shot class matrix (`tinyclap.zeroshot.ZeroShotClassifier.save`).
- `manifest.json` rates, clip length, front-end and student config, versions, SHA-256 of every file,
  parity and quantisation results. `tinyclap.runtime` (torch-free) refuses files whose hash differs.
- with `text=TEACHER`: `text.onnx`, `text.int8.onnx`, `tokenizer.json`, the teacher's text tower for free-text
  labels without torch (`tinyclap.deploy.text`; parity, size and latency in the manifest's `text` block).

The folder is built in a temporary sibling (`.<name>.export-XXXX`) and swapped into place only when it is
complete (manifest written last): a failed export (parity, quantisation, a full disk, Ctrl-C) leaves an
earlier export at the same path untouched. A non-empty folder that is not an earlier export is replaced only
with `overwrite=True`.

The steps live beside this module: `tinyclap.deploy.onnx` (the graphs, the factorised front end, the
parity check), `tinyclap.deploy.quantize` (int8, and what does not quantise well and why) and
`tinyclap.deploy.clips` (the real recordings the checks run on). The manifest is written last, so a
folder whose export failed is never loadable.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from torch import nn

from tinyclap._util import atomic_write_text, sha256_file, versions
from tinyclap.audio import CLIP_SAMPLES, CLIP_SECONDS, SAMPLE_RATE
from tinyclap.audio.frontend import LogMel
from tinyclap.deploy.clips import load_clips
from tinyclap.deploy.onnx import DEFAULT_OPSET, FRONTENDS, export_onnx_models, parity_report, student_of
from tinyclap.deploy.quantize import Int8Options, quantize_export
from tinyclap.deploy.runtime import (
    CLASSES_FILE,
    EXPORT_FORMAT,
    MANIFEST_FILE,
    MODEL_FILE,
    MODEL_INT8_FILE,
    STUDENT_FILE,
    STUDENT_INT8_FILE,
    ExportError,
    read_manifest,
)
from tinyclap.deploy.text import TEXT_FILES
from tinyclap.zeroshot import ZeroShotClassifier


def _quiet(msg: str) -> None:
    """The silent log."""


EXPORT_FILES = (MODEL_FILE, STUDENT_FILE, MODEL_INT8_FILE, STUDENT_INT8_FILE, CLASSES_FILE, *TEXT_FILES)


def _check_request(student: nn.Module, classifier: ZeroShotClassifier, frontend: str, quantize: str | None) -> None:
    """Refuse an export that cannot work before anything is written."""
    if classifier.embed_dim != student.embed_dim:
        raise ValueError(
            f"class matrix has {classifier.embed_dim} dims "
            f"but student {student.name} gives {student.embed_dim}"
        )
    if quantize not in (None, "int8"):
        raise ValueError(f"quantize must be None or 'int8', got {quantize!r}")
    if frontend not in FRONTENDS:
        raise ValueError(f"frontend must be one of {FRONTENDS}, got {frontend!r}")


def check_out_dir(out: Path, overwrite: bool = False) -> None:
    """Refuse an output path that is a file, or a non-empty folder that is not an earlier export (unless
    `overwrite`): exporting replaces the whole folder; or one where no folder can be made (tried at once,
    before minutes of parity checks: a read-only disk, /proc, a parent that is a file)."""
    if not os.path.lexists(out):
        _check_can_create(out)
        return
    if out.is_symlink() or not out.is_dir():
        raise ValueError(f"{out}: exists and is not a folder")
    if overwrite or not any(out.iterdir()):
        return
    try:
        read_manifest(out)
    except ExportError as e:
        raise ValueError(
            f"{out}: not empty and not a tinyclap export ({e}); pass --overwrite (overwrite=True) to replace "
            "the folder and everything in it"
        ) from e


def _check_can_create(out: Path) -> None:
    """A temporary folder made and removed in the nearest existing parent of `out` (where the export's
    staging folder will be made), else a ValueError naming `out` and why."""
    parent = out.absolute().parent
    while not os.path.lexists(parent) and parent != parent.parent:
        parent = parent.parent
    try:
        os.rmdir(tempfile.mkdtemp(prefix=f".{out.name}.check-", dir=parent))
    except OSError as e:
        raise ValueError(f"{out}: cannot create the export folder there ({e.strerror or e})") from None


@contextlib.contextmanager
def staged_folder(out: Path) -> Iterator[Path]:
    """A temporary sibling of `out` to build in; on success it replaces `out` (the old folder is renamed
    aside, the new one renamed into place, then the old one deleted), on any failure it is deleted and `out`
    is as it was. Parent folders created here are removed again on failure."""
    missing = [d for d in [out.parent, *out.parent.parents] if not d.exists()]
    out.parent.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=f".{out.name}.export-", dir=out.parent))
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(stage, 0o777 & ~umask)  # mkdtemp's 0o700 would make the export private
    try:
        yield stage
        old = out.parent / f"{stage.name}.old" if os.path.lexists(out) else None
        if old is not None:
            os.rename(out, old)
        try:
            os.rename(stage, out)
        except BaseException:
            if old is not None:
                os.rename(old, out)
            raise
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        for d in missing:  # innermost first
            with contextlib.suppress(OSError):
                d.rmdir()
        raise


def _file_entries(out: Path) -> dict[str, dict[str, Any]]:
    """SHA-256 and size of every exported file present in `out` (what the runtime verifies)."""
    return {
        name: {"sha256": sha256_file(out / name), "bytes": (out / name).stat().st_size}
        for name in EXPORT_FILES
        if (out / name).is_file()
    }


def _describe(
    student: nn.Module, lm: LogMel, classifier: ZeroShotClassifier, frontend: str, opset: int, source: str | None,
    pool_window: float | None = None,
) -> dict[str, Any]:
    """The manifest's description of the model: rates, inputs, output, front end, student and classes."""
    dim = int(student.embed_dim)
    return {
        "format": EXPORT_FORMAT,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "sample_rate": SAMPLE_RATE,
        "clip_seconds": CLIP_SECONDS,
        "clip_samples": CLIP_SAMPLES,
        "n_frames": lm.n_frames(CLIP_SAMPLES),
        "frontend": lm.config(),
        "frontend_onnx": frontend,
        "student": {"name": student.name, "config": student.config(), "source": source},
        "embed_dim": dim,
        "pool_window": pool_window,
        "opset": int(opset),
        "inputs": {
            MODEL_FILE: {"name": "waveform", "shape": ["batch", CLIP_SAMPLES], "dtype": "float32"},
            STUDENT_FILE: {"name": "logmel", "shape": ["batch", "frames", lm.n_mels], "dtype": "float32"},
        },
        "output": {"name": "embedding", "shape": ["batch", dim], "normalised": True},
        "classes": {
            "file": CLASSES_FILE,
            "num_classes": classifier.num_classes,
            "labels": classifier.labels,
            "templates": classifier.templates,
            "logit_scale": classifier.logit_scale,
        },
    }


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
    overwrite: bool = False,
    pool_window: float | None = None,
    text: Any = None,
) -> dict[str, Any]:
    """Export `model` (StudentEmbedder or student) with its class matrix to `out_dir`; returns the manifest.
    `pool_window` (seconds; default: the one `model` embeds with, if any): model.onnx pools windows.

    fp32 parity (cosine >= 0.9999 on `parity_audio`, real recordings) is checked and a failure raises
    ParityError; the folder is built beside `out_dir` and swapped into place only when complete, so a failed
    export leaves an earlier one intact (`check_out_dir`: a non-empty `out_dir` that is not an earlier
    export needs `overwrite=True`). With quantize="int8", `calibration_audio` calibrates and `heldout_audio`
    (disjoint from it) measures int8 against fp32. `text`: a teacher whose text tower is exported too
    (`tinyclap.deploy.text_export`), so the export takes free-text labels.
    """
    say = log or _quiet
    student = student_of(model).eval()
    lm = getattr(model, "frontend", None)
    lm = lm if isinstance(lm, LogMel) else LogMel()
    pool_window = pool_window if pool_window is not None else getattr(model, "pool_window", None)
    if pool_window is not None and not (isinstance(pool_window, (int, float)) and 0 < pool_window <= CLIP_SECONDS):
        raise ValueError(f"pool window must be in (0, {CLIP_SECONDS:g}] seconds, got {pool_window!r}")
    _check_request(student, classifier, frontend, quantize)
    final = Path(out_dir)
    check_out_dir(final, overwrite)
    clips = load_clips(parity_audio, desc="parity audio", show_progress=log is not None)
    if len(clips.waves) == 0:
        raise ValueError("parity needs real recordings, but none of the parity files could be decoded")
    with staged_folder(final) as out:
        manifest = _build(student, lm, classifier, clips, out, final, say,
                          (opset, frontend, quantize, calibration_audio, heldout_audio, int8, source, pool_window,
                           text))
    return manifest


def _build(student: nn.Module, lm: LogMel, classifier: ZeroShotClassifier, clips: Any, out: Path, final: Path,
           say: Callable[[str], None], options: tuple) -> dict[str, Any]:
    """Write every file of the export into `out` (the staging folder), the manifest last; returns it."""
    opset, frontend, quantize, calibration_audio, heldout_audio, int8, source, pool, text = options
    t0 = time.perf_counter()
    pooled = "" if pool is None else f", pooled {pool:g} s windows"
    say(f"exporting {student.name} to {final} (opset {opset}, {frontend} front end{pooled})")
    paths = export_onnx_models(student, out, opset=opset, frontend=frontend, logmel=lm, pool_window=pool)
    classifier.save(out / CLASSES_FILE)
    say(f"parity on {len(clips.waves)} clips")
    parity = parity_report(student, paths["model"], paths["student"], clips.waves, lm, pool)
    parity["files"] = [os.path.basename(p) for p in clips.paths]
    parity["failed"] = clips.failed
    quant = None
    if quantize == "int8":
        quant = quantize_export(out, lm, classifier, calibration_audio, heldout_audio, int8,
                                None if say is _quiet else say)

    text_block = None
    if text is not None:
        from tinyclap.deploy.onnx import embedder, torch_run
        from tinyclap.deploy.text_export import export_text

        say("text tower: ONNX fp32 + int8, tokenizer.json, parity")
        audio = torch_run(embedder(student, lm), clips.waves)
        text_block = export_text(text, out, opset=opset, classifier=classifier, audio=audio)
    manifest = {
        **_describe(student, lm, classifier, frontend, opset, source, pool),
        **({"text": text_block} if text_block is not None else {}),
        "versions": versions("torch", "onnx", "onnxruntime"),
        "files": _file_entries(out),
        "parity": parity,
        "quantization": quant,
        "export_seconds": round(time.perf_counter() - t0, 1),
    }
    atomic_write_text(out / MANIFEST_FILE, json.dumps(manifest, indent=2) + "\n")
    return manifest
