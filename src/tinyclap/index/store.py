"""The index folder written by `tinyclap embed`: SQLite tables + append-only memory-mapped matrices.

Layout of INDEX/ (format `tinyclap-index/1`):

- `manifest.json`: the model (spec, kind, name, fingerprint, recorded teacher), front-end settings, sample
  rate, clip length, `window`, `hop`, `embed_dim`, `kind` ("audio").
- `index.sqlite`: `files(id, path, size, mtime_ns, sha256, duration, status, error)` (status "ok" or
  "error"; an unreadable file is listed with its error and has no windows; a path that is not valid UTF-8
  is stored as its bytes, a BLOB; `label`: its class in the labelled source it was indexed from, if any),
  `windows(id, file_id, start, end, row)`, `chunks(start, rows, crc32)` (the CRC-32 of each appended batch
  of rows, checked when the index is opened: `Index.verify`), and `meta(key, value)` whose `rows` is the
  number of committed matrix rows.
- `embeddings.f16`: (rows, D) float16, the normalised embeddings, row-major, raw (no header);
  `embeddings.u8` + `scales.f32`: the same rows as int8 q with one float32 scale per row (x ~ scale * q,
  round-to-nearest), stored as the bytes q + 128 (uint8: what ONNX Runtime's integer product reads without
  a conversion pass), the copy that exact search streams first (see `tinyclap.index.search`).

Crash safety: rows are appended to the three matrix files and fsynced *before* the SQLite transaction that
references them (and raises `rows`) commits. A writer opening the folder truncates the files back to the
committed `rows`, and a reader only maps that many, so a SIGKILL at any point loses at most the batch in
flight and never leaves a window pointing at a row that was not written. Rows of deleted or changed files
stay in the files (append-only) but no window references them; search masks them.
"""

from __future__ import annotations

import json
import os
import sqlite3
import zlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tinyclap._util import JSONFileError, atomic_write_text, read_json

__all__ = ["FORMAT", "Index", "IndexDamaged", "IndexFolderError", "FileRecord", "Hit", "MANIFEST", "quantize_rows"]

FORMAT = "tinyclap-index/1"
MANIFEST = "manifest.json"
DB = "index.sqlite"
F16 = "embeddings.f16"
U8 = "embeddings.u8"
SCALES = "scales.f32"
MATRIX_FILES = (F16, U8, SCALES)
VERIFY_OPEN_BYTES = 1 << 30  # a reader's open checks every row's CRC-32 up to this many matrix bytes (~1-3 s)

_CHUNKS = """
CREATE TABLE IF NOT EXISTS chunks (start INTEGER PRIMARY KEY, rows INTEGER NOT NULL, crc32 INTEGER NOT NULL);
"""
_SCHEMA = """
CREATE TABLE IF NOT EXISTS files (
    id INTEGER PRIMARY KEY, path TEXT NOT NULL UNIQUE, size INTEGER, mtime_ns INTEGER, sha256 TEXT,
    duration REAL, status TEXT NOT NULL, error TEXT, label TEXT);
CREATE TABLE IF NOT EXISTS windows (
    id INTEGER PRIMARY KEY, file_id INTEGER NOT NULL REFERENCES files(id) ON DELETE CASCADE,
    start REAL NOT NULL, "end" REAL NOT NULL, row INTEGER NOT NULL UNIQUE);
CREATE INDEX IF NOT EXISTS windows_file ON windows(file_id);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
""" + _CHUNKS


class IndexFolderError(ValueError):
    """A folder that is not a usable index (missing or damaged files, another model, bad settings)."""


class IndexDamaged(IndexFolderError):
    """Matrix rows that do not match what was written (a checksum, a non-finite value): rebuild the index."""


def damaged(folder: Path, what: str) -> IndexDamaged:
    return IndexDamaged(f"{folder}: index damaged ({what}); rebuild it with `tinyclap embed SRC... --model M "
                        f"--out {folder} --overwrite`")


def db_path(path: str) -> str | bytes:
    """A file path as the `files` table stores it: its text, or for a name that is not valid UTF-8 (SQLite
    text must be) its bytes as a BLOB (`os.fsencode`, lossless); `path_of` turns it back."""
    try:
        path.encode("utf-8")
    except UnicodeEncodeError:
        return os.fsencode(path)
    return path


def path_of(value: str | bytes) -> str:
    return value if isinstance(value, str) else os.fsdecode(value)


def _text(value: str | None) -> str | None:
    """Text SQLite accepts: undecodable bytes of a file name quoted in an error message become escapes."""
    return None if value is None else value.encode("utf-8", "backslashreplace").decode("utf-8")


@dataclass(frozen=True)
class FileRecord:
    """One file as the index knows it (what a rerun compares against the disk)."""

    id: int
    path: str
    size: int
    mtime_ns: int
    sha256: str | None
    duration: float | None
    status: str
    error: str | None


@dataclass(frozen=True)
class Hit:
    """One search result: an indexed file, the window [start, end) seconds and its cosine score."""

    file_id: int
    path: str
    start: float
    end: float
    score: float
    label: str | None = None  # the file's label in the labelled source it was indexed from, if any

    def to_dict(self) -> dict[str, Any]:
        """The hit as the `tinyclap.search` document writes it in the CLI (docs/json.md: `cosine`, `path`)."""
        from tinyclap.schemas import hit

        return hit(self, path=True)


def quantize_rows(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(n, D) float -> int8 (n, D) and float32 scales (n,): x ~ scale * q, round to nearest, |q| <= 127.

    The rounding error of every entry is at most scale / 2 (what exact search's bound relies on)."""
    x = np.asarray(x, dtype=np.float32)
    scale = (np.abs(x).max(axis=1) / 127.0).astype(np.float32)
    safe = np.where(scale > 0, scale, 1.0).astype(np.float32)
    q = np.clip(np.rint(x / safe[:, None]), -127, 127).astype(np.int8)
    return q, scale


def read_manifest(folder: Path) -> dict[str, Any]:
    path = folder / MANIFEST
    if not folder.is_dir():
        raise IndexFolderError(f"{folder}: not an index folder (no such directory)")
    if not path.is_file():
        raise IndexFolderError(f"{path}: missing; not an index written by `tinyclap embed`")
    try:
        manifest = read_json(path)  # bounded size and depth, finite numbers, an object
    except JSONFileError as e:
        raise IndexFolderError(f"{e}; not a usable index manifest") from None
    if manifest.get("format") != FORMAT:
        raise IndexFolderError(f"{path}: unknown index format {manifest.get('format')!r:.80} (expected {FORMAT!r})")
    dim = manifest.get("embed_dim")
    if isinstance(dim, bool) or not isinstance(dim, int) or not 0 < dim <= 1 << 16:
        raise IndexFolderError(f"{path}: invalid embed_dim {dim!r}")
    return manifest


def _connect(db_path: Path, readonly: bool) -> sqlite3.Connection:
    """A connection (read-only for readers) that has read the committed row count once."""
    if readonly:
        db = sqlite3.connect(f"{db_path.resolve().as_uri()}?mode=ro", uri=True, check_same_thread=False)
    else:
        db = sqlite3.connect(db_path, check_same_thread=False)
    try:
        db.execute("PRAGMA foreign_keys = ON")
        db.execute("SELECT value FROM meta WHERE key = 'rows'").fetchone()
    except sqlite3.Error:
        db.close()
        raise
    return db


def write_manifest(folder: Path, manifest: dict[str, Any]) -> None:
    atomic_write_text(folder / MANIFEST, json.dumps({"format": FORMAT, **manifest}, indent=2) + "\n")


class Index:
    """An index folder: its manifest, its SQLite tables and its memory-mapped embedding rows.

    `Index.open(folder)` for searching (read-only); `tinyclap.index.build` opens it for writing.
    """

    def __init__(self, folder: Path, manifest: dict[str, Any], db: sqlite3.Connection, readonly: bool) -> None:
        self.folder, self.manifest, self.db, self.readonly = folder, manifest, db, readonly
        self.embed_dim = int(manifest["embed_dim"])
        self._maps: dict[str, np.ndarray] | None = None
        self.resident: Any = None  # tinyclap.index.search.ResidentRows once `load_resident` ran
        self._windows: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray] | None = None
        self._lookup: tuple[np.ndarray, np.ndarray] | None = None
        self.cache: dict[str, Any] = {}  # helpers' per-index state (the loaded approximate index)

    # ----------------------------------------------------------------------------------------- opening

    @classmethod
    def open(cls, folder: str | os.PathLike, *, readonly: bool = True) -> Index:
        """Open an index folder written by `tinyclap embed` (IndexFolderError naming the file if it is not one)."""
        folder = Path(folder)
        manifest = read_manifest(folder)
        db_path = folder / DB
        if not db_path.is_file():
            raise IndexFolderError(f"{db_path}: missing; the index is incomplete")
        try:
            db = _connect(db_path, readonly)
        except sqlite3.Error as e:
            if not (readonly and os.access(folder, os.W_OK) and (folder / f"{DB}-journal").exists()):
                raise IndexFolderError(f"{db_path}: not a readable index database ({e})") from e
            try:  # a killed writer's hot journal: a read-write connection rolls it back, then read again
                _connect(db_path, readonly=False).close()
                db = _connect(db_path, readonly)
            except sqlite3.Error as e2:
                raise IndexFolderError(f"{db_path}: not a readable index database ({e2})") from e2
        index = cls(folder, manifest, db, readonly)
        try:
            if not readonly:
                db.executescript(_CHUNKS)  # an index written before checksums: its new rows get them
                if "label" not in {r[1] for r in db.execute("PRAGMA table_info(files)")}:
                    db.execute("ALTER TABLE files ADD COLUMN label TEXT")  # written before labels
            index._check_matrix_files()
            index.verify(full=not readonly or index.rows * sum(index._row_bytes().values()) <= VERIFY_OPEN_BYTES)
        except BaseException:
            index.close()
            raise
        return index

    @classmethod
    def create(cls, folder: Path, manifest: dict[str, Any]) -> Index:
        """A new, empty index at `folder` (created), with `manifest` written last."""
        folder.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(folder / DB, check_same_thread=False)
        db.executescript(_SCHEMA)
        with db:
            db.execute("INSERT OR IGNORE INTO meta(key, value) VALUES ('rows', '0')")
        for name in MATRIX_FILES:
            (folder / name).touch()
        db.close()
        write_manifest(folder, manifest)
        return cls.open(folder, readonly=False)

    def _check_matrix_files(self) -> None:
        """Every matrix file holds at least the committed rows; a writer truncates any extra (uncommitted)."""
        rows = self.rows
        for name, width in self._row_bytes().items():
            path = self.folder / name
            try:
                size = path.stat().st_size
            except OSError as e:
                raise IndexFolderError(f"{path}: missing or unreadable ({e.strerror or e})") from e
            if size < rows * width:
                raise IndexFolderError(f"{path}: holds {size // width} rows but the database references {rows}")
            if size > rows * width and not self.readonly:
                os.truncate(path, rows * width)  # rows of a batch that never committed (a kill)

    def verify(self, full: bool = True) -> None:
        """IndexDamaged when a committed row is not what was written: a scale that is not a positive number,
        or (`full`) rows whose CRC-32 (over their fp16, int8 and scale bytes) differs from the one committed
        with them (a bit flip, a NaN written over a row, random bytes): one read of every row, about 1 s per
        GB (`Index.open` does it for writers and for indexes up to VERIFY_OPEN_BYTES; search checks the rows
        it re-scores in any case, `tinyclap.index.search.exact_top`)."""
        mats, n = self.matrices(), self.rows
        for a in range(0, n, 1 << 20):
            block = np.asarray(mats["scales"][a : a + (1 << 20)])
            if not (np.isfinite(block).all() and (block > 0).all()):
                raise damaged(self.folder, f"{SCALES} holds a scale that is not a positive number")
        if not full:
            return
        try:
            chunks = self.db.execute("SELECT start, rows, crc32 FROM chunks ORDER BY start").fetchall()
        except sqlite3.OperationalError:  # written before checksums (and opened read-only since): not checked
            return
        for start, rows, crc in chunks:
            end = min(start + rows, n)
            got = zlib.crc32(np.ascontiguousarray(mats["f16"][start:end]))
            got = zlib.crc32(np.ascontiguousarray(mats["u8"][start:end]), got)
            if zlib.crc32(np.ascontiguousarray(mats["scales"][start:end]), got) != crc:
                raise damaged(self.folder, f"rows {start}..{end - 1} do not match the checksum written with them")

    def _row_bytes(self) -> dict[str, int]:
        return {F16: 2 * self.embed_dim, U8: self.embed_dim, SCALES: 4}

    # ------------------------------------------------------------------------------------------- reading

    @property
    def rows(self) -> int:
        """Committed matrix rows (including rows no window references any more)."""
        return int(self.db.execute("SELECT value FROM meta WHERE key = 'rows'").fetchone()[0])

    def __len__(self) -> int:
        """The number of indexed windows."""
        return int(self.db.execute("SELECT COUNT(*) FROM windows").fetchone()[0])

    def matrices(self) -> dict[str, np.ndarray]:
        """The committed rows, memory-mapped: `f16` (rows, D), `u8` (rows, D: int8 + 128), `scales` (rows,)."""
        if self._maps is None:
            n, d = self.rows, self.embed_dim
            shapes = {F16: (np.float16, (n, d)), U8: (np.uint8, (n, d)), SCALES: (np.float32, (n,))}
            maps = {}
            for name, (dtype, shape) in shapes.items():
                if n == 0:
                    maps[name] = np.zeros(shape, dtype)
                else:
                    maps[name] = np.memmap(self.folder / name, dtype=dtype, mode="r", shape=shape)
            self._maps = {"f16": maps[F16], "u8": maps[U8], "scales": maps[SCALES]}
        return self._maps

    def window_table(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(rows, file_ids, starts, ends) of every indexed window, sorted by row."""
        if self._windows is None:
            cur = self.db.execute('SELECT row, file_id, start, "end" FROM windows ORDER BY row')
            data = np.array(cur.fetchall(), dtype=np.float64).reshape(-1, 4)
            if data.size and not (0 <= data[:, 0].min() and data[:, 0].max() < self.rows):
                raise IndexFolderError(f"{self.folder / DB}: a window refers to a row past the {self.rows} "
                                       "committed ones; the database is damaged (re-run tinyclap embed --overwrite)")
            self._windows = (data[:, 0].astype(np.int64), data[:, 1].astype(np.int64), data[:, 2], data[:, 3])
        return self._windows

    def row_lookup(self) -> tuple[np.ndarray, np.ndarray]:
        """(live (rows,) bool: the row belongs to an indexed window, window position of each row or -1)."""
        if self._lookup is None:
            rows = self.window_table()[0]
            live = np.zeros(self.rows, dtype=bool)
            live[rows] = True
            where = np.full(self.rows, -1, dtype=np.int64)
            where[rows] = np.arange(rows.size)
            self._lookup = (live, where)
        return self._lookup

    def file_path(self, file_id: int) -> Path:
        """The path of an indexed file, by id (KeyError for an id the index does not hold)."""
        row = self.db.execute("SELECT path FROM files WHERE id = ?", (int(file_id),)).fetchone()
        if row is None:
            raise KeyError(f"no file with id {file_id} in {self.folder}")
        return Path(path_of(row[0]))

    def paths(self, file_ids: Iterable[int]) -> dict[int, str]:
        return {i: path_of(p) for i, p in self._by_ids("SELECT id, path FROM files WHERE id IN ({marks})", file_ids)}

    def labels(self, file_ids: Iterable[int]) -> dict[int, str]:
        """The labels of those files that have one (indexed from a labelled source: `set_labels`)."""
        try:
            return dict(self._by_ids("SELECT id, label FROM files WHERE id IN ({marks}) AND label IS NOT NULL",
                                     file_ids))
        except sqlite3.OperationalError:  # an index written before labels
            return {}

    def _by_ids(self, select: str, file_ids: Iterable[int]) -> list[tuple]:
        """The rows of `select` (its `{marks}`: the id placeholders) for the distinct `file_ids`, 500 ids per
        query (SQLite's limit on variables)."""
        ids = sorted({int(i) for i in file_ids})
        rows: list[tuple] = []
        for a in range(0, len(ids), 500):
            chunk = ids[a : a + 500]
            rows += self.db.execute(select.format(marks=",".join("?" * len(chunk))), chunk).fetchall()
        return rows

    def file_ids(self, paths: Iterable[str]) -> list[int]:
        """The ids of the indexed files that are one of `paths`, or hold the same bytes (SHA-256) as one of
        them (a copy or an upload of an indexed file): what a search by example leaves out."""
        from tinyclap._util import sha256_file

        ids: set[int] = set()
        for p in paths:
            row = self.db.execute("SELECT id FROM files WHERE path = ?", (db_path(p),)).fetchone()
            if row is not None:
                ids.add(int(row[0]))
            if os.path.isfile(p):
                try:
                    digest = sha256_file(p)
                except OSError:
                    continue
                ids.update(int(r[0]) for r in self.db.execute("SELECT id FROM files WHERE sha256 = ?", (digest,)))
        return sorted(ids)

    def files(self, status: str | None = None) -> list[FileRecord]:
        """Every file record (or those of one status: "ok", "error"), by path."""
        sql = "SELECT id, path, size, mtime_ns, sha256, duration, status, error FROM files"
        args: tuple[Any, ...] = ()
        if status is not None:
            sql, args = sql + " WHERE status = ?", (status,)
        rows = self.db.execute(sql + " ORDER BY path", args).fetchall()
        return [FileRecord(r[0], path_of(r[1]), *r[2:]) for r in rows]

    def search(self, query: np.ndarray, k: int = 10, *, min_score: float | None = None,
               dedupe: bool = True, approximate: bool = False, exclude: Iterable[str] = ()) -> list[Hit]:
        """The top-`k` windows (or merged runs of adjacent windows, `dedupe`) by cosine to `query` (D,),
        leaving out the files `exclude` names (e.g. the query file of a search by example).

        Exact by default; `approximate=True` takes candidates from the FAISS graph (`tinyclap.index.ann`)."""
        from tinyclap.index.search import search_index

        return search_index(self, np.asarray(query)[None], k, min_score=min_score, dedupe=dedupe,
                            approximate=approximate, exclude=exclude)[0]

    def search_batch(self, queries: np.ndarray, k: int = 10, *, min_score: float | None = None,
                     dedupe: bool = True, approximate: bool = False) -> list[list[Hit]]:
        """`search` for (Q, D) queries at once: the matrix is streamed once for all of them."""
        from tinyclap.index.search import search_index

        return search_index(self, np.asarray(queries), k, min_score=min_score, dedupe=dedupe,
                            approximate=approximate)

    def load_resident(self, *, show_progress: bool = False) -> Index:
        """Pack the int8 rows into ONNX Runtime's memory once, for an index that answers many queries (a server,
        a notebook): every later exact search reads the packed copy at memory speed (1 M x 1024 rows: ~90 ms of
        CPU per single query instead of ~250 ms, `bench/search_latency.py`), with identical results. Costs a
        packing pass (seconds per million rows) and about twice the int8 matrix in RAM; rows appended later are
        streamed as before. On an x86 CPU without VNNI, where the packed kernel's sums could saturate, it
        declines (one warning) and searches keep streaming, exactly (`search.int8_sums_may_saturate`)."""
        from tinyclap.index.search import ResidentRows, int8_sums_may_saturate

        if int8_sums_may_saturate():
            import warnings

            warnings.warn("this CPU has no VNNI: packed int8 rows could saturate, so the index keeps streaming its "
                          "rows (exact, slower single queries)", RuntimeWarning, stacklevel=2)
            return self
        self.resident = ResidentRows(self.matrices()["u8"], show_progress=show_progress)
        return self

    # ------------------------------------------------------------------------------------------- writing

    def append(self, records: Sequence[tuple[dict[str, Any], list[tuple[float, float]]]],
               embeddings: np.ndarray) -> None:
        """Add files (their record dict and windows) with their windows' embeddings (n, D), in order.

        The rows are written and fsynced first; one transaction then replaces any previous entry of each
        path, inserts the files and windows, the rows' CRC-32 (`verify`) and raises `rows`. A kill before the
        commit leaves the index as it was (the extra rows are truncated on the next writable open; at once
        when the transaction fails)."""
        if self.readonly:
            raise IndexFolderError(f"{self.folder}: opened read-only")
        emb = np.asarray(embeddings, dtype=np.float32).reshape(-1, self.embed_dim)
        n_windows = sum(len(w) for _, w in records)
        if emb.shape[0] != n_windows:
            raise ValueError(f"{n_windows} windows but {emb.shape[0]} embeddings")
        norms = np.linalg.norm(emb, axis=1)
        if not (np.isfinite(norms).all() and np.all(np.abs(norms - 1.0) <= 1e-3)):
            raise ValueError("embeddings must be finite and L2-normalised (search's error bound relies on it)")
        start = self.rows
        f16 = emb.astype(np.float16)
        q, scales = quantize_rows(f16)  # from the stored fp16 values: search's error bound is exact for them
        u8 = q.view(np.uint8) ^ np.uint8(0x80)  # q + 128
        crc = 0
        for name, data in ((F16, f16), (U8, u8), (SCALES, scales)):
            data = np.ascontiguousarray(data)
            crc = zlib.crc32(data, crc)
            with open(self.folder / name, "r+b") as f:
                f.seek(start * self._row_bytes()[name])
                f.write(data.tobytes())
                f.flush()
                os.fsync(f.fileno())
        try:
            self._commit(records, start, crc)
        except sqlite3.Error:  # e.g. a value SQLite refuses: nothing committed, the files go back at once
            if self.rows == start:
                for name, width in self._row_bytes().items():
                    os.truncate(self.folder / name, start * width)
            raise
        self._maps = self._windows = self._lookup = None
        self.cache.clear()

    def _commit(self, records: Sequence[tuple[dict[str, Any], list[tuple[float, float]]]], start: int,
                crc: int) -> None:
        """One transaction: each file's previous entry replaced, its windows, the rows' checksum, `rows`."""
        row = start
        with self.db:
            for rec, windows in records:
                rec = {**rec, "path": db_path(rec["path"]), "error": _text(rec["error"])}
                self.db.execute("DELETE FROM files WHERE path = ?", (rec["path"],))
                cur = self.db.execute(
                    "INSERT INTO files(path, size, mtime_ns, sha256, duration, status, error) "
                    "VALUES (:path, :size, :mtime_ns, :sha256, :duration, :status, :error)", rec)
                fid = cur.lastrowid
                for s, e in windows:
                    self.db.execute('INSERT INTO windows(file_id, start, "end", row) VALUES (?, ?, ?, ?)',
                                    (fid, float(s), float(e), row))
                    row += 1
            if row > start:
                self.db.execute("INSERT INTO chunks(start, rows, crc32) VALUES (?, ?, ?)", (start, row - start, crc))
            self.db.execute("UPDATE meta SET value = ? WHERE key = 'rows'", (str(row),))

    def reopen_for_append(self) -> None:
        """Before appending under the folder lock (several writers): forget cached maps and truncate rows
        that a killed writer left uncommitted."""
        self._maps = self._windows = self._lookup = None
        self._check_matrix_files()

    def remove(self, paths: Iterable[str]) -> int:
        """Drop files (and their windows) from the index; returns how many were there."""
        n = 0
        with self.db:
            for p in paths:
                n += self.db.execute("DELETE FROM files WHERE path = ?", (db_path(p),)).rowcount
        self._windows = self._lookup = None
        self.cache.clear()
        return n

    def set_labels(self, labels: dict[str, str]) -> None:
        """Record the label of indexed files (path -> label: what their labelled source says)."""
        with self.db:
            self.db.executemany("UPDATE files SET label = ? WHERE path = ?",
                                [(_text(lb), db_path(p)) for p, lb in labels.items()])

    def touch(self, path: str, size: int, mtime_ns: int) -> None:
        """Record a new size/mtime for a file whose content hash did not change."""
        with self.db:
            self.db.execute("UPDATE files SET size = ?, mtime_ns = ? WHERE path = ?", (size, mtime_ns, db_path(path)))

    def close(self) -> None:
        self._maps = self._windows = self._lookup = self.resident = None
        self.cache.clear()
        self.db.close()

    def __enter__(self) -> Index:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
