"""The model side of `tinyclap serve`: one `Engine` over a `tinyclap.Classifier` and, optionally, an
`tinyclap.index.Index`. Everything here is synchronous and runs on the worker pool's threads.

The engine never touches a path the client chose: uploads arrive as files in a private temporary folder
the server made, and indexed audio is reached only by its id in the index, and served only while it is what
was indexed: its size and mtime as recorded, its SHA-256 as recorded (checked once per file version, for
files up to `MAX_HASH_BYTES`), and its real path (links followed) inside the indexed folder (the common folder
of the indexed files). `info()` names models, never server-side paths.
"""

from __future__ import annotations

import copy
import os
import stat
import statistics
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tinyclap import schemas
from tinyclap.audio import AudioError, audio_info
from tinyclap.serve.limits import ApiError, ServeConfig

LABEL_CACHE = 32  # label sets whose text embeddings are kept
MAX_HASH_BYTES = 1 << 30  # indexed files up to this size are hashed (once per version) before being served
VERIFIED_CACHE = 4096  # file versions whose hash was checked


@dataclass(frozen=True)
class AudioRecord:
    """What the index recorded about one file (`files` table)."""

    file_id: int
    path: str
    size: int | None
    mtime_ns: int | None
    sha256: str | None
    status: str


def parse_labels(text: str | None, cfg: ServeConfig) -> list[str]:
    """Comma-separated free-text labels: stripped, de-duplicated (order kept), bounded in count and length."""
    labels: list[str] = []
    for part in (text or "").split(","):
        label = " ".join(part.split())
        if label and label not in labels:
            labels.append(label)
    if len(labels) > cfg.max_labels:
        raise ApiError(400, f"too many labels: {len(labels)} (the limit is {cfg.max_labels})")
    long = [lb for lb in labels if len(lb) > cfg.max_label_chars]
    if long:
        raise ApiError(400, f"label too long ({len(long[0])} characters, the limit is {cfg.max_label_chars})")
    return labels


class Engine:
    """Classify uploads, search an index, and describe the model (`info`)."""

    def __init__(self, classifier: Any, cfg: ServeConfig, *, index: Any = None, teacher: Any = None,
                 tokenizer: Any = None, query_model: Any = None) -> None:
        self.clf = classifier
        self.cfg = cfg
        self.index = index
        self.teacher = teacher
        self.tokenizer = tokenizer
        self.query_model = query_model
        self._label_cache: OrderedDict[tuple[str, ...], Any] = OrderedDict()
        self._lock = threading.Lock()
        self._index_lock = threading.Lock()
        self._verified: OrderedDict[int, tuple[int, ...]] = OrderedDict()
        self.root: Path | None = None  # the indexed folder (real path), set with the index
        self.latency_ms: float | None = None
        self.latency: dict[str, Any] | None = None
        self.text_model: Any = None
        self.text_unavailable = "no index"
        if index is not None:
            self._prepare_search()

    def _prepare_search(self) -> None:
        """Load the query models once (not per request): the index's own audio model (refused if its weights
        changed since the index was built) and, where there is one, the text side."""
        from tinyclap.index.query import index_model, text_side

        self.root = indexed_root(self.index)
        self.query_model = index_model(self.index, self.query_model)
        try:
            self.text_model = text_side(self.index, self.teacher, self.tokenizer)
            self.text_unavailable = ""
        except ValueError as e:
            self.text_unavailable = str(e)

    # ---------------------------------------------------------------------------------------- the model
    def measure_latency(self, runs: int = 10, warmup: int = 2) -> float:
        """Median wall time (ms) of one 5 s clip through `classify_arrays` over `runs` warm runs (after `warmup`
        untimed ones), measured once at start-up; `info()` reports it with how it was measured."""
        n = int(round(self.clf.clip_seconds * self.clf.sample_rate))
        wave = (0.1 * np.random.default_rng(0).standard_normal(n)).astype(np.float32)
        # a model with a text side but no classes yet is timed with one label (its audio side dominates)
        clf = self.clf if self.clf.labels or not self.clf.can_encode_text else self.classifier_for(["a sound"])
        for _ in range(warmup):
            clf.classify_arrays([wave], self.clf.sample_rate, top=1)
        times = []
        for _ in range(runs):
            t0 = time.perf_counter()
            clf.classify_arrays([wave], self.clf.sample_rate, top=1)
            times.append((time.perf_counter() - t0) * 1000)
        self.latency_ms = round(statistics.median(times), 2)
        self.latency = {"median_ms": self.latency_ms, "runs": runs, "warmup_runs": warmup,
                        "clip_seconds": float(self.clf.clip_seconds), "measured": "at start-up"}
        return self.latency_ms

    def model_facts(self) -> dict[str, Any]:
        """Name, kind, parameters and MACs per 5 s clip of the audio model (computed once)."""
        if getattr(self, "_facts", None) is None:
            self._facts = model_facts(self.clf)
        return self._facts

    def info(self) -> dict[str, Any]:
        facts = self.model_facts()
        out: dict[str, Any] = {
            "model": facts,
            "sample_rate": int(self.clf.sample_rate),
            "clip_seconds": float(self.clf.clip_seconds),
            "free_text_labels": bool(self.clf.can_encode_text),
            "labels": list(self.clf.labels or []),
            "latency_ms": self.latency_ms,
            "latency": self.latency,
            "search": self.index is not None,
            "limits": {"max_upload_bytes": self.cfg.max_upload_bytes, "max_seconds": self.cfg.max_seconds,
                       "max_labels": self.cfg.max_labels, "window": self.cfg.window, "hop": self.cfg.hop},
        }
        if self.index is not None:
            out["index"] = {"windows": len(self.index), "text_search": self.text_model is not None,
                            "model": _public_name((self.index.manifest.get("model") or {}).get("name"))}
        return out

    def classifier_for(self, labels: list[str]) -> Any:
        """The classifier for these labels: the model's own classes when none are given, else a copy whose
        labels are encoded by the text side (cached per label set; the shared classifier is never changed)."""
        if not labels:
            if not self.clf.labels:
                raise ApiError(400, "no labels: type some (comma-separated) labels")
            return self.clf
        if list(labels) == list(self.clf.labels or []):
            return self.clf
        if not self.clf.can_encode_text:
            raise ApiError(400, "this model has fixed classes and no text side to encode free-text labels "
                                "(start the server with --teacher); leave the labels empty to use its classes")
        key = tuple(labels)
        with self._lock:
            hit = self._label_cache.get(key)
            if hit is not None:
                self._label_cache.move_to_end(key)
                return hit
            clf = copy.copy(self.clf)
            clf.set_labels(list(labels))
            self._label_cache[key] = clf
            while len(self._label_cache) > LABEL_CACHE:
                self._label_cache.popitem(last=False)
            return clf

    # ---------------------------------------------------------------------------------------- classify
    def check_audio(self, path: Path) -> Any:
        """Header checks before any decoding: readable as audio, and not longer than the limit."""
        try:
            info = audio_info(path)
        except AudioError as e:
            raise ApiError(422, f"cannot read the audio: {e.problem}") from None
        if info.duration > self.cfg.max_seconds:
            raise ApiError(413, f"audio too long: {info.duration:.1f} s (the limit is {self.cfg.max_seconds:g} s)")
        return info

    def classify(self, path: Path, labels: list[str], top: int | None = None, name: str = "") -> dict[str, Any]:
        """One upload (`name`: the client's file name) as a `tinyclap.classify` result: ranked labels; for
        audio longer than one clip, ranked by mean probability over the windows of its timeline."""
        top = min(top or self.cfg.top, self.cfg.top)
        info = self.check_audio(path)
        clf = self.classifier_for(labels)
        t0 = time.perf_counter()
        try:
            if info.duration <= self.clf.clip_seconds + 1e-6:
                res = clf.classify_files([path], top=top)[0]
                if res.error:
                    raise ApiError(422, f"cannot use the audio: {_problem(res.error)}")
                out = schemas.result(name, schemas.ranked(res.ranked))
            else:
                tl = clf.timeline(path, window=self.cfg.window, hop=self.cfg.hop)
                if not tl.rows:
                    raise ApiError(422, "cannot use the audio: no complete window")
                out = schemas.timeline_result(name, tl.rows, tl.labels, self.cfg.window, self.cfg.hop, top)
        except AudioError as e:
            raise ApiError(422, f"cannot use the audio: {e.problem}") from None
        out.update(duration=round(info.duration, 3), elapsed_ms=round((time.perf_counter() - t0) * 1000, 2))
        return out

    # ---------------------------------------------------------------------------------------- search
    def require_index(self) -> Any:
        if self.index is None:
            raise ApiError(404, "no index: start the server with --index FOLDER to search")
        return self.index

    def search_text(self, text: str, k: int) -> list[dict[str, Any]]:
        from tinyclap.index import text_query

        index = self.require_index()
        text = " ".join(text.split())
        if not text or len(text) > self.cfg.max_label_chars * 4:
            raise ApiError(400, f"the query must be 1 to {self.cfg.max_label_chars * 4} characters")
        if self.text_model is None:
            raise ApiError(400, f"text search is not available: {self.text_unavailable}")
        try:
            query = text_query(index, text, teacher=self.text_model)
        except ValueError as e:
            raise ApiError(400, f"cannot search by text: {e}") from None
        return self._hits(query, k)

    def search_audio(self, path: Path, k: int) -> list[dict[str, Any]]:
        from tinyclap.index import audio_query

        index = self.require_index()
        self.check_audio(path)
        try:
            query = audio_query(index, path, model=self.query_model)
        except AudioError as e:
            raise ApiError(422, f"cannot use the audio: {e.problem}") from None
        except ValueError as e:
            raise ApiError(422, f"cannot use the audio: {e}") from None
        return self._hits(query, k, exclude=[os.fspath(path)])  # an upload of an indexed file: not its own hit

    def _hits(self, query: np.ndarray, k: int, exclude: list[str] | None = None) -> list[dict[str, Any]]:
        with self._index_lock:
            hits = self.index.search(np.asarray(query, dtype=np.float32), k=k, exclude=exclude or ())
        return [schemas.hit(h, audio_url=True) for h in hits]  # a name and an id, never a server-side path

    def audio_record(self, file_id: int) -> AudioRecord:
        """What the index recorded about file `file_id` (never a client path): ApiError(404) for an unknown id."""
        index = self.require_index()
        with self._index_lock:
            row = index.db.execute("SELECT id, path, size, mtime_ns, sha256, status FROM files WHERE id = ?",
                                   (int(file_id),)).fetchone()
        if row is None:
            raise ApiError(404, f"no indexed file with id {file_id}")
        return AudioRecord(*row)

    def verified_audio(self, rec: AudioRecord) -> tuple[Path, os.stat_result]:
        """The file of `rec` and its stat, if it is still what was indexed; else ApiError (404 gone, 403 a path
        that now leaves the indexed folder, 409 changed). Reads the disk: call it off the event loop."""
        real = Path(os.path.realpath(rec.path))
        if rec.status != "ok":
            raise ApiError(404, f"indexed file {rec.file_id} could not be read when it was indexed")
        if self.root is not None and not real.is_relative_to(self.root):
            raise ApiError(403, f"indexed file {rec.file_id} now resolves outside the indexed folder (a link?): "
                                "refused")
        try:
            st = os.stat(real)
        except OSError:
            raise ApiError(404, f"indexed file {rec.file_id} is no longer available") from None
        if not stat.S_ISREG(st.st_mode):
            raise ApiError(404, f"indexed file {rec.file_id} is no longer a regular file")
        if (st.st_size, st.st_mtime_ns) != (rec.size, rec.mtime_ns):
            raise ApiError(409, f"indexed file {rec.file_id} changed since it was indexed (its size or modification "
                                "time differ): rerun `tinyclap embed` to update the index")
        if rec.sha256 and st.st_size <= MAX_HASH_BYTES:
            self._check_hash(rec, real, st)
        return real, st

    def _check_hash(self, rec: AudioRecord, real: Path, st: os.stat_result) -> None:
        from tinyclap._util import sha256_file

        version = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
        with self._lock:
            if self._verified.get(rec.file_id) == version:
                return
        try:
            digest = sha256_file(real)
        except OSError:
            raise ApiError(404, f"indexed file {rec.file_id} is no longer readable") from None
        if digest != rec.sha256:
            raise ApiError(409, f"indexed file {rec.file_id} changed since it was indexed (its content hash "
                                "differs): rerun `tinyclap embed` to update the index")
        with self._lock:
            self._verified[rec.file_id] = version
            while len(self._verified) > VERIFIED_CACHE:
                self._verified.popitem(last=False)


def indexed_root(index: Any) -> Path | None:
    """The real path of the folder holding every indexed file (their common folder), None for an empty index."""
    root: str | None = None
    for (path,) in index.db.execute("SELECT path FROM files"):
        folder = os.path.dirname(os.path.abspath(path))
        if root is None:
            root = folder
        elif folder != root and not folder.startswith(root.rstrip(os.sep) + os.sep):
            root = os.path.commonpath([root, folder])
    return Path(os.path.realpath(root)) if root is not None else None


def _public_name(name: Any) -> Any:
    """A model name as the API shows it: never a server-side path (only its last part)."""
    if isinstance(name, str) and ("/" in name or os.sep in name):
        return os.path.basename(os.path.normpath(name))
    return name


def _problem(error: Any) -> str:
    """The cause of a FileResult error without the server-side temp path it names."""
    text = str(getattr(error, "problem", error))
    return text.split(": ", 1)[1] if "upload.audio: " in text else text


def model_facts(clf: Any) -> dict[str, Any]:
    """`clf.model_info` plus `params` and `macs`: from the loaded PyTorch model, or for an export from its
    student's configuration (this needs torch; without it they stay None and the page shows '?')."""
    facts = {k: v for k, v in dict(clf.model_info or {}).items() if k in ("name", "kind", "int8")}  # no paths
    facts.setdefault("params", None)
    facts.setdefault("macs", None)
    engine = getattr(clf, "engine", None)
    try:
        if getattr(engine, "model", None) is not None:
            from tinyclap.models.fingerprint import describe_model

            d = describe_model(engine.model)
            facts.update(name=d.get("name") or facts.get("name"), params=d.get("audio_params"), macs=d.get("macs"))
        elif getattr(engine, "rt", None) is not None:
            config = (engine.rt.manifest.get("student") or {}).get("config") or {}
            if config.get("name"):
                from tinyclap.models.students import count_macs, count_params, create_student

                student = create_student(config["name"], embed_dim=int(config.get("embed_dim", 1024)))
                facts.update(name=config["name"], params=count_params(student), macs=count_macs(student))
    except ImportError:  # a torch-free machine: the export still serves
        pass
    facts["name"] = _public_name(facts.get("name"))
    return facts
