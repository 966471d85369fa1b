"""Identities and descriptions of models for reports and caches: which weights (fingerprints), what kind
and size (`describe_model`), and what a student's checkpoint records (its teacher, its pruned dims).

A file's fingerprint is `sha256:` + `_util.sha256_file` of the checkpoint `load_model` reads; weights that
come from no file are `weights:` + `_util.state_sha256` (the one state-dict byte layout); a bare student
name is `random:NAME:seed=S`, since `load_model_for_eval` seeds its initialisation.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch

from tinyclap._util import loads_json, sha256_file, state_sha256

__all__ = [
    "describe_model",
    "load_model_for_eval",
    "model_fingerprint",
    "model_kind",
    "recorded_dims",
    "recorded_teacher",
    "weights_fingerprint",
]


def _checkpoint_file(spec: str | os.PathLike) -> Path | None:
    """The weights file `tinyclap.models.load_model(spec)` reads, or None for a student name."""
    from tinyclap.models import checkpoint_stem
    from tinyclap.models.checkpoint import resolve_checkpoint

    path = Path(spec)
    if not path.exists():
        return None
    if path.suffix in (".pth", ".pt", ".ckpt", ".bin"):
        return path
    return resolve_checkpoint(path, checkpoint_stem(path))


def model_fingerprint(spec: str | os.PathLike, seed: int | None = None) -> str:
    """A stable id of a model spec's weights: sha256 of its checkpoint file, or name + seed for a random
    student (whose weights are fixed by the seed passed to `load_model_for_eval`)."""
    ckpt = _checkpoint_file(spec)
    if ckpt is None:
        return f"random:{spec}:seed={seed}"
    return f"sha256:{sha256_file(ckpt)}"


def weights_fingerprint(model: Any) -> str:
    """`weights:` + the sha256 of a module's state dict (`_util.state_sha256`): for models not loaded from a
    file."""
    digest = state_sha256(model)
    if digest is None:
        raise TypeError(f"cannot fingerprint a {type(model).__name__}; pass model_id= to embed_dataset")
    return f"weights:{digest}"


def load_model_for_eval(
    spec: str | os.PathLike, tokenizer_dir: str | os.PathLike | None = None, seed: int = 0
) -> tuple[Any, str]:
    """`load_model(spec)` with a seeded initialisation for student names; returns (model, fingerprint)."""
    from tinyclap.models import load_model

    if _checkpoint_file(spec) is None:
        # a bare name means random weights: seed them (without touching the global RNG) so runs repeat
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = load_model(spec, tokenizer_dir=tokenizer_dir)
    else:
        model = load_model(spec, tokenizer_dir=tokenizer_dir)
    return model, model_fingerprint(spec, seed)


def model_kind(model: Any) -> str:
    """The model's declared `kind` ("student", "teacher", "proxy-teacher", "export"), else its class name."""
    return str(getattr(model, "kind", type(model).__name__))


def describe_model(model: Any, spec: str | os.PathLike | None = None, fingerprint: str | None = None) -> dict:
    """Kind, name, size and cost of the audio side of a model (what runs at inference)."""
    from tinyclap.models.students import count_macs, count_params

    kind = model_kind(model)
    audio: Any = model
    if kind == "student":
        audio = model.student
    elif hasattr(model, "audio_encoder"):
        audio = model.audio_encoder
    elif hasattr(model, "audio_tower"):
        audio = model.audio_tower
    info: dict[str, Any] = {
        "spec": None if spec is None else os.fspath(spec),
        "kind": kind,
        "name": getattr(model, "name", None)
        or getattr(audio, "name", None)
        or (Path(spec).stem if spec is not None else type(model).__name__),
        "embed_dim": int(model.embed_dim),
        "sample_rate": int(model.sample_rate),
        "fingerprint": fingerprint,
        "audio_params": count_params(audio) if isinstance(audio, torch.nn.Module) else None,
        "macs": None,
    }
    if kind == "student":
        info["macs"] = _student_macs(model.student)
    elif kind == "teacher":  # its audio encoder takes a (1, T, 64) log-mel, which count_macs feeds
        try:
            info["macs"] = count_macs(audio)
        except (RuntimeError, ValueError, TypeError):  # an unusual model: the size is still reported
            info["macs"] = None
    if kind == "student":
        info["student"] = model.student.config()
    return info


_MACS: dict[str, int] = {}


def _student_macs(student: torch.nn.Module) -> int:
    """count_macs of a student, memoised by its config (MACs depend on the architecture only)."""
    from tinyclap.models.students import count_macs

    key = json.dumps(student.config(), sort_keys=True)
    if key not in _MACS:
        _MACS[key] = count_macs(student)
    return _MACS[key]


def _checkpoint_config(spec: str | os.PathLike) -> tuple[dict[str, Any], Path] | None:
    """(JSON config, safetensors path) of one of our checkpoints; None for names, .pth files, bad files."""
    from safetensors import SafetensorError, safe_open

    ckpt = _checkpoint_file(spec)
    if ckpt is None or ckpt.suffix != ".safetensors":
        return None
    try:  # the header only: no tensor is read
        with safe_open(str(ckpt), framework="pt") as f:
            text = (f.metadata() or {}).get("tinyclap")
        if text is None and ckpt.with_suffix(".json").is_file():
            text = ckpt.with_suffix(".json").read_text(encoding="utf-8")
        return (loads_json(text, ckpt, finite=False), ckpt) if text else None
    except (SafetensorError, OSError, ValueError):
        return None


def recorded_dims(spec: str | os.PathLike) -> list[int] | None:
    """The latent entries a pruned student keeps (`dims` in its config, written by `tinyclap prune`)."""
    found = _checkpoint_config(spec)
    dims = found[0].get("dims") if found else None
    return [int(d) for d in dims] if isinstance(dims, list) and dims else None


def recorded_teacher(spec: str | os.PathLike) -> tuple[str, str | None] | None:
    """(teacher path, tokenizer dir or None) recorded in a student checkpoint's config, if any.

    Accepted forms: `"teacher": "PATH"` or `"teacher": {"path": PATH, "tokenizer": DIR}`, plus an optional
    top-level `"tokenizer"`. Relative paths are tried as given, then against the checkpoint's folder.
    """
    found = _checkpoint_config(spec)
    if found is None:
        return None
    config, ckpt = found
    rec = config.get("teacher")
    tok = config.get("tokenizer")
    if isinstance(rec, dict):
        tok = rec.get("tokenizer", tok)
        rec = rec.get("path") or rec.get("checkpoint")
    if not isinstance(rec, str) or not rec:
        return None

    def locate(p: str) -> str:
        q = Path(os.path.expanduser(p))
        if not q.is_absolute() and not q.exists() and (ckpt.parent / q).exists():
            return str(ckpt.parent / q)
        return str(q)

    return locate(rec), (locate(tok) if isinstance(tok, str) and tok else None)
