"""One loader for every audio model tinyclap handles, and a common embedding interface.

Every model is used through the same small protocol (`AudioEmbedder`): a `sample_rate`, an `embed_dim` and
`embed_waveform(wave (B, N)) -> L2-normalised (B, D)`. Teachers (MS CLAP 2022, the proxy) and students (a
PhiNet or Cnn14 with the CLAP log-mel front end) all satisfy it, so evaluation, pruning and export treat
them alike.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import torch
import torch.nn.functional as F
from torch import nn

from tinyclap.models.checkpoint import CheckpointError, read_model, resolve_checkpoint, save_model
from tinyclap.zeroshot import DEFAULT_TEMPLATE


@runtime_checkable
class AudioEmbedder(Protocol):
    sample_rate: int
    embed_dim: int

    def embed_waveform(self, wave: torch.Tensor) -> torch.Tensor: ...


class StudentEmbedder(nn.Module):
    """CLAP log-mel front end + a student: waveform (B, N) at 44.1 kHz -> normalised (B, D)."""

    def __init__(self, student: nn.Module, frontend: nn.Module | None = None) -> None:
        super().__init__()
        from tinyclap.audio.frontend import LogMel

        self.frontend = frontend if frontend is not None else LogMel()
        self.student = student
        self.sample_rate = int(getattr(self.frontend, "sample_rate", 44100))
        self.embed_dim = int(student.embed_dim)
        self.name = getattr(student, "name", type(student).__name__)

    def embed_logmel(self, logmel: torch.Tensor) -> torch.Tensor:  # (B, T, 64) -> (B, D)
        return F.normalize(self.student(logmel), dim=-1)

    def embed_waveform(self, wave: torch.Tensor) -> torch.Tensor:  # (B, N) -> (B, D)
        return self.embed_logmel(self.frontend(wave))

    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        return self.embed_waveform(wave)


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
    from tinyclap.models.students import create_student

    cfg = config["student"]
    return create_student(cfg["name"], embed_dim=int(cfg.get("embed_dim", 1024)))


def load_student(path: str | os.PathLike) -> nn.Module:
    """Load a student saved by `save_student` (a run folder, .safetensors or .json), strictly.

    The config is checked against the tensors *before* the model is built, so a hostile or broken config
    (unknown name, absurd `embed_dim`) is refused with the file named instead of allocating anything.
    """
    from tinyclap.models.checkpoint import load_state_dict_checked

    config, tensors = read_model(path)
    source = resolve_checkpoint(path)
    if not isinstance(config, dict) or config.get("kind") != "student":
        kind = config.get("kind") if isinstance(config, dict) else type(config).__name__
        raise CheckpointError(f"{source}: this checkpoint holds a {kind!r}, not a student")
    try:
        cfg = config["student"]
        name, embed_dim = str(cfg["name"]), int(cfg.get("embed_dim", 1024))
        stored = tensors.get("projection.layer_norm.weight")
        if stored is not None and tuple(stored.shape) != (embed_dim,):
            raise ValueError(f"embed_dim {embed_dim} but projection.layer_norm.weight has shape {tuple(stored.shape)}")
        model = build_student({"student": {"name": name, "embed_dim": embed_dim}})
    except (KeyError, TypeError, AttributeError, ValueError) as e:
        raise CheckpointError(f"{source}: invalid student config ({type(e).__name__}: {e})") from e
    load_state_dict_checked(model, tensors, source=str(source))
    return model.eval()


def load_model(spec: str | os.PathLike, *, tokenizer_dir: str | os.PathLike | None = None) -> Any:
    """Resolve `spec` to an evaluation-ready model with `embed_waveform` (see `AudioEmbedder`).

    `spec` is a registered or well-formed student name (random weights), an official MS CLAP `.pth`, or one
    of our checkpoints (student, teacher or proxy teacher: a .safetensors/.json file or a run folder).
    """
    path = Path(spec)
    if not path.exists():
        from tinyclap.models.students import create_student, parse_student_name

        name = str(spec)
        if name != "cnn14":
            parse_student_name(name)  # raises a ValueError naming the valid form
        return StudentEmbedder(create_student(name)).eval()
    if path.suffix in (".pth", ".pt", ".ckpt", ".bin"):
        from tinyclap.models.teacher import load_teacher

        return load_teacher(path, tokenizer_dir)
    config, _ = read_model(path, default_stem=checkpoint_stem(path))
    kind = config.get("kind")
    if kind == "student":
        return StudentEmbedder(load_student(path)).eval()
    if kind == "teacher":
        from tinyclap.models.teacher import load_teacher

        return load_teacher(resolve_checkpoint(path, checkpoint_stem(path)), tokenizer_dir)
    if kind == "proxy-teacher":
        from tinyclap.models.proxy import load_proxy_teacher

        return load_proxy_teacher(resolve_checkpoint(path, checkpoint_stem(path)))
    raise CheckpointError(f"{path}: unknown checkpoint kind {kind!r}")


def checkpoint_stem(path: str | os.PathLike) -> str:
    """Which checkpoint a folder holds: the student if there is one, else a teacher or proxy teacher."""
    path = Path(path)
    if path.is_dir() and not (path / "student.safetensors").exists():
        for stem in ("teacher", "proxy_teacher"):
            if (path / f"{stem}.safetensors").exists():
                return stem
    return "student"
