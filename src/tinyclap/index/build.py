"""`embed_sources` (CLI: `tinyclap embed`): every audio file under the sources, as windows, into an index.

Steps: list the files (audio files, folders scanned recursively, manifests and dataset specs through
`tinyclap.data.parse_data_spec`), drop from the index the files that no longer exist, plan (a file whose
size and mtime are unchanged is skipped; one whose size or mtime changed is hashed, and re-embedded only if
its SHA-256 changed), then decode the planned files in worker threads and embed their windows (an export
folder: in the same worker threads, one single-threaded ONNX Runtime call per file; a torch model: in
batches on the calling thread), committing every batch of files (see `tinyclap.index.store` for why a kill
loses at most one batch). A small file is read once, and hashed and decoded from the same bytes.

Decoding runs in threads, not processes: libsndfile and soxr release the GIL while they decode and
resample, so threads decode in parallel without pickling megabytes of samples between processes, and the
same code runs torch-free with an export folder (ONNX Runtime also releases the GIL). Under `torchrun`
(RANK/WORLD_SIZE set) each rank embeds every WORLD_SIZE-th file and appends under the folder's lock.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import stat
import time
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from tinyclap._util import atomic_write_text, folder_lock, l2_normalize
from tinyclap._util import progress as progress_display
from tinyclap.audio import AudioError, eval_windows, stream_windows
from tinyclap.audio.io import MAX_TIMELINE_WINDOW_S
from tinyclap.index.ann import ANN_FILE, ANN_META
from tinyclap.index.model import IndexModel, load_index_model
from tinyclap.index.store import DB, MANIFEST, MATRIX_FILES, Index, IndexDamaged, IndexFolderError, read_manifest

__all__ = ["EmbedReport", "embed_sources", "list_sources"]

LONG_FILE_WINDOWS = 64  # a file with more windows is embedded in pieces (bounded memory), not decoded whole
REPORT = "report.json"
READ_WHOLE_BYTES = 16 << 20  # a file up to this size is read once, hashed and decoded from memory
HOP_S = 1.0  # the hop when none is given: every command's --hop default (cli._common.HOP_SECONDS)
MAX_WINDOW_S = MAX_TIMELINE_WINDOW_S  # a window is decoded whole: 10 minutes at 44.1 kHz is 106 MB


@dataclass
class EmbedReport:
    """What one run (one rank) did: files seen, embedded, unchanged, removed, failed, windows, speed."""

    index: str
    rank: int = 0
    world_size: int = 1
    files_listed: int = 0
    files_assigned: int = 0
    embedded: int = 0
    unchanged: int = 0
    removed: int = 0
    windows: int = 0
    failed: list[dict[str, str]] = field(default_factory=list)
    seconds: float = 0.0
    clips_per_s: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def summary(self) -> str:
        return (f"{self.index}: {self.embedded} file(s) embedded ({self.windows} windows, "
                f"{self.clips_per_s:.1f} files/s), {self.unchanged} unchanged, {self.removed} removed, "
                f"{len(self.failed)} unreadable, {self.files_listed} listed")


def list_sources(sources: Iterable[str | os.PathLike]) -> list[str]:
    """Absolute paths of the unique audio files the sources name (first occurrence of a real path wins)."""
    from tinyclap.data import AUDIO_EXTENSIONS, parse_data_spec

    out: list[str] = []
    seen: set[str] = set()
    entries = [os.fspath(s) for s in sources]
    if not entries:
        raise ValueError("no sources given: pass audio files, folders, manifests or KIND:PATH specs")
    for entry in entries:
        plain = Path(os.path.abspath(os.path.expanduser(entry)))
        listed = [plain] if plain.is_file() and plain.suffix.lower() in AUDIO_EXTENSIONS else parse_data_spec(entry)
        for p in listed:
            p = Path(os.path.abspath(p))
            real = os.path.realpath(p)
            if real not in seen:
                seen.add(real)
                out.append(str(p))
    return sorted(out)


def source_labels(sources: Iterable[str | os.PathLike]) -> dict[str, str]:
    """Absolute path -> label of the files that labelled sources name (`us8k:`, `esc50:`, `tut17:`,
    `csv:LABELS.csv` specs: what `search` shows beside their hits); plain files and folders have none."""
    from tinyclap.data import DATASET_NAMES
    from tinyclap.data.spec import DATA_KINDS, load_eval_dataset, parse_spec

    out: dict[str, str] = {}
    for entry in sources:
        spec = parse_spec(os.fspath(entry), DATA_KINDS)
        if spec.name in DATASET_NAMES:
            ds = load_eval_dataset(spec.name, spec.root, folds=spec.folds, subset=spec.subset)
            out.update((os.path.abspath(it.path), ds.classes[it.label]) for it in ds.items)
    return out


def _stat(path: str) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return int(st.st_size), int(st.st_mtime_ns)


def _plan(index: Index, files: Sequence[str], report: EmbedReport) -> list[str]:
    """The files to (re-)embed: new ones, and known ones whose content hash changed."""
    known = {r.path: r for r in index.files()}
    todo = []
    for path in files:
        rec, st = known.get(path), _stat(path)
        if rec is None or st is None:
            todo.append(path)  # new (or vanished meanwhile: its error is recorded)
        elif (rec.size, rec.mtime_ns) == st or (rec.sha256 is not None and _hash(path) == rec.sha256):
            if (rec.size, rec.mtime_ns) != st:
                index.touch(path, *st)
            report.unchanged += 1
            if rec.status != "ok":  # still unreadable: listed again
                report.failed.append({"path": path, "error": str(rec.error)})
        else:
            todo.append(path)
    return todo


def _open_regular(path: str) -> BinaryIO | None:
    """`path` opened for reading if it is a regular file, else None: opened non-blocking and checked on the
    descriptor, so a FIFO never hangs the run (it is then reported by the decoder, naming its type)."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
    except OSError:
        return None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        return None
    return os.fdopen(fd, "rb", buffering=0)


def _hash(path: str) -> str | None:
    f = _open_regular(path)
    if f is None:
        return None
    h = hashlib.sha256()
    try:
        with f:
            while block := f.read(1 << 20):
                h.update(block)
    except OSError:
        return None
    return h.hexdigest()


def _windows(path: str, model: IndexModel, window: float, hop: float,
             data: bytes | None = None) -> Iterator[tuple[float, np.ndarray]]:
    """(start, waveform of `window` seconds) for every window of a file (`tinyclap.audio.stream_windows`;
    `data`: the file's bytes when already read, decoded from memory)."""
    return stream_windows(path, window=window, hop=hop, sample_rate=model.sample_rate, data=data)


def _read_small(path: str, st: tuple[int, int] | None) -> bytes | None:
    """The bytes of a readable regular file of at most READ_WHOLE_BYTES, read once (hashed and decoded from
    memory); None for anything else (decoded from the path, which reports the precise problem)."""
    if st is None or st[0] > READ_WHOLE_BYTES:
        return None
    f = _open_regular(path)
    if f is None:
        return None
    try:
        with f:
            data = f.read(READ_WHOLE_BYTES + 1)
    except OSError:
        return None
    return data if len(data) <= READ_WHOLE_BYTES else None


def _decode_embed(path: str, model: IndexModel, window: float, hop: float, embed: Any) -> dict[str, Any]:
    """Worker (a model that takes concurrent calls): `_decode`, then the file's windows embedded right there
    (`embed`: `_Writer.embed`), so decoding and the model run side by side in every thread."""
    item = _decode(path, model, window, hop)
    if item["windows"] and len(item["windows"]) <= LONG_FILE_WINDOWS:
        item["emb"] = embed([w for _, w in item["windows"]])
        item["windows"] = [(s, None) for s, _ in item["windows"]]  # the audio is not needed any more
    return item


def _decode(path: str, model: IndexModel, window: float, hop: float) -> dict[str, Any]:
    """Worker: a file's record and its first LONG_FILE_WINDOWS + 1 windows (more: embedded in pieces).

    A small file is read once: its hash and its audio both come from the same bytes (no second open, and
    the hash is that of exactly what was decoded)."""
    st = _stat(path)
    rec = {"path": path, "size": st[0] if st else None, "mtime_ns": st[1] if st else None, "sha256": None,
           "duration": None, "status": "ok", "error": None}
    try:
        from tinyclap.audio import audio_info

        data = _read_small(path, st)
        if data is not None:
            rec["duration"] = audio_info(path, data=data).duration
            rec["sha256"] = hashlib.sha256(data).hexdigest()
            it = _windows(path, model, window, hop, data)
        else:
            rec["duration"] = audio_info(path).duration  # a FIFO, a device: an AudioError naming its type
            rec["sha256"] = _hash(path)
            it = _windows(path, model, window, hop)
        first = [sw for _, sw in zip(range(LONG_FILE_WINDOWS + 1), it)]  # (start, wave) pairs
        return {"rec": rec, "windows": first}
    except AudioError as e:
        rec.update(status="error", error=e.problem)
    except (OSError, ValueError, RuntimeError, MemoryError) as e:  # one file never ends a long run
        rec.update(status="error", error=f"{type(e).__name__}: {e}")
    return {"rec": rec, "windows": []}


class _Writer:
    """Batches windows, embeds them, and appends whole files to the index (under the folder lock)."""

    def __init__(self, index: Index, model: IndexModel, window: float, batch_size: int, report: EmbedReport,
                 locked: bool) -> None:
        self.index, self.model, self.window, self.batch_size = index, model, window, batch_size
        self.report, self.locked = report, locked
        self.files: list[tuple[dict[str, Any], list[tuple[float, float]]]] = []
        self.parts: list[Any] = []  # per file: its (n, D) embeddings, or its list of n waveforms to embed
        self.pending = 0  # windows held

    def embed(self, waves: Sequence[np.ndarray]) -> np.ndarray:
        """Windows of `window` seconds -> (n, D); a window of another length than the model's clip is
        embedded as the renormalised mean of its clip-length windows (as `classify --window` does)."""
        clip = self.model.clip_samples
        if all(w.shape[0] == clip for w in waves):
            return l2_normalize(self.model.embed(np.stack(waves)))
        return np.stack([l2_normalize(l2_normalize(self.model.embed(eval_windows(w, clip))).mean(0)) for w in waves])

    def add(self, rec: dict[str, Any], windows: list[tuple[float, Any]], emb: np.ndarray | None = None) -> None:
        """A file and its windows (waveforms, or None each when `emb` holds their embeddings already)."""
        dur = rec["duration"] or 0.0
        spans = [(s, min(s + self.window, dur) if dur > 0 else s + self.window) for s, _ in windows]
        self.files.append((rec, spans))
        self.parts.append(emb if emb is not None else [w for _, w in windows])
        self.pending += len(windows)
        if rec["status"] != "ok":
            self.report.failed.append({"path": rec["path"], "error": rec["error"]})
        if self.pending >= self.batch_size:
            self.flush()

    def flush(self) -> None:
        if not self.files:
            return
        empty = np.zeros((0, self.index.embed_dim), np.float32)
        waves = [w for part in self.parts if isinstance(part, list) for w in part]
        batches = [self.embed(waves[a : a + self.batch_size]) for a in range(0, len(waves), self.batch_size)]
        batched, out, at = (np.concatenate(batches) if batches else empty), [], 0
        for part in self.parts:  # file order: embedded by a worker already, or in this thread's batches
            if isinstance(part, np.ndarray):
                out.append(part)
            else:
                out.append(batched[at : at + len(part)])
                at += len(part)
        matrix = np.concatenate(out) if out else empty
        self.files, matrix = _drop_unusable(self.files, matrix, self.report)
        if self.locked:
            with folder_lock(self.index.folder):
                self.index.reopen_for_append()
                self.index.append(self.files, matrix)
        else:
            self.index.append(self.files, matrix)
        self.report.embedded += sum(r["status"] == "ok" for r, _ in self.files)
        self.report.windows += matrix.shape[0]
        self.files, self.parts, self.pending = [], [], 0


def _drop_unusable(files: list[tuple[dict[str, Any], list[tuple[float, float]]]], matrix: np.ndarray,
                   report: EmbedReport) -> tuple[list[tuple[dict[str, Any], list[tuple[float, float]]]], np.ndarray]:
    """Files whose embeddings are not finite unit vectors become errors without windows (rows dropped)."""
    norms = np.linalg.norm(matrix, axis=1)
    ok_rows = np.isfinite(norms) & (np.abs(norms - 1.0) <= 1e-3)
    if ok_rows.all():
        return files, matrix
    keep, out, row = [], [], 0
    for rec, spans in files:
        rows = slice(row, row + len(spans))
        row += len(spans)
        if spans and not ok_rows[rows].all():
            rec = {**rec, "status": "error", "error": "the model gave a non-finite or zero embedding"}
            report.failed.append({"path": rec["path"], "error": rec["error"]})
            spans = []
        else:
            keep.append(np.arange(rows.start, rows.stop))
        out.append((rec, spans))
    idx = np.concatenate(keep) if keep else np.zeros(0, np.int64)
    return out, matrix[idx]


def _long_file(writer: _Writer, item: dict[str, Any], window: float, hop: float) -> None:
    """A file with more than LONG_FILE_WINDOWS windows: streamed again and embedded piece by piece, then
    appended whole (its windows are embedded first, so memory holds embeddings, not audio)."""
    rec = item["rec"]
    writer.flush()
    embs, spans, piece = [], [], []
    dur = rec["duration"] or 0.0
    try:
        for s, w in _windows(rec["path"], writer.model, window, hop):
            piece.append(w)
            spans.append((s, min(s + window, dur) if dur > 0 else s + window))
            if len(piece) == writer.batch_size:
                embs.append(writer.embed(piece))
                piece = []
        if piece:
            embs.append(writer.embed(piece))
    except AudioError as e:
        rec.update(status="error", error=e.problem)
        writer.add(rec, [])
        return
    files, matrix = _drop_unusable([(rec, spans)], np.concatenate(embs), writer.report)
    with folder_lock(writer.index.folder) if writer.locked else contextlib.nullcontext():
        if writer.locked:
            writer.index.reopen_for_append()
        writer.index.append(files, matrix)
    writer.report.embedded += int(files[0][0]["status"] == "ok")
    writer.report.windows += matrix.shape[0]


LOCKS = (".lock", ".embed.lock")  # the ranks' append lock, and the one-writer lock of a plain run


def _refuse_foreign(out: Path) -> None:
    """A folder that exists, is not empty and holds no index is someone else's: never written into."""
    if out.exists() and not (out / MANIFEST).exists():
        if not out.is_dir() or any(p.name not in LOCKS for p in out.iterdir()):
            raise IndexFolderError(f"{out}: exists and is not an index; refusing to write into it")


def _open_or_create(out: Path, manifest: dict[str, Any], overwrite: bool) -> Index:
    """The index at `out`, created if absent; refused if it was built with another model or settings."""
    if (out / MANIFEST).exists():
        old = read_manifest(out)
        keys = ("embed_dim", "window", "hop", "sample_rate", "clip_samples")
        differ = [f"{k}: {old.get(k)!r} there, {manifest.get(k)!r} now" for k in keys if old.get(k) != manifest.get(k)]
        if (old.get("model") or {}).get("fingerprint") != manifest["model"]["fingerprint"]:
            differ.append("model fingerprint")
        if differ and not overwrite:
            raise IndexFolderError(f"{out}: this index was built with other settings ({'; '.join(differ)}); "
                                   "give the index's own (e.g. --window/--hop), another --out, or --overwrite to "
                                   "start it again")
        if not differ:
            try:
                return Index.open(out, readonly=False)
            except IndexDamaged:
                if not overwrite:
                    raise
        for name in (MANIFEST, DB, *MATRIX_FILES, REPORT, ANN_FILE, ANN_META):  # --overwrite: start again
            (out / name).unlink(missing_ok=True)
    _refuse_foreign(out)
    return Index.create(out, manifest)


def embed_sources(
    sources: Iterable[str | os.PathLike],
    model: str | os.PathLike | Any,
    out: str | os.PathLike,
    *,
    window: float = 5.0,
    hop: float | None = None,
    batch_size: int = 16,
    workers: int = 2,
    int8: bool = False,
    overwrite: bool = False,
    progress: bool = True,
    rank: int | None = None,
    world_size: int | None = None,
) -> EmbedReport:
    """Embed every audio file under `sources` into the index folder `out` (created or updated).

    `model` is a spec (student name/run/checkpoint, teacher, or export folder: ONNX Runtime, no torch) or an
    `IndexModel`. Files are cut into `window`-second windows every `hop` seconds (default: `HOP_S`, 1 s, as
    every command's `--hop`, or `window` when shorter). A rerun
    embeds only new or changed files and drops files that no longer exist; unreadable files are recorded
    with their error (`report.failed`), not fatal. One plain run writes an index at a time (a second one
    gets `FolderBusy` naming the first); `torchrun` ranks share it, appending under the folder lock.
    """
    if not (0 < window <= MAX_WINDOW_S and (hop is None or 0 < hop <= MAX_WINDOW_S)):
        raise ValueError(f"--window and --hop must be > 0 and <= {MAX_WINDOW_S:g} s, got {window} and {hop}")
    if batch_size < 1 or workers < 0:
        raise ValueError(f"need batch_size >= 1 and workers >= 0, got {batch_size} and {workers}")
    hop = min(HOP_S, window) if hop is None else hop
    rank = int(os.environ.get("RANK", "0")) if rank is None else int(rank)
    world_size = int(os.environ.get("WORLD_SIZE", "1")) if world_size is None else int(world_size)
    sources = [os.fspath(s) for s in sources]
    files = list_sources(sources)  # bad sources fail here, before any folder is created
    # an export run by the decoding threads themselves: one ONNX Runtime thread per call (no oversubscription)
    threads = 1 if workers > 0 else None
    imodel = model if isinstance(model, IndexModel) else load_index_model(model, int8=int8, threads=threads)
    out = Path(os.path.abspath(os.fspath(out)))
    single = world_size == 1
    if single:
        _refuse_foreign(out)  # before the lock file is created in it (ranks check under the lock)
    t0 = time.perf_counter()
    report = EmbedReport(index=str(out), rank=rank, world_size=world_size, files_listed=len(files))
    out.mkdir(parents=True, exist_ok=True)
    with folder_lock(out, blocking=False, name=LOCKS[1], what="this index") if single else contextlib.nullcontext():
        with contextlib.nullcontext() if single else folder_lock(out):
            index = _open_or_create(out, imodel.manifest(window, hop), overwrite)
            try:
                if rank == 0:
                    gone = [r.path for r in index.files() if _stat(r.path) is None and r.path not in set(files)]
                    report.removed = index.remove(gone)
                mine = [f for i, f in enumerate(files) if i % world_size == rank]
                report.files_assigned = len(mine)
                todo = _plan(index, mine, report)
            except BaseException:
                index.close()
                raise
        try:
            _run(index, imodel, todo, (window, hop, batch_size, workers), progress and rank == 0, report, not single)
            assigned = set(mine)
            labels = {p: lb for p, lb in source_labels(sources).items() if p in assigned}
            if labels:
                with contextlib.nullcontext() if single else folder_lock(out):
                    index.set_labels(labels)
        finally:
            index.close()
        report.seconds = time.perf_counter() - t0
        report.clips_per_s = report.embedded / max(report.seconds, 1e-9)
        atomic_write_text(out / (REPORT if single else f"report.rank{rank}.json"),
                          json.dumps(report.to_dict(), indent=2) + "\n")
    return report


def _run(index: Index, model: IndexModel, todo: list[str], settings: tuple[float, float, int, int], show: bool,
         report: EmbedReport, locked: bool) -> None:
    """Decode `todo` in worker threads (in order, a bounded number ahead) and append them in batches."""
    window, hop, batch_size, workers = settings
    writer = _Writer(index, model, window, batch_size, report, locked)
    bar = progress_display(total=len(todo), desc="embed", unit="file", enabled=show)

    def decoded() -> Iterator[dict[str, Any]]:
        if workers == 0:
            yield from (_decode(p, model, window, hop) for p in todo)
            return
        job = _decode_embed if getattr(model, "thread_safe", False) else _decode
        extra = (writer.embed,) if job is _decode_embed else ()
        with ThreadPoolExecutor(max_workers=workers) as pool:
            ahead = max(2 * workers, batch_size)
            futures = [pool.submit(job, p, model, window, hop, *extra) for p in todo[:ahead]]
            for i in range(len(todo)):
                item = futures[i].result()
                futures[i] = None  # type: ignore[call-overload]
                if i + ahead < len(todo):
                    futures.append(pool.submit(job, todo[i + ahead], model, window, hop, *extra))
                yield item

    try:
        for item in decoded():
            if len(item["windows"]) > LONG_FILE_WINDOWS:
                _long_file(writer, item, window, hop)
            else:
                writer.add(item["rec"], item["windows"], item.get("emb"))
            bar.update(1)
        writer.flush()
    finally:
        bar.close()
