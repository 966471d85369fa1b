"""Distillation cache: fp16 log-mel crops + the frozen teacher's normalised embeddings, computed once.

tinyCLAP distils on audio only: the student learns to match the teacher's L2-normalised shared-space
embedding of the same 5 s crop. Decoding, resampling, the log-mel and the teacher are the expensive part
and never change between epochs, so `build_cache` (CLI: `tinyclap cache`) does them once and writes a
sharded, memory-mapped store; `CacheStore` / `CachedDataset` read it back with no decoding at all.

Store layout (`DIR` = the `--out` folder)
========================================

- `DIR/cache.json`: written first, before any shard::

      {"format": "tinyclap-cache/1",
       "teacher": {"kind", "path", "sha256", "sha256_of": "state_dict", "embed_dim", "sample_rate"},
       "frontend": LogMel().config(), "sample_rate": 44100, "clip_seconds": 5.0, "n_frames": 690,
       "n_mels": 64, "embed_dim": D, "crops_per_clip": K, "crop": "even" | "random",
       "val_fraction": f, "seed": s, "sources": [normalised specs]}

  `sha256` hashes the teacher's state dict (tensor names, dtypes, shapes and bytes), so the same weights
  give the same identity whether they came from an official `.pth` or one of our checkpoints. A rerun into
  the same DIR with different settings (anything but `teacher.path`) is refused unless `overwrite=True`.
- `DIR/shards/r{rank:02d}-{idx:05d}/`: one finished shard, holding whole files only (a file's crops never
  straddle two shards), about `shard_size` rows:
  - `logmel.npy`: (n, 690, 64) float16, the student's log-mel (MS CLAP 2022 front end) of each crop;
  - `target.npy`: (n, D) float32, the teacher's L2-normalised embedding of the same crop;
  - `items.json`: one dict per row: `path` (absolute source path), `rel` (path relative to its source
    root, which seeds the split), `offset` (crop start in seconds), `crop` (index of the crop within its
    file), `split` ("train" | "val") and `file` (index of the file in that run's de-duplicated list).
  A shard is written into `DIR/shards/.tmp-<name>-<pid>/` and renamed into place when complete, so a
  killed run loses at most the shard in flight; a rerun skips every file already in a finished shard
  (resume). A write error (disk full, permission denied) removes the temp folder and raises an OSError
  naming the shard. A finished shard that fails to open is moved aside to
  `DIR/shards/.corrupt-<name>-<time>/` and its files are computed again.
- `DIR/reports/r{rank:02d}.json` (each rank's last run) and `DIR/report.json` (their merge): files read,
  crops written, skipped files with the reason, stage timings and clips/s.

Crops, splits and ranks
=======================

Each unique source file (de-duplicated across specs by real path) is one item. A clip longer than 5 s at
44.1 kHz yields up to K = `crops_per_clip` non-overlapping crops (never more than fit): evenly spread
("even", deterministic; K = 1 is the centre crop, as `fit_clip(policy="eval")`) or at seeded random
non-overlapping offsets ("random", seeded by the seed and the file's `rel`, so reruns agree). Shorter clips
give one crop zero-padded at the end. The teacher sees the SAME crop (same start and duration): the
44.1 kHz crop itself, or that crop resampled with soxr to `teacher.sample_rate`.

The validation split is by source file: a file is "val" when the first 8 bytes of
sha256(f"{seed}:{rel}") read as a fraction fall below `val_fraction`, where `rel` is the file's path
relative to its spec's root (a folder spec: the folder; a manifest or dataset file: its folder; a single
file: its folder; a file outside that root: "<parent folder name>/<file name>"), so the split is stable
across reruns and machines. Under torchrun (`RANK`/`WORLD_SIZE`) rank r takes the files i with
i % world == r and writes its own `r{r}` shards; a gloo process group is created only when WORLD_SIZE > 1.

The log-mel is computed with `tinyclap.audio.frontend.FFTLogMel`, the FFT form of `LogMel` (the conv1d DFT kept
for ONNX export): the same values up to float rounding (<= 1e-3 dB above -90 dB, ~1e-2 dB near the -100 dB floor)
for several times less CPU, which matters here because the cache runs the front end over a whole corpus.
"""

from __future__ import annotations

import errno
import hashlib
import json
import math
import os
import re
import shutil
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import soxr
import torch
import torch.nn.functional as F
from torch import nn

from tinyclap._util import atomic_write_text, remove_stale_temps
from tinyclap.audio import CLIP_SAMPLES, CLIP_SECONDS, SAMPLE_RATE, AudioError, load_audio
from tinyclap.audio.frontend import FFTLogMel, LogMel

FORMAT = "tinyclap-cache/1"
SPLITS = ("train", "val")
CROP_MODES = ("even", "random")
_SHARD_RE = re.compile(r"^r(\d{2,})-(\d{5,})$")
# settings that may change between a run and its resume without changing what the store holds
_IGNORED_CONFIG = {("teacher", "path")}

PathLike = str | os.PathLike


class CacheError(ValueError):
    """A cache folder or shard that cannot be used; the message names the path and the problem."""


# ------------------------------------------------------------------------------------------------- reader


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
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CacheError(f"{path}: unreadable ({e})") from e
    if not isinstance(config, dict) or config.get("format") != FORMAT:
        got = config.get("format") if isinstance(config, dict) else type(config).__name__
        raise CacheError(f"{path}: format {got!r}, expected {FORMAT!r}")
    missing = [k for k in ("n_frames", "n_mels", "embed_dim", "teacher", "sample_rate") if k not in config]
    if missing:
        raise CacheError(f"{path}: missing keys {missing}")
    return config


def _finished_shards(root: Path) -> list[tuple[int, int, Path]]:
    """(rank, idx, folder) of every finished shard, in (rank, idx) order; temp/corrupt folders excluded."""
    shards = root / "shards"
    if not shards.is_dir():
        return []
    out = []
    for entry in shards.iterdir():
        m = _SHARD_RE.match(entry.name)
        if m and entry.is_dir():
            out.append((int(m.group(1)), int(m.group(2)), entry))
    return sorted(out)


@dataclass
class _Shard:
    path: Path
    n: int
    splits: np.ndarray  # (n,) bool, True = val
    paths: list[str]  # (n,) source path per row (for resume and verify)


def _load_items(path: Path) -> list[dict[str, Any]]:
    file = path / "items.json"
    try:
        items = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CacheError(f"{file}: unreadable ({e})") from e
    if not isinstance(items, list) or not all(isinstance(it, dict) for it in items):
        raise CacheError(f"{file}: expected a JSON list of objects")
    return items


def _load_array(file: Path, mmap: bool) -> np.ndarray:
    try:
        return np.load(file, mmap_mode="r" if mmap else None, allow_pickle=False)
    except (OSError, ValueError, EOFError) as e:  # missing, truncated (mmap larger than file), bad header
        raise CacheError(f"{file}: unreadable ({e})") from e


def _open_shard(path: Path, n_frames: int, n_mels: int, embed_dim: int) -> _Shard:
    """Check a finished shard's items and array headers (cheap: arrays are memory-mapped, not read)."""
    items = _load_items(path)
    n = len(items)
    logmel = _load_array(path / "logmel.npy", True)
    target = _load_array(path / "target.npy", True)
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
    return _Shard(path=path, n=n, splits=splits, paths=paths)


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
            _open_shard(p, self.n_frames, self.n_mels, self.embed_dim)
            for _, _, p in _finished_shards(self.root)
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
        self._mmaps: list[tuple[np.ndarray, np.ndarray] | None] = [None] * len(shards)
        self._items: list[dict[str, Any]] | None = None

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
            arrays = (_load_array(path / "logmel.npy", True), _load_array(path / "target.npy", True))
            self._mmaps[shard] = arrays
        return arrays

    def _locate(self, i: int) -> tuple[int, int]:
        n = len(self)
        if not -n <= i < n:
            raise IndexError(f"row {i} out of range for a cache of {n} rows")
        i %= n
        return int(self._shard_of[i]), int(self._row_in[i])

    def indices(self, split: Literal["train", "val", "all"] = "all") -> np.ndarray:
        """Global row indices (int64, ascending) of a split: "train", "val" or "all"."""
        if split == "all":
            return np.arange(len(self), dtype=np.int64)
        if split not in SPLITS:
            raise ValueError(f"split must be 'train', 'val' or 'all', got {split!r}")
        return np.flatnonzero(self._is_val == (split == "val")).astype(np.int64)

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
            self._items = [it for p in self.shard_paths for it in _load_items(p)]
        return self._items

    def verify(self, tol: float = 1e-3) -> dict[str, int]:
        """Read every row: shapes, finite values, unit-norm targets, no file in both splits.

        Returns counts (rows, shards, train, val, files); raises CacheError listing the problems found.
        """
        problems: list[str] = []
        split_of: dict[str, str] = {}
        for k, path in enumerate(self.shard_paths):
            logmel, target = self._arrays(k)
            items = _load_items(path)
            if len(items) != logmel.shape[0] or len(items) != target.shape[0]:
                problems.append(f"{path}: {len(items)} items but {logmel.shape[0]}/{target.shape[0]} rows")
                continue
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
            for it in items:
                prev = split_of.setdefault(str(it.get("path")), str(it.get("split")))
                if prev != it.get("split"):
                    problems.append(f"{path}: {it.get('path')} has crops in both splits")
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


class CachedDataset(torch.utils.data.Dataset):
    """(log-mel float16 (T, 64), target float32 (D,)) pairs of one split of a cache, memory-mapped.

    `__getitem__` is two memory-map reads and two copies (torch needs writable memory): no JSON, no
    decoding, so a DataLoader delivers far more clips/s than a training step consumes.
    """

    def __init__(
        self,
        store_or_dir: CacheStore | PathLike,
        split: Literal["train", "val", "all"] = "train",
        crop_frames: int | None = None,
    ) -> None:
        self.store = store_or_dir if isinstance(store_or_dir, CacheStore) else CacheStore(store_or_dir)
        self.split = split
        self.rows = self.store.indices(split)  # (n,) global row indices
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


# ---------------------------------------------------------------------------------------------- front end


# ------------------------------------------------------------------------------------------ crops, splits


def crop_starts(
    n: int,
    length: int = CLIP_SAMPLES,
    k: int = 1,
    mode: Literal["even", "random"] = "even",
    rng: np.random.Generator | None = None,
) -> list[int]:
    """Start samples of up to `k` non-overlapping `length`-sample crops of an `n`-sample clip.

    n <= length: [0] (the caller zero-pads). Otherwise min(k, n // length) crops: "even" spreads them from
    the start to the end (one crop = the centre crop); "random" places them uniformly at random without
    overlap (sorted gaps drawn from `rng`).
    """
    if mode not in CROP_MODES:
        raise ValueError(f"crop mode must be one of {CROP_MODES}, got {mode!r}")
    if k < 1 or length < 1:
        raise ValueError(f"need k >= 1 and length >= 1, got k={k}, length={length}")
    if n <= length:
        return [0]
    k = min(k, n // length)
    if mode == "even":
        if k == 1:
            return [(n - length) // 2]
        step = (n - length) / (k - 1)  # >= length because k <= n // length: crops never overlap
        return [int(math.floor(i * step)) for i in range(k)]
    rng = np.random.default_rng() if rng is None else rng
    slack = n - k * length  # free samples to distribute around the k crops
    gaps = np.sort(rng.integers(0, slack + 1, size=k))
    return [int(g) + i * length for i, g in enumerate(gaps)]


def _hash_fraction(*parts: str) -> float:
    digest = hashlib.sha256(":".join(parts).encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64


def split_of(rel: str, seed: int, val_fraction: float) -> str:
    """ "val" or "train" for a source file, from sha256(f"{seed}:{rel}"): stable across runs and machines."""
    return "val" if _hash_fraction(str(seed), rel) < val_fraction else "train"


def _crop_rng(rel: str, seed: int) -> np.random.Generator:
    digest = hashlib.sha256(f"crop:{seed}:{rel}".encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:8], "big"))


@dataclass(frozen=True)
class SourceFile:
    """One unique audio file to cache: its absolute path, the path relative to its source root, its index."""

    path: str
    rel: str
    index: int


def _rel(path: Path, root: Path) -> str:
    try:
        return path.relative_to(root).as_posix()
    except ValueError:  # listed by a manifest but stored elsewhere: keep what identifies it portably
        return f"{path.parent.name}/{path.name}"


def resolve_sources(paths_or_specs: Iterable[PathLike]) -> tuple[list[str], list[SourceFile]]:
    """Normalised source specs and the unique files they list (first occurrence wins, by real path).

    Each entry is an audio file path, or a data spec for `tinyclap.data.datasets.parse_data_spec`
    ("KIND:PATH", a folder, or a manifest file).
    """
    from tinyclap.data.datasets import AUDIO_EXTENSIONS, DATA_KINDS, parse_data_spec

    specs: list[str] = []
    files: list[SourceFile] = []
    seen: set[str] = set()
    entries = [paths_or_specs] if isinstance(paths_or_specs, (str, os.PathLike)) else list(paths_or_specs)
    if not entries:
        raise ValueError("no data given: pass audio files or data specs (KIND:PATH, a folder or a manifest)")
    for entry in entries:
        text = os.fspath(entry)
        plain = Path(os.path.abspath(os.path.expanduser(text)))
        if plain.is_file() and plain.suffix.lower() in AUDIO_EXTENSIONS:
            root, listed, norm = plain.parent, [plain], f"file:{plain}"
        else:
            kind, sep, rest = text.partition(":")
            target = rest if sep and kind.lower() in DATA_KINDS else text
            tpath = Path(os.path.abspath(os.path.expanduser(target)))
            root = tpath if tpath.is_dir() else tpath.parent
            norm = f"{kind.lower()}:{tpath}" if target is rest else str(tpath)
            listed = parse_data_spec(text)
        specs.append(norm)
        for p in listed:
            p = Path(os.path.abspath(p))
            real = os.path.realpath(p)
            if real in seen:
                continue
            seen.add(real)
            files.append(SourceFile(path=str(p), rel=_rel(p, root), index=len(files)))
    return specs, files


# ------------------------------------------------------------------------------------------------- writer


@dataclass
class CacheReport:
    """What one rank's `build_cache` run did (report.json merges all ranks)."""

    out: str
    rank: int = 0
    world_size: int = 1
    files_total: int = 0  # unique source files, all ranks
    files_assigned: int = 0  # this rank's share
    files_cached_before: int = 0  # already in finished shards (resumed)
    files_read: int = 0  # decoded and written by this run
    crops_written: int = 0
    shards_written: list[str] = field(default_factory=list)
    corrupt_shards: list[str] = field(default_factory=list)  # moved aside and recomputed
    skipped: list[dict[str, str]] = field(default_factory=list)  # {"path", "problem"}
    timings: dict[str, float] = field(default_factory=dict)  # seconds per stage, wall_s
    clips_per_s: float = 0.0
    teacher_input: str = ""  # "waveform" or "logmel" (CLAP teacher fed the shared front end)
    store_rows: int = 0  # rows in all finished shards after this run
    finished_at: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def summary(self) -> str:
        t = self.timings
        lines = [
            f"cache {self.out} (rank {self.rank}/{self.world_size}): {self.files_read} files read, "
            f"{self.crops_written} crops written in {len(self.shards_written)} shards, "
            f"{self.files_cached_before} files already cached, {len(self.skipped)} skipped",
            f"  {self.clips_per_s:.1f} clips/s; wall {t.get('wall_s', 0):.1f} s "
            f"(decode {t.get('decode_cpu_s', 0):.1f} cpu-s, log-mel {t.get('logmel_s', 0):.1f} s, "
            f"teacher {t.get('teacher_s', 0):.1f} s, "
            f"write {t.get('write_s', 0):.1f} s); store now holds {self.store_rows} rows",
        ]
        lines += [f"  skipped {s['path']}: {s['problem']}" for s in self.skipped[:20]]
        if len(self.skipped) > 20:
            lines.append(f"  ... and {len(self.skipped) - 20} more (see report.json)")
        return "\n".join(lines)


class _DecodeSet(torch.utils.data.Dataset):
    """Worker side: decode one file at 44.1 kHz, cut its crops, resample them for the teacher if needed."""

    def __init__(self, files: Sequence[SourceFile], k: int, crop: str, seed: int, teacher_rate: int) -> None:
        self.files, self.k, self.crop, self.seed, self.teacher_rate = list(files), k, crop, seed, teacher_rate

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, j: int) -> dict[str, Any]:
        src = self.files[j]
        t0 = time.perf_counter()
        try:
            wave = load_audio(src.path, SAMPLE_RATE)  # (N,) float32 at 44.1 kHz
            rng = _crop_rng(src.rel, self.seed) if self.crop == "random" else None
            starts = crop_starts(wave.shape[0], CLIP_SAMPLES, self.k, self.crop, rng)  # type: ignore[arg-type]
            crops = np.zeros((len(starts), CLIP_SAMPLES), dtype=np.float32)  # (k, L), zero-padded short clips
            for i, s in enumerate(starts):
                piece = wave[s : s + CLIP_SAMPLES]
                crops[i, : piece.shape[0]] = piece
            teacher = None
            if self.teacher_rate != SAMPLE_RATE:
                # the same crops at the teacher's rate: soxr takes (frames, channels), one channel per crop
                teacher = soxr.resample(
                    np.ascontiguousarray(crops.T), SAMPLE_RATE, self.teacher_rate, quality="HQ"
                )
                teacher = torch.from_numpy(np.ascontiguousarray(teacher.T, dtype=np.float32))  # (k, L_t)
        except AudioError as e:
            return {"index": j, "error": e.problem, "seconds": time.perf_counter() - t0}
        except (OSError, ValueError, RuntimeError, MemoryError) as e:  # never let one file end a long run
            return {
                "index": j,
                "error": f"decode failed ({type(e).__name__}: {e})",
                "seconds": time.perf_counter() - t0,
            }
        return {
            "index": j,
            "error": None,
            "crops": torch.from_numpy(crops),
            "teacher": teacher,
            "offsets": [s / SAMPLE_RATE for s in starts],
            "seconds": time.perf_counter() - t0,
        }


def _keep(item: Any) -> Any:  # DataLoader collate for batch_size=None: pass items through untouched
    return item


def state_sha256(model: Any) -> str | None:
    """sha256 over a module's state dict (names, dtypes, shapes, bytes), None if it has none."""
    if not isinstance(model, nn.Module):
        return None
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        t = t.detach().to("cpu").contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        if t.numel():
            h.update(t.reshape(-1).view(torch.uint8).numpy())  # the raw bytes, without a copy
    return h.hexdigest()


def _teacher_info(teacher: Any, spec: PathLike | None) -> dict[str, Any]:
    return {
        "kind": type(teacher).__name__,
        "path": os.path.abspath(os.fspath(spec)) if spec is not None and os.path.exists(spec) else None,
        "sha256": state_sha256(teacher),
        "sha256_of": "state_dict",
        "embed_dim": int(teacher.embed_dim),
        "sample_rate": int(teacher.sample_rate),
    }


def _config_diff(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    diffs = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            for sub in sorted(set(a) | set(b)):
                if (key, sub) not in _IGNORED_CONFIG and a.get(sub) != b.get(sub):
                    diffs.append(f"{key}.{sub}: {a.get(sub)!r} -> {b.get(sub)!r}")
        elif a != b:
            diffs.append(f"{key}: {str(a)[:80]} -> {str(b)[:80]}")
    return diffs


_OURS = ("cache.json", "shards", "reports", "report.json", ".lock")


def _our_temp(name: str) -> bool:
    """An orphan temp file of an atomic write of one of our top-level files (`.cache.json.<8>.tmp`)."""
    return name.endswith(".tmp") and any(name.startswith(f".{ours}.") for ours in _OURS)


def _prepare_dir(out: Path, config: dict[str, Any], overwrite: bool) -> None:
    """Write cache.json in a new/empty folder, accept an identical one, refuse anything else."""
    cfg_path = out / "cache.json"
    if out.exists() and not out.is_dir():
        raise CacheError(f"{out}: exists and is not a folder")
    if not cfg_path.exists() and out.is_dir():
        # a run killed while writing cache.json or report.json leaves an orphan temp file: ours, not foreign
        foreign = sorted(p.name for p in out.iterdir() if p.name not in _OURS and not _our_temp(p.name))
        if foreign:
            raise CacheError(
                f"{out}: folder is not empty and holds no cache.json ({', '.join(foreign[:5])}); "
                "choose a new or empty --out folder"
            )
    if cfg_path.exists():
        try:
            old = read_config(out)
        except CacheError:
            if not overwrite:
                raise
            old = None
        diffs = _config_diff(old, config) if old is not None else ["unreadable cache.json"]
        if not diffs:
            return
        if not overwrite:
            raise CacheError(
                f"{out}: holds a cache built with different settings ({'; '.join(diffs[:6])}); "
                "use a new --out folder, or --overwrite to delete it and start again"
            )
        for name in ("shards", "reports"):
            shutil.rmtree(out / name, ignore_errors=True)
        for name in ("report.json", "cache.json"):
            (out / name).unlink(missing_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(cfg_path, json.dumps(config, indent=2) + "\n")


def _scan_done(out: Path, config: dict[str, Any], report: CacheReport) -> set[str]:
    """Paths already in finished shards; a shard that fails to open is moved aside (its files redone)."""
    done: set[str] = set()
    for _, _, path in _finished_shards(out):
        try:
            shard = _open_shard(
                path, int(config["n_frames"]), int(config["n_mels"]), int(config["embed_dim"])
            )
        except CacheError as e:
            aside = path.parent / f".corrupt-{path.name}-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}"
            try:
                path.rename(aside)
            except FileNotFoundError:  # another rank moved it first
                continue
            report.corrupt_shards.append(f"{path.name}: {e}")
            print(
                f"tinyclap cache: shard {path.name} is unusable ({e}); moved to {aside.name}, recomputing it",
                file=sys.stderr,
            )
            continue
        done.update(shard.paths)
    return done


def _write_shard(
    out: Path, name: str, logmel: np.ndarray, target: np.ndarray, items: list[dict[str, Any]]
) -> Path:
    """Write a shard into a temp folder, fsync it, rename it into place (atomic on one filesystem)."""
    shards = out / "shards"
    tmp = shards / f".tmp-{name}-{os.getpid()}"
    final = shards / name
    shutil.rmtree(tmp, ignore_errors=True)
    fname = "the temp folder"
    try:
        tmp.mkdir(parents=True)
        for fname, arr in (("logmel.npy", logmel), ("target.npy", target)):
            with open(tmp / fname, "wb") as f:
                np.save(f, arr, allow_pickle=False)
                f.flush()
                os.fsync(f.fileno())
        fname = "items.json"
        with open(tmp / fname, "w", encoding="utf-8") as f:
            json.dump(items, f)
            f.flush()
            os.fsync(f.fileno())
    except BaseException as e:
        # a full disk or a permission error must not leave a half-written shard folder (of up to GBs) behind
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(e, OSError):
            raise OSError(
                e.errno,
                f"{e.strerror or e}; could not write {fname} of cache shard {name} (finished shards are "
                "intact; a rerun resumes)",
                str(final),
            ) from e
        raise
    try:
        os.rename(tmp, final)
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        if e.errno in (errno.EEXIST, errno.ENOTEMPTY):  # the shard exists: someone else wrote it
            raise CacheError(
                f"{final}: cannot move the finished shard into place ({e}); "
                "is another run using the same rank?"
            ) from e
        raise OSError(
            e.errno, f"{e.strerror or e}; could not move cache shard {name} into place", str(final)
        ) from e
    return final


def _merge_reports(out: Path, world_size: int, store_rows: int) -> dict[str, Any]:
    """report.json = the ranks' reports (reports/rNN.json) with totals, rewritten under a file lock."""
    ranks = []
    for r in range(world_size):
        p = out / "reports" / f"r{r:02d}.json"
        if p.is_file():
            try:
                ranks.append(json.loads(p.read_text(encoding="utf-8")))
            except (OSError, json.JSONDecodeError):
                continue
    keys = ("files_assigned", "files_cached_before", "files_read", "crops_written")
    merged: dict[str, Any] = {k: sum(int(r.get(k, 0)) for r in ranks) for k in keys}
    merged.update(
        out=str(out),
        world_size=world_size,
        files_total=max((int(r.get("files_total", 0)) for r in ranks), default=0),
        ranks_missing=sorted(set(range(world_size)) - {int(r.get("rank", -1)) for r in ranks}),
        skipped=[s for r in ranks for s in r.get("skipped", [])],
        clips_per_s=sum(float(r.get("clips_per_s", 0.0)) for r in ranks),
        store_rows=store_rows,
        ranks=ranks,
    )
    atomic_write_text(out / "report.json", json.dumps(merged, indent=2) + "\n")
    return merged


class _FileLock:
    """An advisory lock on DIR/.lock (POSIX flock; a no-op where fcntl does not exist)."""

    def __init__(self, path: Path) -> None:
        self.path, self.fd = path, None

    def __enter__(self) -> _FileLock:
        try:
            import fcntl
        except ImportError:  # pragma: no cover - Windows
            return self
        self.fd = os.open(self.path, os.O_CREAT | os.O_RDWR)
        fcntl.flock(self.fd, fcntl.LOCK_EX)
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.fd is not None:
            os.close(self.fd)  # closing releases the flock


def _resolve_device(device: str | torch.device, world_size: int) -> torch.device:
    if str(device) == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    dev = torch.device(device)
    if dev.type == "cuda" and dev.index is None and world_size > 1:
        dev = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return dev


def _module_device(model: Any) -> torch.device | None:
    if isinstance(model, nn.Module):
        for t in model.parameters():
            return t.device
        for t in model.buffers():
            return t.device
    return None


def _logmel_teacher(teacher: Any) -> bool:
    """True when the teacher's own front end is our student log-mel at 44.1 kHz (the CLAP teacher): then
    it is fed the log-mel we compute anyway instead of recomputing it from the waveform."""
    frontend = getattr(teacher, "frontend", None)
    return (
        callable(getattr(teacher, "encode_audio", None))
        and int(teacher.sample_rate) == SAMPLE_RATE
        and callable(getattr(frontend, "config", None))
        and frontend.config() == LogMel().config()
    )


def build_cache(
    teacher: Any,
    paths_or_specs: Iterable[PathLike] | PathLike,
    out: PathLike,
    *,
    crops_per_clip: int = 1,
    val_fraction: float = 0.1,
    seed: int = 1234,
    batch_size: int = 32,
    workers: int = 2,
    shard_size: int = 512,
    device: str | torch.device = "cpu",
    progress: bool = True,
    strict: bool = False,
    crop: Literal["even", "random"] = "even",
    overwrite: bool = False,
    rank: int | None = None,
    world_size: int | None = None,
    on_shard: Callable[[Path], None] | None = None,
) -> CacheReport:
    """Decode, crop, log-mel and embed every source file once, into the store at `out` (see module doc).

    `teacher` is a model with `embed_waveform`, `sample_rate` and `embed_dim`, or a spec for
    `tinyclap.models.load_model` (checkpoint path / run folder). A module teacher is moved to `device` and
    run in eval mode; both are restored afterwards. `rank`/`world_size` default to the RANK/WORLD_SIZE
    environment (torchrun), where a gloo process group is created if WORLD_SIZE > 1 and none exists.
    Unreadable files are skipped and reported; with `strict=True` a CacheError is raised at the end if any
    was (the store and report are written first). `on_shard(path)` is called after each finished shard.
    Returns this rank's report.
    """
    if crops_per_clip < 1 or batch_size < 1 or shard_size < 1 or workers < 0:
        raise ValueError(
            f"need crops_per_clip, batch_size, shard_size >= 1 and workers >= 0, got {crops_per_clip}, "
            f"{batch_size}, {shard_size}, {workers}"
        )
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    if crop not in CROP_MODES:
        raise ValueError(f"crop must be one of {CROP_MODES}, got {crop!r}")
    from_env = rank is None and world_size is None
    rank = int(os.environ.get("RANK", "0")) if rank is None else int(rank)
    world_size = int(os.environ.get("WORLD_SIZE", "1")) if world_size is None else int(world_size)
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is not in 0..{world_size - 1}")
    out = Path(os.path.abspath(os.fspath(out)))

    group = None
    import torch.distributed as dist

    if from_env and world_size > 1 and dist.is_available() and not dist.is_initialized():
        # gloo even on GPUs: the ranks only exchange one small object at start-up
        dist.init_process_group("gloo", rank=rank, world_size=world_size)
        group = dist.group.WORLD
    try:
        return _build(
            teacher,
            paths_or_specs,
            out,
            crops_per_clip=crops_per_clip,
            val_fraction=val_fraction,
            seed=seed,
            batch_size=batch_size,
            workers=workers,
            shard_size=shard_size,
            device=device,
            progress=progress,
            strict=strict,
            crop=crop,
            overwrite=overwrite,
            rank=rank,
            world_size=world_size,
            on_shard=on_shard,
            distributed=dist.is_available() and dist.is_initialized() and world_size > 1,
        )
    finally:
        if group is not None:
            dist.destroy_process_group()


def _build(
    teacher: Any,
    paths_or_specs: Iterable[PathLike] | PathLike,
    out: Path,
    *,
    crops_per_clip: int,
    val_fraction: float,
    seed: int,
    batch_size: int,
    workers: int,
    shard_size: int,
    device: str | torch.device,
    progress: bool,
    strict: bool,
    crop: str,
    overwrite: bool,
    rank: int,
    world_size: int,
    on_shard: Callable[[Path], None] | None,
    distributed: bool,
) -> CacheReport:
    t_start = time.perf_counter()
    spec = None
    if isinstance(teacher, (str, os.PathLike)):
        from tinyclap.models import load_model

        spec, teacher = teacher, load_model(teacher)
    for attr in ("embed_waveform", "sample_rate", "embed_dim"):
        if not hasattr(teacher, attr):
            raise TypeError(f"the teacher ({type(teacher).__name__}) has no {attr!r}; need an AudioEmbedder")
    specs, files = resolve_sources(paths_or_specs)
    frontend = LogMel()
    config = {
        "format": FORMAT,
        "teacher": _teacher_info(teacher, spec),
        "frontend": frontend.config(),
        "sample_rate": SAMPLE_RATE,
        "clip_seconds": CLIP_SECONDS,
        "n_frames": frontend.n_frames(CLIP_SAMPLES),
        "n_mels": frontend.n_mels,
        "embed_dim": int(teacher.embed_dim),
        "crops_per_clip": int(crops_per_clip),
        "crop": crop,
        "val_fraction": float(val_fraction),
        "seed": int(seed),
        "sources": specs,
    }

    # cache.json: rank 0 decides (and overwrites); the others wait for its verdict, then check for themselves
    if distributed:
        import torch.distributed as dist

        verdict: list[str | None] = [None]
        if rank == 0:
            try:
                _prepare_dir(out, config, overwrite)
            except CacheError as e:
                verdict[0] = str(e)
        dist.broadcast_object_list(verdict, src=0)
        if verdict[0] is not None:
            raise CacheError(verdict[0])
        if rank != 0:
            _prepare_dir(out, config, overwrite=False)
    else:
        if overwrite and world_size > 1:
            raise CacheError(f"{out}: --overwrite with several ranks needs torchrun (a process group)")
        _prepare_dir(out, config, overwrite)

    report = CacheReport(out=str(out), rank=rank, world_size=world_size, files_total=len(files))
    shards_dir = out / "shards"
    shards_dir.mkdir(parents=True, exist_ok=True)
    for tmp in shards_dir.glob(f".tmp-r{rank:02d}-*"):  # a killed run's shard in flight
        shutil.rmtree(tmp, ignore_errors=True)
    remove_stale_temps(out / "reports", [f"r{rank:02d}.json"])  # this rank's own report, killed mid-write
    done = _scan_done(out, config, report)
    mine = [f for f in files if f.index % world_size == rank]
    todo = [f for f in mine if f.path not in done]
    report.files_assigned = len(mine)
    report.files_cached_before = len(mine) - len(todo)
    next_idx = 1 + max((i for r, i, _ in _finished_shards(out) if r == rank), default=-1)

    dev = _resolve_device(device, world_size)
    fft_logmel = FFTLogMel(frontend).to(dev)
    # a module teacher runs on `dev` in eval mode; remember its device and flags to restore them afterwards
    orig_device = _module_device(teacher)
    orig_flags = [(m, m.training) for m in teacher.modules()] if isinstance(teacher, nn.Module) else []
    if isinstance(teacher, nn.Module):
        teacher.to(dev).eval()
    use_logmel = _logmel_teacher(teacher)
    report.teacher_input = "logmel" if use_logmel else "waveform"
    timings = {"decode_cpu_s": 0.0, "logmel_s": 0.0, "teacher_s": 0.0, "write_s": 0.0}

    # computed files waiting for a shard: (log-mel (k, T, 64) f16, target (k, D) f32, k item dicts) each
    buffer: list[tuple[np.ndarray, np.ndarray, list[dict[str, Any]]]] = []
    pending: list[tuple[SourceFile, dict[str, Any]]] = []

    def compute(batch_files: list[tuple[SourceFile, dict[str, Any]]]) -> None:
        """Log-mel + teacher for the pending files' crops, in chunks of batch_size; rows go to the buffer."""
        waves = torch.cat([d["crops"] for _, d in batch_files])  # (n, L) at 44.1 kHz
        t_waves = (
            None
            if use_logmel or batch_files[0][1]["teacher"] is None
            else torch.cat([d["teacher"] for _, d in batch_files])
        )  # (n, L_t) at the teacher's rate
        mels, tgts = [], []
        for a in range(0, waves.shape[0], batch_size):
            t0 = time.perf_counter()
            x = waves[a : a + batch_size].to(dev, non_blocking=True)  # (B, L)
            logmel = fft_logmel(x)  # (B, T, 64) float32
            mels.append(logmel.half().cpu().numpy())
            t1 = time.perf_counter()
            if use_logmel:
                emb = teacher.encode_audio(logmel)
            else:
                xt = x if t_waves is None else t_waves[a : a + batch_size].to(dev, non_blocking=True)
                emb = teacher.embed_waveform(xt)
            tgts.append(F.normalize(emb.float(), dim=-1).cpu().numpy())  # (B, D)
            t2 = time.perf_counter()
            timings["logmel_s"] += t1 - t0
            timings["teacher_s"] += t2 - t1
        mel_all, tgt_all = np.concatenate(mels), np.concatenate(tgts)
        row = 0
        for src, d in batch_files:
            k = d["crops"].shape[0]
            m, t = mel_all[row : row + k], tgt_all[row : row + k]
            row += k
            if not (np.isfinite(m).all() and np.isfinite(t).all()):
                report.skipped.append(
                    {"path": src.path, "problem": "non-finite log-mel or teacher embedding"}
                )
                continue
            if np.any(np.abs(np.linalg.norm(t, axis=1) - 1.0) > 1e-3):
                problem = "teacher embedding is not unit-norm (zero vector?)"
                report.skipped.append({"path": src.path, "problem": problem})
                continue
            split = split_of(src.rel, seed, val_fraction)
            keys = ("path", "rel", "offset", "crop", "split", "file")
            items = [
                dict(zip(keys, (src.path, src.rel, off, j, split, src.index)))
                for j, off in enumerate(d["offsets"])
            ]
            buffer.append((m, t, items))
            report.files_read += 1
            report.crops_written += k

    def flush(final: bool) -> None:
        """Write shards of >= shard_size rows (whole files only) while the buffer has them; all if final."""
        nonlocal next_idx
        while buffer:
            rows = np.cumsum([len(b[2]) for b in buffer])
            if rows[-1] < shard_size and not final:
                return
            take = int(np.searchsorted(rows, shard_size)) + 1  # fewest whole files reaching shard_size
            chunk, buffer[:] = buffer[:take], buffer[take:]
            t0 = time.perf_counter()
            name = shard_name(rank, next_idx)
            path = _write_shard(
                out,
                name,
                np.concatenate([b[0] for b in chunk]),
                np.concatenate([b[1] for b in chunk]),
                [it for b in chunk for it in b[2]],
            )
            next_idx += 1
            report.shards_written.append(name)
            timings["write_s"] += time.perf_counter() - t0
            if on_shard is not None:
                on_shard(path)

    from tqdm import tqdm

    teacher_rate = SAMPLE_RATE if use_logmel else int(teacher.sample_rate)
    loader = torch.utils.data.DataLoader(
        _DecodeSet(todo, crops_per_clip, crop, seed, teacher_rate),
        batch_size=None,
        shuffle=False,
        num_workers=workers if todo else 0,
        collate_fn=_keep,
        pin_memory=dev.type == "cuda",
    )
    bar = tqdm(
        total=len(todo),
        desc=f"cache r{rank}",
        unit="file",
        disable=not progress or rank != 0,
        file=sys.stderr,
    )
    try:
        with torch.inference_mode():
            n_pending = 0
            for d in loader:
                src = todo[d["index"]]
                timings["decode_cpu_s"] += float(d["seconds"])
                bar.update(1)
                if d["error"] is not None:
                    report.skipped.append({"path": src.path, "problem": d["error"]})
                    continue
                pending.append((src, d))
                n_pending += d["crops"].shape[0]
                if n_pending >= batch_size:
                    compute(pending)
                    pending.clear()
                    n_pending = 0
                    flush(final=False)
                    wall = time.perf_counter() - t_start
                    bar.set_postfix(
                        {"clips/s": f"{report.crops_written / max(wall, 1e-9):.1f}"}, refresh=False
                    )
            if pending:
                compute(pending)
                pending.clear()
            flush(final=True)
    finally:
        bar.close()
        if isinstance(teacher, nn.Module):
            for m, flag in orig_flags:
                m.training = flag
            if orig_device is not None and spec is None:  # the caller's object goes back where it was
                teacher.to(orig_device)

    timings["wall_s"] = time.perf_counter() - t_start
    report.timings = {k: round(v, 4) for k, v in timings.items()}
    report.clips_per_s = report.crops_written / max(timings["wall_s"], 1e-9)
    report.finished_at = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    with _FileLock(out / ".lock"):
        # orphan temp files of killed runs' report/config writes (report.json is only written under the lock;
        # cache.json only when a run starts, when no rank can be finishing)
        remove_stale_temps(out, ["report.json", "cache.json"])
        try:
            report.store_rows = len(CacheStore(out))
        except CacheError as e:  # e.g. a shard damaged meanwhile: still write the report, say so
            report.store_rows = -1
            print(f"tinyclap cache: the store does not open: {e}", file=sys.stderr)
        atomic_write_text(
            out / "reports" / f"r{rank:02d}.json", json.dumps(report.to_dict(), indent=2) + "\n"
        )
        _merge_reports(out, world_size, report.store_rows)
    if strict and report.skipped:
        first = report.skipped[0]
        raise CacheError(
            f"{len(report.skipped)} file(s) could not be cached (strict), "
            f"e.g. {first['path']}: {first['problem']}"
        )
    return report
