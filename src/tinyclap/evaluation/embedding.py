"""Deterministic clip embedding for evaluation and classification (no random crops, ever), and the
on-disk cache of a dataset's embeddings.

One clip: `clip_windows` (all 5 s windows of a long clip, or its centre crop) and `embed_clip` (the
renormalised mean of the window embeddings). A student with a pool window (`StudentEmbedder.pool_window`)
embeds each 5 s window from its shorter pooled windows; the cache key records it. Many files:
`embed_files`, the one "embed these files, skip bad ones" function (windows of several clips batched
together, decoding in threads ahead of the model). A dataset: `embed_dataset`, which caches per (model
weights, dataset, clip list, long-clip mode) as `.npy` + `.json` under `default_cache_dir()`.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import sys
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F

from tinyclap._util import atomic_write_bytes, atomic_write_text, read_json
from tinyclap._util import progress as progress_bar
from tinyclap.audio import AudioError, eval_windows, fit_clip, load_audio

__all__ = [
    "EMBED_CACHE_VERSION",
    "LONG_CLIP_MODES",
    "BatchResult",
    "Embedded",
    "clip_windows",
    "default_cache_dir",
    "embed_clip",
    "embed_dataset",
    "embed_files",
    "embed_waves",
]

LongClip = Literal["windows", "centre"]
LONG_CLIP_MODES = ("windows", "centre")

# Bump when the way clips become embeddings changes, so old cache entries are never reused.
EMBED_CACHE_VERSION = 1


def clip_windows(
    wave: np.ndarray, sample_rate: int, clip_seconds: float = 5.0, mode: LongClip = "windows"
) -> np.ndarray:
    """(N,) waveform -> (K, L) deterministic windows: all windows of a long clip, or its centre crop."""
    length = int(round(clip_seconds * sample_rate))
    if mode == "windows":
        return eval_windows(wave, length)
    if mode == "centre":
        return fit_clip(wave, length, policy="eval")[None]
    raise ValueError(f"long-clip mode must be one of {LONG_CLIP_MODES}, got {mode!r}")


@torch.no_grad()
def embed_waves(
    model: Any, windows: np.ndarray, batch_size: int = 16, device: str | torch.device = "cpu"
) -> torch.Tensor:
    """(K, L) windows -> (K, D) normalised embeddings, in batches."""
    out = []
    for i in range(0, len(windows), batch_size):
        x = torch.from_numpy(np.ascontiguousarray(windows[i : i + batch_size])).to(device)
        out.append(model.embed_waveform(x).float().cpu())
    return torch.cat(out)


@torch.no_grad()
def embed_clip(
    model: Any,
    wave: np.ndarray,
    mode: LongClip = "windows",
    clip_seconds: float = 5.0,
    batch_size: int = 16,
    device: str | torch.device = "cpu",
) -> torch.Tensor:
    """One clip -> one normalised (D,) embedding: the renormalised mean of its window embeddings."""
    win = clip_windows(wave, model.sample_rate, clip_seconds, mode)
    return F.normalize(embed_waves(model, win, batch_size, device).mean(0), dim=-1)


# --------------------------------------------------------------------------------------------- many files


@dataclass
class BatchResult:
    """Embeddings of the files that worked, and (path, reason) for those that did not.

    `kept[j]` is the index in the input list of the file whose embedding is row j (and whose path is
    `paths[j]`)."""

    paths: list[str] = field(default_factory=list)
    embeddings: torch.Tensor | None = None  # (n_ok, D) float32, rows L2-normalised
    failed: list[tuple[str, str]] = field(default_factory=list)
    kept: list[int] = field(default_factory=list)


def _prefetch(fn: Callable[[Any], Any], items: Sequence[Any], workers: int) -> Iterator[Any]:
    """fn(item) for each item, in order, computed `workers` at a time ahead of the consumer.

    Decoding and resampling run in threads (libsndfile and soxr release the GIL) while the model runs.
    """
    if workers <= 1:
        yield from map(fn, items)
        return
    with ThreadPoolExecutor(max_workers=workers) as pool:
        it = iter(items)
        pending: deque = deque(pool.submit(fn, x) for _, x in zip(range(2 * workers), it))
        while pending:
            res = pending.popleft().result()
            nxt = next(it, _END)
            if nxt is not _END:
                pending.append(pool.submit(fn, nxt))
            yield res


_END = object()


def _model_device(model: Any) -> torch.device:
    if isinstance(model, torch.nn.Module):
        p = next(model.parameters(), None)
        if p is not None:
            return p.device
    return torch.device("cpu")


class _WindowBatcher:
    """Collects the (K, L) windows of several clips, runs them through the model `batch_size` at a time and
    keeps each clip's window embeddings."""

    def __init__(self, model: Any, batch_size: int, device: torch.device) -> None:
        self.model, self.batch_size, self.device = model, batch_size, device
        self.queue: list[tuple[int, np.ndarray]] = []  # (clip index, (K, L) windows) waiting for a batch
        self.n_queued = 0
        self.parts: dict[int, list[torch.Tensor]] = {}

    def add(self, idx: int, windows: np.ndarray) -> None:
        self.queue.append((idx, windows))
        self.n_queued += len(windows)
        if self.n_queued >= self.batch_size:
            self.flush()

    @torch.no_grad()
    def flush(self) -> None:
        if not self.queue:
            return
        x = torch.from_numpy(np.concatenate([w for _, w in self.queue])).to(self.device)  # (sum K, L)
        bs = self.batch_size
        e = torch.cat([self.model.embed_waveform(x[i : i + bs]).float().cpu() for i in range(0, len(x), bs)])
        start = 0
        for idx, w in self.queue:  # e: (sum K, D)
            self.parts.setdefault(idx, []).append(e[start : start + len(w)])
            start += len(w)
        self.queue.clear()
        self.n_queued = 0

    def clip(self, idx: int) -> torch.Tensor:
        """A clip's (D,) embedding: the renormalised mean of its window embeddings (as `embed_clip`)."""
        return F.normalize(torch.cat(self.parts.pop(idx)).mean(0), dim=-1)


def embed_files(
    model: Any,
    paths: Sequence[str | os.PathLike],
    mode: LongClip = "windows",
    clip_seconds: float = 5.0,
    progress: bool = False,
    device: str | torch.device | None = None,
    *,
    batch_size: int = 16,
    workers: int | None = None,
) -> BatchResult:
    """Embed many files; a file that cannot be read is skipped and reported in `failed`, never fatal.

    Windows of several clips are batched together (`batch_size` windows per forward pass) while `workers`
    threads decode ahead (default min(4, CPUs)). The model runs on `device` (default: where its parameters
    are), in eval mode for the call.
    """
    sr = int(model.sample_rate)
    dev = torch.device(device) if device is not None else _model_device(model)
    n_workers = workers if workers is not None else min(4, os.cpu_count() or 1)

    def load(path: str | os.PathLike) -> tuple[np.ndarray | None, str | None]:
        try:
            return clip_windows(load_audio(path, sr), sr, clip_seconds, mode), None  # (K, L)
        except AudioError as e:
            return None, e.problem

    res, batcher = BatchResult(), _WindowBatcher(model, batch_size, dev)
    was_training = isinstance(model, torch.nn.Module) and model.training
    if isinstance(model, torch.nn.Module):
        model.eval()
    try:
        with progress_bar(total=len(paths), desc="embed", unit="clip", enabled=progress) as bar:
            for i, (wins, problem) in enumerate(_prefetch(load, paths, n_workers)):
                bar.update(1)
                if wins is None:
                    res.failed.append((os.fsdecode(paths[i]), str(problem)))
                    continue
                res.kept.append(i)
                batcher.add(i, wins)
            batcher.flush()
    finally:
        if was_training:
            model.train()
    res.paths = [os.fsdecode(paths[i]) for i in res.kept]
    rows = [batcher.clip(i) for i in res.kept]
    res.embeddings = torch.stack(rows) if rows else torch.zeros(0, int(model.embed_dim))
    return res


# --------------------------------------------------------------------------------------------- datasets


@dataclass
class Embedded:
    """Result of `embed_dataset`; unpacks as `(embeddings, kept, failed)`."""

    embeddings: torch.Tensor  # (n_kept, D) float32, rows L2-normalised
    kept: list[int]  # indices into dataset.items of the clips that were embedded
    failed: list[tuple[str, str]]  # (path, reason) of the clips that could not be read
    cache_file: Path | None = None
    cache_hit: bool = False

    def __iter__(self) -> Iterator[Any]:
        return iter((self.embeddings, self.kept, self.failed))


def default_cache_dir() -> Path:
    """`$TINYCLAP_CACHE/embeddings`, else the user cache folder's `embeddings/` (platformdirs)."""
    env = os.environ.get("TINYCLAP_CACHE")
    if env:
        return Path(env) / "embeddings"
    from platformdirs import user_cache_path

    return user_cache_path("tinyclap") / "embeddings"


def _clip_stamp(path: Path) -> list[Any]:
    try:
        st = path.stat()
        return [os.fspath(path), st.st_size, st.st_mtime_ns]
    except OSError:
        return [os.fspath(path), None, None]


@dataclass(frozen=True)
class _CacheEntry:
    """Where one (model, dataset, clip list, mode) embedding result is cached, and its key."""

    npy: Path
    meta_path: Path
    key: str
    desc: dict[str, Any]

    @classmethod
    def of(
        cls, cache_dir: Path, model_id: str, model: Any, dataset: Any, mode: str, clip_seconds: float
    ) -> _CacheEntry:
        # File size + mtime are in the key so that a re-encoded or repaired clip is embedded again.
        clips = [_clip_stamp(Path(it.path)) for it in dataset.items]
        desc = {
            "version": EMBED_CACHE_VERSION,
            "model": model_id,
            "sample_rate": int(model.sample_rate),
            "embed_dim": int(model.embed_dim),
            "dataset": dataset.name,
            "root": os.fspath(dataset.root),
            "long_clip": mode,
            "clip_seconds": float(clip_seconds),
            "n_clips": len(clips),
            "clips_sha256": hashlib.sha256(json.dumps(clips).encode()).hexdigest(),
        }
        if getattr(model, "pool_window", None) is not None:  # a student embedding pooled windows
            desc["pool_window"] = float(model.pool_window)
        key = hashlib.sha256(json.dumps(desc, sort_keys=True).encode()).hexdigest()
        safe = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in dataset.name)
        stem = cache_dir / f"{safe}-{key[:24]}"
        return cls(stem.with_suffix(".npy"), stem.with_suffix(".json"), key, desc)

    def load(self, n_items: int) -> Embedded | None:
        """The cached result, or None when there is none or it does not match its description."""
        if not (self.npy.is_file() and self.meta_path.is_file()):
            return None
        try:
            meta = read_json(self.meta_path)  # bounded; a malformed file is a ValueError naming it
            emb = np.load(self.npy, allow_pickle=False)
        except (OSError, ValueError) as e:
            print(f"warning: ignoring unreadable embedding cache {self.npy} ({e})", file=sys.stderr)
            return None
        kept = [int(i) for i in meta.get("kept", [])]
        if (
            meta.get("key") != self.key
            or emb.ndim != 2
            or emb.shape[0] != len(kept)
            or any(not 0 <= i < n_items for i in kept)
        ):
            print(f"warning: embedding cache {self.npy} does not match its description; recomputing",
                  file=sys.stderr)
            return None
        failed = [(str(p), str(r)) for p, r in meta.get("failed", [])]
        return Embedded(torch.from_numpy(emb.astype(np.float32)), kept, failed, self.npy, True)

    def save(self, res: Embedded, dataset: Any) -> None:
        """Write the embeddings (.npy) and their description (.json), each atomically."""
        import tinyclap

        buf = io.BytesIO()
        np.save(buf, res.embeddings.numpy().astype(np.float32))
        atomic_write_bytes(self.npy, buf.getvalue())
        meta = {
            "key": self.key,
            **self.desc,
            "tinyclap_version": tinyclap.__version__,
            "paths": [os.fspath(it.path) for it in dataset.items],
            "kept": res.kept,
            "failed": [list(f) for f in res.failed],
        }
        atomic_write_text(self.meta_path, json.dumps(meta, indent=1) + "\n")


def embed_dataset(
    model: Any,
    dataset: Any,
    mode: str = "windows",
    cache_dir: str | os.PathLike | None = None,
    progress: bool = True,
    *,
    model_id: str | None = None,
    clip_seconds: float = 5.0,
    batch_size: int = 16,
    device: str | torch.device | None = None,
    workers: int | None = None,
) -> Embedded:
    """Embed every clip of `dataset` (a `LabelledDataset`) -> `Embedded` = (embeddings (n, D), kept, failed).

    Deterministic: `mode` "windows" (mean of all 5 s windows, renormalised) or "centre" (centre crop).
    Unreadable clips are skipped and listed in `failed`. With `cache_dir`, results are stored as `.npy` +
    `.json` under a key of (model_id, dataset name/root, clip list with sizes and mtimes, mode, clip length)
    and reused; `model_id` defaults to a hash of the model's weights (see `model_fingerprint` for a file).
    The model runs on `device` (default: where its parameters are), in eval mode for the call.
    """
    from tinyclap.models.fingerprint import weights_fingerprint

    if mode not in LONG_CLIP_MODES:
        raise ValueError(f"long-clip mode must be one of {LONG_CLIP_MODES}, got {mode!r}")
    entry = None
    if cache_dir is not None:
        model_id = model_id or weights_fingerprint(model)
        entry = _CacheEntry.of(Path(cache_dir), model_id, model, dataset, mode, clip_seconds)
        hit = entry.load(len(dataset.items))
        if hit is not None:
            return hit
    paths = [Path(it.path) for it in dataset.items]
    res = embed_files(model, paths, mode, clip_seconds, progress, device, batch_size=batch_size, workers=workers)
    out = Embedded(res.embeddings, res.kept, res.failed, None if entry is None else entry.npy, False)
    if entry is not None:
        entry.save(out, dataset)
    return out
