"""One JSON shape for everything tinyclap prints or serves as JSON (docs/json.md).

Every payload is built here and nowhere else, so `tinyclap classify --json`, `python -m tinyclap.runtime
--json`, `tinyclap search --json` and `tinyclap serve`'s answers cannot drift apart:

- `classify_document` (schema `tinyclap.classify`): one result per file (`file`, ranked `labels`, and for a
  timeline its `window`, `hop`, `labels`, `rows` and optional `segments`) and the files that failed; what the
  CLI and the runtime print, and what `POST /api/classify` answers for its one upload;
- `search_document` (schema `tinyclap.search`): the query and its hits (`file_id`, `name`, `start`, `end`,
  `cosine`, optional `label`; `path` from the CLI only, `audio_url` from the server only: the server never
  shows a server-side path);
- `info_document`, `health_document`: `GET /api/info` and `GET /healthz`.

Each document starts with `"schema"` and `"version"` (`VERSION`, raised only when a field is removed,
renamed or changes meaning; consumers ignore fields they do not know). Scores say what they are:
`probability` (softmax over the classes of one request) or `cosine` (similarity in the embedding space).
The JSON Schema files beside this module (draft 2020-12, package data) describe each document; `validate`
checks one (it needs the `jsonschema` package). Torch-free; the row builders read attributes only
(`TimelineRow`, `Segment`, `FileResult`, `Hit` or anything shaped like them).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable, Sequence
from importlib import resources
from typing import Any

import numpy as np

__all__ = [
    "KINDS",
    "OUTPUTS",
    "VERSION",
    "classify_document",
    "health_document",
    "hit",
    "info_document",
    "load_schema",
    "ranked",
    "ranked_document",
    "result",
    "row",
    "search_document",
    "segment",
    "timeline",
    "timeline_result",
    "validate",
]

VERSION = 1
KINDS = ("classify", "search", "info", "health", "error")
# the other commands' `--json` outputs: plain JSON (no envelope), each described by its own schema file
OUTPUTS = ("info-students", "info-teachers", "info-fit", "zoo", "profile", "profile-mcu", "embed", "export", "adapt",
           "cache", "export-tflm")
DIGITS = 6  # decimals kept for seconds, probabilities and cosines


def _num(x: Any) -> float:
    """A finite number rounded to DIGITS decimals (JSON has no NaN or infinity: refused, never printed)."""
    v = float(x)
    if not math.isfinite(v):
        raise ValueError(f"non-finite number {v} in a JSON document (a broken model?)")
    return round(v, DIGITS)


def _text(s: str) -> str:
    """A string any JSON parser takes: a file name that was not valid UTF-8 (lone surrogates) gets U+FFFD."""
    return s.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


def envelope(kind: str) -> dict[str, Any]:
    """The first two fields of every document: `{"schema": "tinyclap.KIND", "version": VERSION}`."""
    if kind not in KINDS:
        raise ValueError(f"unknown JSON document kind {kind!r} (known: {', '.join(KINDS)})")
    return {"schema": f"tinyclap.{kind}", "version": VERSION}


# ------------------------------------------------------------------------------------------------ classify


def ranked(pairs: Iterable[tuple[str, float]]) -> list[dict[str, Any]]:
    """(label, probability) pairs, best first, as `[{"label", "probability"}]`."""
    return [{"label": str(lb), "probability": _num(p)} for lb, p in pairs]


def row(r: Any, labels: Sequence[str]) -> dict[str, Any]:
    """One timeline window: `start`, `end` (s), `top_label`, `probabilities` and `cosines` in label order."""
    d: dict[str, Any] = {"start": _num(r.start), "end": _num(r.end), "top_label": labels[r.top()],
                         "probabilities": [_num(p) for p in r.scores]}
    if getattr(r, "similarity", None) is not None:
        d["cosines"] = [_num(s) for s in r.similarity]
    return d


def segment(s: Any) -> dict[str, Any]:
    """One segment: its label (or "(none)"), `start`, `end` (s), the mean and peak probability of the label
    over its windows, and the number of windows."""
    return {"label": s.label, "start": _num(s.start), "end": _num(s.end), "mean_probability": _num(s.score),
            "peak_probability": _num(s.peak), "windows": int(s.windows)}


def timeline(rows: Sequence[Any], labels: Sequence[str], window: float, hop: float,
             segments: Sequence[Any] | None = None) -> dict[str, Any]:
    """A file's timeline: its settings, the class labels (the order of every row's lists) and the rows; the
    segments when they were asked for."""
    labels = [str(lb) for lb in labels]
    d: dict[str, Any] = {"window": float(window), "hop": float(hop), "labels": labels,
                         "rows": [row(r, labels) for r in rows]}
    if segments is not None:
        d["segments"] = [segment(s) for s in segments]
    return d


def mean_ranked(rows: Sequence[Any], labels: Sequence[str], top: int) -> list[dict[str, Any]]:
    """The `top` labels of a timeline by their mean probability over its windows."""
    if not rows:
        return []
    mean = np.stack([np.asarray(r.scores, dtype=np.float64) for r in rows]).mean(axis=0)
    order = np.argsort(-mean, kind="stable")[: max(int(top), 1)]
    return ranked((labels[i], mean[i]) for i in order)


def result(file: str, labels: list[dict[str, Any]], timeline: dict[str, Any] | None = None,
           **extra: Any) -> dict[str, Any]:
    """One classified file: `file` (as the caller named it), ranked `labels`, the `timeline` if any, and the
    documented extras (`duration`, `format`, `bytes`, `elapsed_ms`: the server's)."""
    d: dict[str, Any] = {"file": _text(str(file)), "labels": labels}
    if timeline is not None:
        d["timeline"] = timeline
    d.update(extra)
    return d


def timeline_result(file: str, rows: Sequence[Any], labels: Sequence[str], window: float, hop: float, top: int,
                    segments: Sequence[Any] | None = None, **extra: Any) -> dict[str, Any]:
    """A file classified window by window: ranked by mean probability, with its timeline."""
    return result(file, mean_ranked(rows, labels, top), timeline(rows, labels, window, hop, segments), **extra)


def classify_document(results: Iterable[dict[str, Any]], failed: Iterable[tuple[str, str]] = ()) -> dict[str, Any]:
    """`{"schema": "tinyclap.classify", "version", "results": [result], "failed": [{"file", "error"}]}`."""
    return {**envelope("classify"), "results": list(results),
            "failed": [{"file": _text(str(f)), "error": str(e)} for f, e in failed]}


def ranked_document(file_results: Sequence[Any]) -> dict[str, Any]:
    """The classify document of `Classifier.classify_files` results (readable files ranked, the rest failed)."""
    return classify_document((result(r.path, ranked(r.ranked)) for r in file_results if r.error is None),
                             ((r.path, r.error) for r in file_results if r.error is not None))


# ------------------------------------------------------------------------------------------------ search


def hit(h: Any, *, path: bool = False, audio_url: bool = False) -> dict[str, Any]:
    """One search hit: `file_id`, `name` (the file name, no folder), `path` (only when `path`: the CLI's; the
    server never sends one), the window `start`/`end` (s), its `cosine` to the query, the file's `label` when
    its source had labels, and `audio_url` (only when `audio_url`: the server's audio-by-id route)."""
    d: dict[str, Any] = {"file_id": int(h.file_id), "name": _text(os.path.basename(h.path))}
    if path:
        d["path"] = str(h.path)
    d.update(start=_num(h.start), end=_num(h.end), cosine=_num(h.score))
    if getattr(h, "label", None) is not None:
        d["label"] = _text(str(h.label))
    if audio_url:
        d["audio_url"] = f"/api/audio/{int(h.file_id)}"
    return d


def search_document(query: dict[str, str], hits: Iterable[dict[str, Any]], **extra: Any) -> dict[str, Any]:
    """`{"schema": "tinyclap.search", "version", "query": {"text"} or {"like"}, "hits": [hit]}` and the
    documented extras (`index`, `windows`: the CLI's)."""
    return {**envelope("search"), "query": {k: _text(str(v)) for k, v in query.items()}, **extra,
            "hits": list(hits)}


# ------------------------------------------------------------------------------------------------ server


def info_document(info: dict[str, Any]) -> dict[str, Any]:
    """`GET /api/info`: the engine's facts (`Engine.info`) under the envelope."""
    return {**envelope("info"), **info}


def health_document(**fields: Any) -> dict[str, Any]:
    """`GET /healthz`: `{"status": "ok", ...}` under the envelope."""
    return {**envelope("health"), "status": "ok", **fields}


# ------------------------------------------------------------------------------------------------ schemas


def load_schema(kind: str) -> dict[str, Any]:
    """The JSON Schema (draft 2020-12) of one document kind or command output (`OUTPUTS`), from the package's
    `KIND.schema.json`."""
    if kind not in KINDS + OUTPUTS:
        raise ValueError(f"unknown JSON document kind {kind!r} (known: {', '.join(KINDS + OUTPUTS)})")
    return json.loads(resources.files(__name__).joinpath(f"{kind}.schema.json").read_text("utf-8"))


def validate(doc: Any, kind: str | None = None) -> None:
    """Check `doc` against its schema (`kind`: a document kind or one of `OUTPUTS`; default the kind its
    `"schema"` field names); raises `jsonschema.ValidationError`, or ValueError for a NaN or infinity (strict
    JSON has none, and a schema's bounds do not catch NaN). Needs the `jsonschema` package (the `test` extra)."""
    import jsonschema

    try:
        json.dumps(doc, allow_nan=False)
    except ValueError:
        raise ValueError("a NaN or infinity in the document (not strict JSON)") from None
    if kind is None:
        name = doc.get("schema") if isinstance(doc, dict) else None
        if not (isinstance(name, str) and name.startswith("tinyclap.")):
            raise ValueError("not a tinyclap JSON document: no 'schema' field naming tinyclap.KIND")
        kind = name.removeprefix("tinyclap.")
    schema = load_schema(kind)
    jsonschema.Draft202012Validator(schema, format_checker=jsonschema.FormatChecker()).validate(doc)
