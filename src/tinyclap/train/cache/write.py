"""The build side's disk work: the run report, preparing the cache folder (config check, overwrite), finding
finished shards to resume from, writing shards atomically, and merging the ranks' reports under a lock."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import shutil
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from tinyclap._util import JSONFileError, atomic_write_text, folder_lock, fsync_folder, read_json, remove_stale_temps
from tinyclap.train.cache.store import CacheError, CacheStore, finished_shards, open_shard, read_config, shard_name

# settings that may change between a run and its resume without changing what the store holds
IGNORED_CONFIG = {("teacher", "path")}


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
    crops_written: int = 0  # rows: clean crops and augmented views
    views_written: int = 0  # of which augmented views (tinyclap cache --views K)
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
            f"{self.crops_written} rows written"
            + (f" ({self.views_written} of them augmented views)" if self.views_written else "")
            + f" in {len(self.shards_written)} shards, "
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


def config_diff(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    diffs = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            for sub in sorted(set(a) | set(b)):
                if (key, sub) not in IGNORED_CONFIG and a.get(sub) != b.get(sub):
                    diffs.append(f"{key}.{sub}: {a.get(sub)!r} -> {b.get(sub)!r}")
        elif a != b:
            diffs.append(f"{key}: {str(a)[:80]} -> {str(b)[:80]}")
    return diffs


_OURS = ("cache.json", "shards", "reports", "report.json", ".lock")


def _our_temp(name: str) -> bool:
    """An orphan temp file of an atomic write of one of our top-level files (`.cache.json.<8>.tmp`), or a
    rank's build lock (`.lock-r00`)."""
    return (name.endswith(".tmp") and any(name.startswith(f".{ours}.") for ours in _OURS)) or bool(
        re.fullmatch(r"\.lock-r\d{2,}", name))


@contextlib.contextmanager
def build_lock(out: Path, rank: int) -> Iterator[None]:
    """Held while a rank writes the cache at `out`: a second build of the same rank (another `tinyclap cache`
    on this --out) fails at once naming the holder, instead of interleaving shards. The ranks of one build
    hold different locks; the shared report files take turns under `folder_lock(out)`."""
    with folder_lock(out, blocking=False, name=f".lock-r{rank:02d}", what=f"this cache (rank {rank})"):
        yield


def prepare_dir(out: Path, config: dict[str, Any], overwrite: bool) -> None:
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
        diffs = config_diff(old, config) if old is not None else ["unreadable cache.json"]
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


def scan_done(out: Path, config: dict[str, Any], report: CacheReport) -> set[str]:
    """Paths already in finished shards; a shard that fails to open is moved aside (its files redone)."""
    done: set[str] = set()
    for _, _, path in finished_shards(out):
        try:
            shard = open_shard(
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


def write_shard(
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
        fsync_folder(tmp)  # the shard's entries, then its rename, reach the disk before it counts as finished
        os.rename(tmp, final)
        fsync_folder(shards)
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


def merge_reports(out: Path, world_size: int, store_rows: int) -> dict[str, Any]:
    """report.json = the ranks' reports (reports/rNN.json) with totals, rewritten under a file lock."""
    ranks = []
    for r in range(world_size):
        p = out / "reports" / f"r{r:02d}.json"
        if p.is_file():
            try:
                ranks.append(read_json(p))
            except JSONFileError:
                continue
    keys = ("files_assigned", "files_cached_before", "files_read", "crops_written", "views_written")
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


def clear_leftovers(out: Path, rank: int) -> None:
    """Remove what a killed run of this rank left: its shard in flight and its half-written report."""
    shards_dir = out / "shards"
    shards_dir.mkdir(parents=True, exist_ok=True)
    for tmp in shards_dir.glob(f".tmp-r{rank:02d}-*"):
        shutil.rmtree(tmp, ignore_errors=True)
    remove_stale_temps(out / "reports", [f"r{rank:02d}.json"])


class ShardWriter:
    """Buffers computed files and writes them as shards of about `shard_size` rows (whole files only).

    `add` takes one file's rows: log-mel (k, T, M) float16, target (k, D) float32 and k item dicts.
    Shard indices continue after this rank's finished shards; `seconds` accumulates the write time.
    """

    def __init__(self, out: Path, rank: int, shard_size: int, report: CacheReport,
                 on_shard: Callable[[Path], None] | None = None) -> None:
        self.out, self.rank, self.shard_size, self.report, self.on_shard = out, rank, shard_size, report, on_shard
        self.next_idx = 1 + max((i for r, i, _ in finished_shards(out) if r == rank), default=-1)
        self.buffer: list[tuple[np.ndarray, np.ndarray, list[dict[str, Any]]]] = []
        self.seconds = 0.0

    def add(self, logmel: np.ndarray, target: np.ndarray, items: list[dict[str, Any]]) -> None:
        self.buffer.append((logmel, target, items))

    def flush(self, final: bool = False) -> None:
        """Write shards of >= shard_size rows while the buffer has them; everything when `final`."""
        while self.buffer:
            rows = np.cumsum([len(b[2]) for b in self.buffer])
            if rows[-1] < self.shard_size and not final:
                return
            take = int(np.searchsorted(rows, self.shard_size)) + 1  # fewest whole files reaching shard_size
            chunk, self.buffer = self.buffer[:take], self.buffer[take:]
            t0 = time.perf_counter()
            name = shard_name(self.rank, self.next_idx)
            path = write_shard(
                self.out,
                name,
                np.concatenate([b[0] for b in chunk]),
                np.concatenate([b[1] for b in chunk]),
                [it for b in chunk for it in b[2]],
            )
            self.next_idx += 1
            self.report.shards_written.append(name)
            self.seconds += time.perf_counter() - t0
            if self.on_shard is not None:
                self.on_shard(path)


def write_reports(out: Path, report: CacheReport, world_size: int) -> None:
    """This rank's `reports/rNN.json` and the merged `report.json`, under the folder lock (ranks finish
    at different times, each rewriting the merge)."""
    with folder_lock(out):
        # orphan temp files of killed runs' report/config writes (report.json is only written under the lock;
        # cache.json only when a run starts, when no rank can be finishing)
        remove_stale_temps(out, ["report.json", "cache.json"])
        try:
            report.store_rows = len(CacheStore(out))
        except CacheError as e:  # e.g. a shard damaged meanwhile: still write the report, say so
            report.store_rows = -1
            print(f"tinyclap cache: the store does not open: {e}", file=sys.stderr)
        atomic_write_text(out / "reports" / f"r{report.rank:02d}.json", json.dumps(report.to_dict(), indent=2) + "\n")
        merge_reports(out, world_size, report.store_rows)
