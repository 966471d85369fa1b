"""Reading a teacher-target cache: `cache.json`, finished shards, `CacheStore` and `CachedDataset`.

The store layout is described in `tinyclap.train.cache`; this module only reads it (the builder in
`tinyclap.train.cache.build` writes it), so a training run imports no decoder, resampler or teacher code.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from tinyclap._util import JSONFileError, is_int_in, read_json
from tinyclap.train.cache.options import VIEW_MAX

FORMAT = "tinyclap-cache/1"
SPLITS = ("train", "val")
SHARD_RE = re.compile(r"^r(\d{2,})-(\d{5,})$")

PathLike = str | os.PathLike


class CacheError(ValueError):
    """A cache folder or shard that cannot be used; the message names the path and the problem."""



def shard_name(rank: int, idx: int) -> str:
    """Folder name of shard `idx` of `rank`: r00-00000."""
    return f"r{rank:02d}-{idx:05d}"


def read_config(root: PathLike) -> dict[str, Any]:
    """The parsed `cache.json` of a cache folder (checked for format and required keys)."""
    path = Path(root) / "cache.json"
    if not path.is_file():
        raise CacheError(
            f"{path}: not found ({Path(root)} is not a tinyclap cache; build one with tinyclap cache)"
        )
    try:
        config = read_json(path)  # bounded, finite numbers, an object
    except JSONFileError as e:
        raise CacheError(str(e)) from None
    if not isinstance(config, dict) or config.get("format") != FORMAT:
        got = config.get("format") if isinstance(config, dict) else type(config).__name__
        raise CacheError(f"{path}: format {got!r}, expected {FORMAT!r}")
    missing = [k for k in ("n_frames", "n_mels", "embed_dim", "teacher", "sample_rate") if k not in config]
    if missing:
        raise CacheError(f"{path}: missing keys {missing}")
    bounds = {"n_frames": 1 << 20, "n_mels": 4096, "embed_dim": 1 << 16, "sample_rate": 768_000}
    bad = {k: config[k] for k, hi in bounds.items() if not is_int_in(config[k], 1, hi)}
    if bad:
        raise CacheError(f"{path}: sizes out of range {bad} (bounds {bounds})")
    views = config.get("views", 0)
    if not is_int_in(views, 0, VIEW_MAX):
        raise CacheError(f"{path}: views {views!r} is not an integer in 0..{VIEW_MAX}")
    return config


def finished_shards(root: Path) -> list[tuple[int, int, Path]]:
    """(rank, idx, folder) of every finished shard, in (rank, idx) order; temp/corrupt folders excluded."""
    shards = root / "shards"
    if not shards.is_dir():
        return []
    out = []
    for entry in shards.iterdir():
        m = SHARD_RE.match(entry.name)
        if m and entry.is_dir():
            out.append((int(m.group(1)), int(m.group(2)), entry))
    return sorted(out)


@dataclass
class Shard:
    path: Path
    n: int
    splits: np.ndarray  # (n,) bool, True = val
    paths: list[str]  # (n,) source path per row (for resume and verify)
    views: np.ndarray  # (n,) int16 view of each row (0: the clean crop; none recorded: all 0)


def load_items(path: Path) -> list[dict[str, Any]]:
    file = path / "items.json"
    try:
        items = read_json(file, expect=list)
    except JSONFileError as e:
        raise CacheError(str(e)) from None
    if not isinstance(items, list) or not all(isinstance(it, dict) for it in items):
        raise CacheError(f"{file}: expected a JSON list of objects")
    return items


def load_array(file: Path, mmap: bool) -> np.ndarray:
    try:
        return np.load(file, mmap_mode="r" if mmap else None, allow_pickle=False)
    except (OSError, ValueError, EOFError) as e:  # missing, truncated (mmap larger than file), bad header
        raise CacheError(f"{file}: unreadable ({e})") from e


def open_shard(path: Path, n_frames: int, n_mels: int, embed_dim: int) -> Shard:
    """Check a finished shard's items and array headers (cheap: arrays are memory-mapped, not read)."""
    items = load_items(path)
    n = len(items)
    logmel = load_array(path / "logmel.npy", True)
    target = load_array(path / "target.npy", True)
    if logmel.dtype != np.float16 or logmel.shape != (n, n_frames, n_mels):
        raise CacheError(
            f"{path / 'logmel.npy'}: {logmel.dtype} {logmel.shape}, "
            f"expected float16 ({n}, {n_frames}, {n_mels})"
        )
    if target.dtype != np.float32 or target.shape != (n, embed_dim):
        raise CacheError(
            f"{path / 'target.npy'}: {target.dtype} {target.shape}, expected float32 ({n}, {embed_dim})"
        )
    try:
        splits = np.array([it["split"] == "val" for it in items], dtype=bool)
        paths = [str(it["path"]) for it in items]
        bad = [it["split"] for it in items if it["split"] not in SPLITS]
    except KeyError as e:
        raise CacheError(f"{path / 'items.json'}: a row has no {e} field") from e
    if bad:
        raise CacheError(f"{path / 'items.json'}: invalid split {bad[0]!r} (expected 'train' or 'val')")
    return Shard(path=path, n=n, splits=splits, paths=paths, views=_row_views(path, items))


def _row_views(path: Path, items: list[dict[str, Any]]) -> np.ndarray:
    """The view of each row, checked: an integer in 0..VIEW_MAX, a view v > 0 right after view v - 1 of the
    same (path, crop), so each (file, crop) is one run of rows starting with its clean row."""
    views = [it.get("view", 0) for it in items]
    for r, v in enumerate(views):
        if not is_int_in(v, 0, VIEW_MAX):
            raise CacheError(f"{path / 'items.json'}: row {r} has view {v!r}, not an integer in 0..{VIEW_MAX}")
        if v > 0 and (r == 0 or views[r - 1] != v - 1 or items[r - 1].get("path") != items[r].get("path")
                      or items[r - 1].get("crop") != items[r].get("crop")):  # fmt: skip
            raise CacheError(f"{path / 'items.json'}: row {r} (view {v}) does not follow view {v - 1} of its crop")
    return np.asarray(views, dtype=np.int16)


class CacheStore:
    """Read access to a cache folder: memory-mapped log-mels and targets, addressed by global row index.

    Rows are numbered across the finished shards in (rank, idx) order. Opening checks `cache.json` and each
    shard's items and array headers; `verify()` reads everything. The store pickles cheaply (DataLoader
    workers under spawn): the memory maps are dropped and reopened on first use.
    """

    def __init__(self, root: PathLike) -> None:
        self.root = Path(root)
        self.config: dict[str, Any] = read_config(self.root)
        self.embed_dim = int(self.config["embed_dim"])
        self.n_frames = int(self.config["n_frames"])
        self.n_mels = int(self.config["n_mels"])
        shards = [
            open_shard(p, self.n_frames, self.n_mels, self.embed_dim)
            for _, _, p in finished_shards(self.root)
        ]
        self.shard_paths: list[Path] = [s.path for s in shards]
        sizes = np.array([s.n for s in shards], dtype=np.int64)
        # row -> (shard, row within shard), as compact arrays: no per-row Python objects for workers to copy
        self._shard_of = np.repeat(np.arange(len(shards), dtype=np.int32), sizes)
        starts = np.concatenate([[0], np.cumsum(sizes)[:-1]]) if len(sizes) else np.zeros(0, np.int64)
        self._row_in = (np.arange(int(sizes.sum()), dtype=np.int64) - np.repeat(starts, sizes)).astype(
            np.int32
        )
        self._is_val = np.concatenate([s.splits for s in shards]) if shards else np.zeros(0, bool)
        self.views = int(self.config.get("views", 0))  # augmented views per (file, crop) of the train split
        self._view = np.concatenate([s.views for s in shards]) if shards else np.zeros(0, np.int16)
        self._mmaps: list[tuple[np.ndarray, np.ndarray] | None] = [None] * len(shards)
        self._items: list[dict[str, Any]] | None = None

    def identity(self) -> str:
        """SHA-256 naming what this cache holds, not where it is: `cache.json` (less the teacher's path, which
        may move) and every finished shard's name and items.json bytes. A cache rebuilt differently at the
        same path gets another identity; the same cache reached by another path keeps it."""
        import hashlib

        config = dict(self.config)
        if isinstance(config.get("teacher"), dict):
            config["teacher"] = {k: v for k, v in config["teacher"].items() if k != "path"}
        h = hashlib.sha256(json.dumps(config, sort_keys=True).encode())
        for path in self.shard_paths:
            h.update(f"|{path.name}|".encode())
            h.update(hashlib.sha256((path / "items.json").read_bytes()).digest())
        return h.hexdigest()

    def __len__(self) -> int:
        return int(self._shard_of.shape[0])

    def __repr__(self) -> str:
        n_val = int(self._is_val.sum())
        return (
            f"CacheStore({str(self.root)!r}, rows={len(self)} (train {len(self) - n_val}, val {n_val}), "
            f"shards={len(self.shard_paths)}, embed_dim={self.embed_dim})"
        )

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_mmaps"] = [None] * len(self.shard_paths)  # np.memmap would pickle as a full copy
        state["_items"] = None
        return state

    def _arrays(self, shard: int) -> tuple[np.ndarray, np.ndarray]:
        arrays = self._mmaps[shard]
        if arrays is None:
            path = self.shard_paths[shard]
            arrays = (load_array(path / "logmel.npy", True), load_array(path / "target.npy", True))
            self._mmaps[shard] = arrays
        return arrays

    def _locate(self, i: int) -> tuple[int, int]:
        n = len(self)
        if not -n <= i < n:
            raise IndexError(f"row {i} out of range for a cache of {n} rows")
        i %= n
        return int(self._shard_of[i]), int(self._row_in[i])

    @property
    def row_views(self) -> np.ndarray:
        """(rows,) int16: the view of each row, 0 = the clean crop, 1..views = its augmented views."""
        return self._view

    def indices(self, split: Literal["train", "val", "all"] = "all", view: int | None = None) -> np.ndarray:
        """Global row indices (int64, ascending) of a split: "train", "val" or "all"; only the rows of
        `view` when given (0: the clean rows, what a cache without views holds)."""
        if split not in (*SPLITS, "all"):
            raise ValueError(f"split must be 'train', 'val' or 'all', got {split!r}")
        keep = np.ones(len(self), bool) if split == "all" else self._is_val == (split == "val")
        if view is not None:
            keep &= self._view == view
        return np.flatnonzero(keep).astype(np.int64)

    def groups(self, split: Literal["train", "val", "all"] = "all") -> tuple[np.ndarray, np.ndarray]:
        """(first row, rows) of each (file, crop) of a split: its clean row and the views that follow it."""
        clean = np.flatnonzero(self._view == 0)
        ends = np.append(clean[1:], len(self))
        keep = np.isin(clean, self.indices(split))
        return clean[keep].astype(np.int64), (ends - clean)[keep].astype(np.int64)

    def logmel(self, i: int) -> np.ndarray:
        """Row i's log-mel: a read-only (n_frames, n_mels) float16 view into the memory map."""
        s, r = self._locate(i)
        return np.asarray(self._arrays(s)[0][r])

    def target(self, i: int) -> np.ndarray:
        """Row i's teacher embedding: a read-only (embed_dim,) float32 unit vector."""
        s, r = self._locate(i)
        return np.asarray(self._arrays(s)[1][r])

    @property
    def items(self) -> list[dict[str, Any]]:
        """Per-row metadata (path, rel, offset, crop, split, file), read from the shards on first access."""
        if self._items is None:
            self._items = [it for p in self.shard_paths for it in load_items(p)]
        return self._items

    def verify(self, tol: float = 1e-3) -> dict[str, int]:
        """Read every row: shapes, finite values, unit-norm targets, no file in both splits.

        Returns counts (rows, shards, train, val, files); raises CacheError listing the problems found.
        """
        problems: list[str] = []
        split_of: dict[str, str] = {}
        for k, path in enumerate(self.shard_paths):
            logmel, target = self._arrays(k)
            items = load_items(path)
            if len(items) != logmel.shape[0] or len(items) != target.shape[0]:
                problems.append(f"{path}: {len(items)} items but {logmel.shape[0]}/{target.shape[0]} rows")
                continue
            problems += _array_problems(path, logmel, target, tol)
            for it in items:
                prev = split_of.setdefault(str(it.get("path")), str(it.get("split")))
                if prev != it.get("split"):
                    problems.append(f"{path}: {it.get('path')} has crops in both splits")
                if it.get("split") == "val" and it.get("view", 0):
                    problems.append(f"{path}: {it.get('path')} is in the val split but has an augmented view")
        if problems:
            shown = "\n  ".join(problems[:20])
            more = f"\n  ... and {len(problems) - 20} more" if len(problems) > 20 else ""
            raise CacheError(f"{self.root}: cache verification failed:\n  {shown}{more}")
        n_val = int(self._is_val.sum())
        return {
            "rows": len(self),
            "shards": len(self.shard_paths),
            "train": len(self) - n_val,
            "val": n_val,
            "files": len(split_of),
        }


def _array_problems(path: Path, logmel: np.ndarray, target: np.ndarray, tol: float) -> list[str]:
    """What is wrong with one shard's arrays: non-finite log-mel rows, non-finite or non-unit targets."""
    problems = []
    for a in range(0, logmel.shape[0], 256):  # chunks: bounded memory on huge shards
        chunk = np.asarray(logmel[a : a + 256], dtype=np.float32)
        bad = ~np.isfinite(chunk).all(axis=(1, 2))
        if bad.any():
            problems.append(f"{path}: row {a + int(np.argmax(bad))} has a non-finite log-mel")
    if not np.isfinite(target).all():
        problems.append(f"{path}: non-finite values in target.npy")
    else:
        norms = np.linalg.norm(np.asarray(target, dtype=np.float64), axis=1)
        off = np.abs(norms - 1.0) > tol
        if off.any():
            j = int(np.argmax(off))
            problems.append(f"{path}: row {j} target norm {norms[j]:.6f} is not 1 (tolerance {tol})")
    return problems


class CachedDataset(torch.utils.data.Dataset):
    """(log-mel float16 (T, 64), target float32 (D,)) pairs of one split of a cache, memory-mapped.

    `__getitem__` is two memory-map reads and two copies (torch needs writable memory): no JSON, no
    decoding, so a DataLoader delivers far more clips/s than a training step consumes.

    Items are the clean rows (view 0) only, unless `views=True` on the train split of a cache built with
    `--views K`: then an item is a (file, crop) and each access draws one of its K + 1 rows (the clean crop
    or an augmented view, with the teacher's target of that view) uniformly with torch's global RNG, which
    a training stage seeds: an epoch is still one pass over the clips. Validation always uses view 0.
    """

    def __init__(
        self,
        store_or_dir: CacheStore | PathLike,
        split: Literal["train", "val", "all"] = "train",
        crop_frames: int | None = None,
        views: bool = False,
    ) -> None:
        self.store = store_or_dir if isinstance(store_or_dir, CacheStore) else CacheStore(store_or_dir)
        self.split = split
        self.views = bool(views) and split == "train" and self.store.views > 0
        # (n,) global row indices of the clean rows, and with views each one's number of rows (clean + views)
        self.rows, self.group_rows = self.store.groups(split) if self.views else (self.store.indices(split, 0), None)
        self.embed_dim = self.store.embed_dim
        self.n_frames = self.store.n_frames
        if crop_frames is not None and not 1 <= crop_frames:
            raise ValueError(f"crop_frames must be >= 1, got {crop_frames}")
        # shorter training crops (CPU budgets): None or >= n_frames keeps the whole cached crop
        self.crop_frames = None if crop_frames is None or crop_frames >= self.n_frames else int(crop_frames)

    def __len__(self) -> int:
        return int(self.rows.shape[0])

    def __getitem__(self, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        row = int(self.rows[k])
        if self.group_rows is not None and self.group_rows[k] > 1:  # one of the (file, crop)'s rows, uniformly
            row += int(torch.randint(0, int(self.group_rows[k]), ()).item())
        mel = self.store.logmel(row)  # (T, 64) float16, read-only view
        if self.crop_frames is not None:
            mel = mel[random_crop_start(mel, self.crop_frames) :][: self.crop_frames]  # (crop_frames, 64)
        logmel = torch.from_numpy(np.array(mel))  # (T or crop_frames, 64) float16
        target = torch.from_numpy(np.array(self.store.target(row)))  # (D,) float32
        return logmel, target


def random_crop_start(logmel: np.ndarray, crop_frames: int) -> int:
    """A random start frame for a `crop_frames` window of a cached (T, M) log-mel, inside its audio.

    The target stays the teacher's embedding of the whole cached crop (the student learns to predict it
    from a part of the clip). Frames of the zero padding after a short clip (every band at the log floor,
    the clip's minimum) are excluded where the clip is long enough, so a crop is never mostly silence that
    the teacher never heard as such. The draw uses torch's global RNG, which a training stage seeds.
    """
    frame_max = np.asarray(logmel, dtype=np.float32).max(axis=1)  # (T,)
    audible = np.flatnonzero(frame_max > float(frame_max.min()) + 1e-2)
    n_valid = int(audible[-1]) + 1 if audible.size else logmel.shape[0]
    hi = max(0, max(n_valid, crop_frames) - crop_frames)  # last allowed start
    hi = min(hi, logmel.shape[0] - crop_frames)
    return int(torch.randint(0, hi + 1, ()).item()) if hi > 0 else 0
