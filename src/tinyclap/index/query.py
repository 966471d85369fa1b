"""Query vectors for an index: text (a teacher's text tower) and audio (the index's own model).

Text queries need a text side: `teacher=` (a checkpoint path or a loaded model with `encode_text`), else
the teacher recorded with the index's model (the model itself when it is a teacher, the teacher in a
student's run config, or, for an export made with `--text`, its own text tower, torch-free; else the one
recorded by the run it came from). Audio queries are embedded by
the index's model (checked against the fingerprint in the manifest) or a given one, as the renormalised
mean of the clip's 5 s windows.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from tinyclap._util import l2_normalize, mean_embedding

if TYPE_CHECKING:
    from tinyclap.index.store import Index

__all__ = ["OtherModelWarning", "audio_query", "index_model", "text_query", "text_side"]

QUERY_BATCH = 16  # windows of a query file embedded together


def text_side(index: Index, teacher: Any = None, tokenizer: str | os.PathLike | None = None, *,
              allow_other: bool = False) -> Any:
    """The model whose `encode_text` embeds text queries for `index` (see module doc). A `teacher` path is
    checked against the teacher fingerprint the index recorded (if any): another teacher's text tower
    ranks the rows meaninglessly, so it is refused unless `allow_other` (then a warning)."""
    if teacher is not None and not isinstance(teacher, (str, os.PathLike)):
        return teacher
    info = index.manifest.get("model") or {}
    if teacher is not None and info.get("teacher_fingerprint"):
        _check_fingerprint(index, teacher, _teacher_fingerprint(teacher), "teacher", allow_other)
    if teacher is None and info.get("kind") == "export":
        own = _export_text(info)  # an export made with --text: its own text tower, no torch
        if own is not None:
            return own
    spec = teacher or info.get("teacher")
    if spec is None and info.get("source"):
        from tinyclap.models.fingerprint import recorded_teacher

        rec = recorded_teacher(info["source"]) if Path(info["source"]).exists() else None
        spec, tokenizer = (rec[0], tokenizer or rec[1]) if rec else (None, tokenizer)
    if spec is None:
        raise ValueError(f"{index.folder}: the index's model ({info.get('name')}) records no teacher, so text "
                         "cannot be embedded: pass --teacher CKPT (the teacher it was distilled from)")
    if not Path(spec).exists():
        raise ValueError(f"{index.folder}: the teacher {spec} does not exist; pass --teacher CKPT")
    from tinyclap.models import load_model

    model = load_model(spec, tokenizer_dir=tokenizer)
    if not hasattr(model, "encode_text"):
        raise ValueError(f"{spec}: this model has no text tower; pass a teacher with --teacher")
    if getattr(model, "tokenizer", "n/a") is None:
        raise ValueError(f"{spec}: a BERT teacher needs --tokenizer DIR (a folder with BERT's uncased vocab.txt)")
    return model


def text_query(index: Index, text: str, *, teacher: Any = None, tokenizer: str | os.PathLike | None = None,
               templates: Sequence[str] | None = None, raw: bool = False, allow_other: bool = False) -> np.ndarray:
    """(D,) unit vector of the mean of `text`'s prompts: `text` put into each template (one {} each, or a
    file of them, as `--templates` everywhere; default: classify's "this is the sound of {}", so a query
    scores like a class label), or with `raw=True` the text as typed."""
    if not isinstance(text, str) or not text.strip():
        raise ValueError("the text query is empty")
    if raw and templates:
        raise ValueError("give templates or ask for the raw text, not both")
    prompts = [text.strip()]
    if not raw:
        from tinyclap.evaluation.run import read_templates

        prompts = [t.format(text.strip()) for t in read_templates(templates)]
    model = text_side(index, teacher, tokenizer, allow_other=allow_other)
    if getattr(model, "torch_free", False):  # an export's text tower (numpy out)
        emb = np.asarray(model.encode_text(prompts, normalize=True), dtype=np.float32).mean(axis=0)
    else:
        import torch

        with torch.inference_mode():
            emb = model.encode_text(prompts, normalize=True).float().cpu().numpy().mean(axis=0)
    if emb.shape[0] != index.embed_dim:
        raise ValueError(f"the text side gives {emb.shape[0]}-d embeddings but the index holds "
                         f"{index.embed_dim}-d ones (another teacher, or a pruned student?)")
    return l2_normalize(emb).astype(np.float32)


def _export_text(info: dict[str, Any]) -> Any:
    """The text tower of the export folder an index was built with (None: gone, or exported without --text);
    checked against the export's manifest hashes like its audio model."""
    from tinyclap.deploy.runtime import read_manifest
    from tinyclap.deploy.text import ExportText, has_text

    folder = info.get("spec")
    if not folder or not Path(folder).is_dir():
        return None
    manifest = read_manifest(folder)
    return ExportText(folder, manifest, int8=bool(info.get("int8"))) if has_text(manifest) else None


def index_model(index: Index, model: Any = None, *, allow_other: bool = False) -> Any:
    """The `IndexModel` that embeds audio queries: `model` (a spec or loaded model), else the index's own.
    Either is refused when its fingerprint is not the one the index was built with (another model ranks
    the rows meaninglessly), unless `allow_other` (then a warning)."""
    from tinyclap.index.model import load_index_model

    info = index.manifest.get("model") or {}
    if model is not None:
        m = load_index_model(model)
        shown = model if isinstance(model, (str, os.PathLike)) else m.info.get("name")
        _check_fingerprint(index, shown, m.info["fingerprint"], "model", allow_other)
    else:
        if not info.get("spec"):
            raise ValueError(f"{index.folder}: the index records no model spec; pass the model (--model)")
        m = load_index_model(info["spec"], int8=bool(info.get("int8")))
        if m.info["fingerprint"] != info.get("fingerprint"):
            raise ValueError(f"{info['spec']}: the model's weights changed since the index was built "
                             f"({m.info['fingerprint']} != {info.get('fingerprint')}); re-run tinyclap embed")
    if m.embed_dim != index.embed_dim:
        raise ValueError(f"the model gives {m.embed_dim}-d embeddings but the index holds {index.embed_dim}-d")
    return m


class OtherModelWarning(UserWarning):
    """A query embedded by a model or teacher the index was not built with (`allow_other=True`)."""


def _teacher_fingerprint(spec: str | os.PathLike) -> str | None:
    from tinyclap.models.fingerprint import model_fingerprint

    return model_fingerprint(spec) if Path(spec).exists() else None


def _check_fingerprint(index: Index, shown: Any, fingerprint: str | None, role: str, allow_other: bool) -> None:
    """Refuse (or with `allow_other`, warn about) a `role` ("model", "teacher") whose fingerprint is not the
    one the index recorded for it."""
    info = index.manifest.get("model") or {}
    recorded = info.get("fingerprint" if role == "model" else "teacher_fingerprint")
    if fingerprint == recorded:
        return
    built = info.get("name") if role == "model" else info.get("teacher")
    problem = (f"{shown}: not the {role} {index.folder} was built with (fingerprint {fingerprint}; the index "
               f"records {built}, {recorded})")
    if not allow_other:
        raise ValueError(f"{problem}; leave --{role} out to use the index's own, or pass --allow-other-model to "
                         "rank with it anyway")
    import warnings

    warnings.warn(f"{problem}: scores are not comparable to the index's own", OtherModelWarning, stacklevel=3)


def audio_query(index: Index, source: Any, *, sample_rate: int | None = None, model: Any = None,
                allow_other: bool = False) -> np.ndarray:
    """(D,) unit vector of an audio file (path) or a 1-D waveform at `sample_rate` (`model`, `allow_other`:
    see `index_model`)."""
    from tinyclap.audio import eval_windows, iter_eval_windows

    m = index_model(index, model, allow_other=allow_other)
    if isinstance(source, (str, bytes, os.PathLike)):  # an hour-long file is streamed, never decoded whole
        return mean_embedding(iter_eval_windows(source, m.clip_samples, m.sample_rate), m.embed, QUERY_BATCH)
    else:
        wave = np.asarray(source, dtype=np.float32)
        if wave.ndim != 1 or wave.size == 0 or not np.isfinite(wave).all():
            raise ValueError(f"expected a non-empty, finite 1-D waveform, got shape {wave.shape}")
        if sample_rate is None:
            raise ValueError("a waveform query needs its sample_rate")
        if int(sample_rate) != m.sample_rate:
            import soxr

            wave = soxr.resample(wave, int(sample_rate), m.sample_rate, quality="HQ").astype(np.float32)
    emb = l2_normalize(m.embed(eval_windows(wave, m.clip_samples)))
    return l2_normalize(emb.mean(0)).astype(np.float32)
