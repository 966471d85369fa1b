"""One loader for every model tinyclap handles (`load_model`), and saving/loading students.

`load_model(spec)` returns something with the `AudioEmbedder` interface (`sample_rate`, `embed_dim`,
`embed_waveform(wave, normalize=True)`) for every kind of spec: a student name (random weights), one of our
checkpoints (student, teacher or proxy teacher: `.safetensors`/`.json` or a run folder), an official MS CLAP
`.pth`, or an export folder (its ONNX graph, through `tinyclap.models.exported.ExportedModel`).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from torch import nn

from tinyclap.models.checkpoint import (
    CheckpointError,
    build_checked,
    read_config,
    read_model,
    resolve_checkpoint,
    save_model,
)
from tinyclap.models.embedder import AudioEmbedder, StudentEmbedder
from tinyclap.zeroshot import DEFAULT_TEMPLATE

__all__ = ["AudioEmbedder", "StudentEmbedder", "checkpoint_stem", "load_model", "load_student", "save_student",
           "student_config"]

FOREIGN_SUFFIXES = (".pth", ".pt", ".ckpt", ".bin")  # torch pickles: read with weights_only=True
# Bounds on a saved student's architecture: far above the paper's (alpha <= 3, N <= 9, t0 <= 6, 1024-d),
# far below what would take minutes or gigabytes to build. The tensors are checked before building too.
STUDENT_LIMITS = {"alpha": 16.0, "beta": 16.0, "t0": 64, "N": 64, "features": 1 << 14, "embed_dim": 1 << 16}


def student_config(student: nn.Module, **extra: Any) -> dict[str, Any]:
    """The JSON config stored with a student's weights: enough to rebuild and use it."""
    from tinyclap.audio import CLIP_SECONDS, SAMPLE_RATE
    from tinyclap.audio.frontend import LogMel

    return {
        "kind": "student",
        "student": student.config(),
        "frontend": LogMel().config(),
        "sample_rate": SAMPLE_RATE,
        "clip_seconds": CLIP_SECONDS,
        "template": DEFAULT_TEMPLATE,
        **extra,
    }


def save_student(student: nn.Module, path: str | os.PathLike, **extra: Any) -> Path:
    """Write `<stem>.safetensors` + `<stem>.json` describing the student (name, front end, rates, template)."""
    return save_model(student, path, student_config(student, **extra))


def build_student(config: dict[str, Any]) -> nn.Module:
    """A randomly initialised student from the `student` part of a checkpoint config."""
    from tinyclap.models.students import create_student

    cfg = config["student"]
    return create_student(cfg["name"], embed_dim=int(cfg.get("embed_dim", 1024)))


def _student_args(config: Any, source: Path, tensors: dict[str, Any]) -> dict[str, Any]:
    """`{"student": {"name", "embed_dim"}}` from a checkpoint config, refused if it cannot describe `tensors`."""
    from tinyclap.models.students import CNN14_NAME, parse_student_name

    if not isinstance(config, dict) or config.get("kind") != "student":
        kind = config.get("kind") if isinstance(config, dict) else type(config).__name__
        raise CheckpointError(f"{source}: this checkpoint holds a {kind!r}, not a student")
    try:
        cfg = config["student"]
        name, embed_dim = str(cfg["name"]), int(cfg.get("embed_dim", 1024))
        stored = tensors.get("projection.layer_norm.weight")
        if stored is not None and tuple(stored.shape) != (embed_dim,):
            raise ValueError(f"embed_dim {embed_dim} but projection.layer_norm.weight has shape {tuple(stored.shape)}")
        spec = None if name == CNN14_NAME else parse_student_name(name)
        sizes = {"embed_dim": embed_dim, **({} if spec is None else vars(spec))}
        absurd = {k: v for k, v in sizes.items() if not 0 < v <= STUDENT_LIMITS[k]}
        if absurd:
            raise ValueError(f"sizes beyond {STUDENT_LIMITS}: {absurd}")
    except (KeyError, TypeError, AttributeError, ValueError, OverflowError) as e:
        raise CheckpointError(f"{source}: invalid student config ({type(e).__name__}: {e})") from e
    return {"student": {"name": name, "embed_dim": embed_dim}}


def load_student(path: str | os.PathLike) -> nn.Module:
    """Load a student saved by `save_student` (a run folder, .safetensors or .json), strictly, in eval mode.

    The config is checked against the tensors *before* the model is built (bounded sizes, then names and
    shapes against a meta-device build), so a hostile or broken config (unknown name, absurd `embed_dim`)
    is refused with the file named instead of allocating anything.
    """
    config, tensors = read_model(path)
    source = resolve_checkpoint(path)
    args = _student_args(config, source, tensors)
    return build_checked(lambda: build_student(args), tensors, source=str(source)).eval()


def _random_student(name: str) -> StudentEmbedder:
    """A student name (random weights: seed torch first for repeatable ones) behind the embedder."""
    from tinyclap.models.students import CNN14_NAME, create_student, parse_student_name

    if name != CNN14_NAME:
        parse_student_name(name)  # raises a ValueError naming the valid form
    return StudentEmbedder(create_student(name)).eval()


PATH_SUFFIXES = (".safetensors", ".json", ".onnx", *FOREIGN_SUFFIXES)


def _random_student_or_missing(spec: str) -> StudentEmbedder:
    """A student name, or an error saying the path does not exist (a spec that looks like a path, or no name)."""
    from tinyclap._util import display_path

    missing = f"{display_path(spec)}: no such file or folder"
    if any(c in spec for c in "/\\") or spec.startswith(("~", ".")) or spec.endswith(PATH_SUFFIXES):
        raise CheckpointError(f"{missing} (a model is a run folder, checkpoint, export folder or student name)")
    try:
        return _random_student(spec)
    except ValueError as e:
        raise CheckpointError(f"{missing}, nor a student name ({e})") from e


def _load_teacher_kind(path: Path, tokenizer_dir: str | os.PathLike | None) -> Any:
    from tinyclap.models.teacher import load_teacher

    return load_teacher(path, tokenizer_dir)


_BY_KIND: dict[str, Callable[[Path, Any], Any]] = {
    "student": lambda path, tok: StudentEmbedder(load_student(path)).eval(),
    "teacher": _load_teacher_kind,
    "teacher-2023": _load_teacher_kind,
    "proxy-teacher": _load_teacher_kind,
}


def load_model(spec: str | os.PathLike, *, tokenizer_dir: str | os.PathLike | None = None) -> Any:
    """Resolve `spec` to an evaluation-ready model with `embed_waveform` (see `AudioEmbedder`).

    `spec` is a released student's name (`tinyclap zoo`, fetched through the Hub cache), a registered or
    well-formed student name (random weights), an official MS CLAP `.pth`, one of
    our checkpoints (student, teacher or proxy teacher: a .safetensors/.json file or a run folder; a folder
    with a student holds the student), a transformers ClapModel (`hf:REPO[@REVISION]` or its folder), or an
    export folder (or its `model.onnx`/`model.int8.onnx`).
    `tokenizer_dir` is for a BERT (MS CLAP) teacher's text side; the proxy teacher brings its own.
    """
    from tinyclap.models.exported import ExportedModel, is_export
    from tinyclap.models.hfclap import is_hf_spec
    from tinyclap.models.pretrained import is_pretrained, load_pretrained

    if is_hf_spec(spec):  # hf:REPO[@REVISION] or a transformers ClapModel folder
        return _load_teacher_kind(spec, None)
    if is_pretrained(spec):  # a released tinyCLAP student by name (`tinyclap zoo`)
        return load_pretrained(str(spec))
    path = Path(spec)
    if not path.exists():
        return _random_student_or_missing(str(spec))
    if path.suffix in FOREIGN_SUFFIXES:
        return _load_teacher_kind(path, tokenizer_dir)
    if is_export(path):
        return ExportedModel.load(path)
    stem = checkpoint_stem(path)
    config = read_config(path, default_stem=stem)
    kind = config.get("kind") if isinstance(config, dict) else None
    if kind not in _BY_KIND:
        raise CheckpointError(f"{path}: unknown checkpoint kind {kind!r} (known: {', '.join(_BY_KIND)})")
    return _BY_KIND[kind](resolve_checkpoint(path, stem), tokenizer_dir)


def checkpoint_stem(path: str | os.PathLike) -> str:
    """Which checkpoint a folder holds: the student if there is one, else a teacher or proxy teacher."""
    path = Path(path)
    if path.is_dir() and not (path / "student.safetensors").exists():
        for stem in ("teacher", "proxy_teacher"):
            if (path / f"{stem}.safetensors").exists():
                return stem
    return "student"
