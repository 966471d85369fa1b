"""Building a teacher-target cache: `build_cache` (CLI: `tinyclap cache`), one rank's run as named steps.

A run resolves the sources, writes or checks `cache.json`, skips the files already in finished shards,
streams the rest through decoding workers, computes the log-mel and the teacher's target of every crop in
batches, writes shards as they fill, and finally writes its report (see `tinyclap.train.cache` for the
layout and the rules for crops, splits and ranks).
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from tinyclap._util import progress as progress_display
from tinyclap._util import resolve_device, state_sha256
from tinyclap.audio import CLIP_SAMPLES, CLIP_SECONDS, SAMPLE_RATE
from tinyclap.audio.frontend import FFTLogMel, LogMel
from tinyclap.train.cache.options import VIEW_AUGMENT, CacheOptions
from tinyclap.train.cache.sources import DecodeSet, SourceFile, keep_item, resolve_sources, split_of
from tinyclap.train.cache.store import FORMAT, CacheError, PathLike
from tinyclap.train.cache.write import (
    CacheReport,
    ShardWriter,
    build_lock,
    clear_leftovers,
    prepare_dir,
    scan_done,
    write_reports,
)

ITEM_KEYS = ("path", "rel", "offset", "crop", "split", "file")


def build_cache(
    teacher: Any,
    paths_or_specs: Iterable[PathLike] | PathLike,
    out: PathLike,
    options: CacheOptions | None = None,
    *,
    rank: int | None = None,
    world_size: int | None = None,
    on_shard: Callable[[Path], None] | None = None,
    **settings: Any,
) -> CacheReport:
    """Decode, crop, log-mel and embed every source file once, into the store at `out` (see module doc).

    `teacher` is a model with `embed_waveform`, `sample_rate` and `embed_dim`, or a spec for
    `tinyclap.models.load_model` (checkpoint path / run folder). How to crop, split, batch and shard is
    `options`, with any `CacheOptions` field given as a keyword (`crops_per_clip=2, workers=0`) replacing
    its value. A module teacher is moved to `device` and run in eval mode; both are restored afterwards.
    `rank`/`world_size` default to the RANK/WORLD_SIZE environment (torchrun), where a gloo process group
    is created if WORLD_SIZE > 1 and none exists. Unreadable files are skipped and reported; with
    `strict=True` a CacheError is raised at the end if any was (the store and report are written first).
    `on_shard(path)` is called after each finished shard. Returns this rank's report.
    """
    opts = replace(options or CacheOptions(), **settings)  # an unknown keyword is a TypeError
    opts.check()
    from_env = rank is None and world_size is None
    rank = int(os.environ.get("RANK", "0")) if rank is None else int(rank)
    world_size = int(os.environ.get("WORLD_SIZE", "1")) if world_size is None else int(world_size)
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is not in 0..{world_size - 1}")
    out = Path(os.path.abspath(os.fspath(out)))
    import torch.distributed as dist

    group = None
    if from_env and world_size > 1 and dist.is_available() and not dist.is_initialized():
        # gloo even on GPUs: the ranks only exchange one small object at start-up
        dist.init_process_group("gloo", rank=rank, world_size=world_size)
        group = dist.group.WORLD
    try:
        distributed = dist.is_available() and dist.is_initialized() and world_size > 1
        return _RankBuild(teacher, out, opts, rank, world_size, distributed).run(paths_or_specs, on_shard)
    finally:
        if group is not None:
            dist.destroy_process_group()


class _RankBuild:
    """One rank's run of `build_cache`: the state the steps share (teacher, device, report, shard writer)."""

    def __init__(self, teacher: Any, out: Path, opts: CacheOptions, rank: int, world_size: int,
                 distributed: bool) -> None:
        self.t_start = time.perf_counter()
        self.spec: PathLike | None = None
        if isinstance(teacher, (str, os.PathLike)):
            from tinyclap.models import load_model

            self.spec, teacher = teacher, load_model(teacher)
        for attr in ("embed_waveform", "sample_rate", "embed_dim"):
            if not hasattr(teacher, attr):
                raise TypeError(f"the teacher ({type(teacher).__name__}) has no {attr!r}; need an AudioEmbedder")
        self.teacher, self.out, self.opts = teacher, out, opts
        self.rank, self.world_size, self.distributed = rank, world_size, distributed
        self.frontend = LogMel()
        self.timings = {"decode_cpu_s": 0.0, "logmel_s": 0.0, "teacher_s": 0.0, "write_s": 0.0}

    def run(self, paths_or_specs: Iterable[PathLike] | PathLike, on_shard: Callable[[Path], None] | None
            ) -> CacheReport:  # fmt: skip
        """The steps in order: sources, config, folder, plan (resume), device and teacher, stream, report."""
        specs, files = resolve_sources(paths_or_specs)
        config = self.config(specs)
        with contextlib.ExitStack() as held:
            existed = self.out.is_dir()
            if existed:  # locked before prepare: --overwrite must not delete shards another build is writing
                held.enter_context(build_lock(self.out, self.rank))
            self.prepare(config)
            if not existed:  # a new folder: locked as soon as it exists
                held.enter_context(build_lock(self.out, self.rank))
            return self.locked_run(files, config, on_shard)

    def locked_run(self, files: list[SourceFile], config: dict[str, Any], on_shard: Callable[[Path], None] | None
                   ) -> CacheReport:  # fmt: skip
        """`run` once cache.json is settled and this rank holds its build lock: plan, stream, report."""
        self.report = CacheReport(out=str(self.out), rank=self.rank, world_size=self.world_size,
                                  files_total=len(files))  # fmt: skip
        todo = self.plan(files, config)
        self.writer = ShardWriter(self.out, self.rank, self.opts.shard_size, self.report, on_shard)
        self.dev = resolve_device(self.opts.device)
        self.fft_logmel = FFTLogMel(self.frontend).to(self.dev)
        with _teacher_on(self.teacher, self.dev, move_back=self.spec is None):
            self.use_logmel = _logmel_teacher(self.teacher)
            self.report.teacher_input = "logmel" if self.use_logmel else "waveform"
            self.stream(todo)
        return self.finish()

    def config(self, specs: list[str]) -> dict[str, Any]:
        """The `cache.json` this run writes or must find."""
        return {
            "format": FORMAT,
            "teacher": _teacher_info(self.teacher, self.spec),
            "frontend": self.frontend.config(),
            "sample_rate": SAMPLE_RATE,
            "clip_seconds": CLIP_SECONDS,
            "n_frames": self.frontend.n_frames(CLIP_SAMPLES),
            "n_mels": self.frontend.n_mels,
            "embed_dim": int(self.teacher.embed_dim),
            "crops_per_clip": int(self.opts.crops_per_clip),
            "crop": self.opts.crop,
            "val_fraction": float(self.opts.val_fraction),
            "seed": int(self.opts.seed),
            "sources": specs,
            # only with views: a cache without them keeps the exact cache.json (and identity) it always had
            **({"views": int(self.opts.views), "view_augment": json.loads(json.dumps(VIEW_AUGMENT))}
               if self.opts.views else {}),
        }

    def prepare(self, config: dict[str, Any]) -> None:
        """cache.json: rank 0 decides (and overwrites); the others wait for its verdict, then check for themselves."""
        if not self.distributed:
            if self.opts.overwrite and self.world_size > 1:
                raise CacheError(f"{self.out}: --overwrite with several ranks needs torchrun (a process group)")
            prepare_dir(self.out, config, self.opts.overwrite)
            return
        import torch.distributed as dist

        verdict: list[str | None] = [None]
        if self.rank == 0:
            try:
                prepare_dir(self.out, config, self.opts.overwrite)
            except CacheError as e:
                verdict[0] = str(e)
        dist.broadcast_object_list(verdict, src=0)
        if verdict[0] is not None:
            raise CacheError(verdict[0])
        if self.rank != 0:
            prepare_dir(self.out, config, overwrite=False)

    def plan(self, files: list[SourceFile], config: dict[str, Any]) -> list[SourceFile]:
        """This rank's files not yet in a finished shard (a damaged shard is moved aside and redone)."""
        clear_leftovers(self.out, self.rank)
        done = scan_done(self.out, config, self.report)
        mine = [f for f in files if f.index % self.world_size == self.rank]
        todo = [f for f in mine if f.path not in done]
        opts = self.opts
        # views: partners come from the whole list's train split; files are computed in fixed blocks of
        # consecutive files of this rank's list (shards hold whole blocks), so a resumed build batches
        # every row as an uninterrupted one does and writes the same floats
        self.partners = [f for f in files if split_of(f.rel, opts.seed, opts.val_fraction) == "train"]
        per_block = max(1, opts.batch_size // (opts.crops_per_clip * (opts.views + 1)))
        self.block = {f.path: pos // per_block for pos, f in enumerate(mine)}
        self.report.files_assigned = len(mine)
        self.report.files_cached_before = len(mine) - len(todo)
        return todo

    def stream(self, todo: list[SourceFile]) -> None:
        """Decode `todo` in worker processes; embed the crops in batches; write shards as they fill."""
        teacher_rate = SAMPLE_RATE if self.use_logmel else int(self.teacher.sample_rate)
        opts = self.opts
        loader = torch.utils.data.DataLoader(
            DecodeSet(todo, opts.crops_per_clip, opts.crop, opts.seed, teacher_rate, opts.views,
                      self.partners if opts.views else (), opts.val_fraction),
            batch_size=None,
            shuffle=False,
            num_workers=opts.workers if todo else 0,
            collate_fn=keep_item,
            pin_memory=self.dev.type == "cuda",
        )
        bar = progress_display(total=len(todo), desc=f"cache r{self.rank}", unit="file",
                               enabled=opts.progress and self.rank == 0)  # fmt: skip
        pending: list[tuple[SourceFile, dict[str, Any]]] = []
        try:
            with torch.inference_mode():
                for d in loader:
                    bar.update(1)
                    src = todo[d["index"]]
                    if opts.views and pending and self.block[src.path] != self.block[pending[0][0].path]:
                        pending = self.write_pending(pending, bar)  # a block is complete
                    if self.decoded(src, d, pending) >= opts.batch_size and not opts.views:
                        pending = self.write_pending(pending, bar)
                if pending:
                    self.compute(pending)
                self.writer.flush(final=True)
        finally:
            bar.close()

    def write_pending(self, pending: list[tuple[SourceFile, dict[str, Any]]], bar: Any) -> list:
        """Compute the pending files, write the shards that filled up; returns the new (empty) pending list."""
        self.compute(pending)
        self.writer.flush()
        wall = time.perf_counter() - self.t_start
        bar.set_postfix_str(f"clips/s={self.report.crops_written / max(wall, 1e-9):.1f}")
        return []

    def decoded(self, src: SourceFile, d: dict[str, Any], pending: list[tuple[SourceFile, dict[str, Any]]]
                ) -> int:  # fmt: skip
        """Book one decoded file: skipped with its problem, or appended to `pending`; returns pending crops."""
        self.timings["decode_cpu_s"] += float(d["seconds"])
        if d["error"] is not None:
            self.report.skipped.append({"path": src.path, "problem": d["error"]})
        else:
            pending.append((src, d))
        return sum(p["crops"].shape[0] for _, p in pending)

    def compute(self, batch: list[tuple[SourceFile, dict[str, Any]]]) -> None:
        """Log-mel + teacher for the pending files' crops, in chunks of batch_size; rows go to the writer."""
        waves = torch.cat([d["crops"] for _, d in batch])  # (n, L) at 44.1 kHz
        use_t = not self.use_logmel and batch[0][1]["teacher"] is not None
        t_waves = torch.cat([d["teacher"] for _, d in batch]) if use_t else None  # (n, L_t) at the teacher's rate
        mels, tgts = [], []
        step = self.opts.batch_size
        for a in range(0, waves.shape[0], step):
            mel, tgt = self.embed(waves[a : a + step], None if t_waves is None else t_waves[a : a + step])
            mels.append(mel)
            tgts.append(tgt)
        mel_all, tgt_all = np.concatenate(mels), np.concatenate(tgts)
        row, units = 0, []
        for src, d in batch:
            k = d["crops"].shape[0]
            unit = self.accept(src, d, mel_all[row : row + k], tgt_all[row : row + k])
            row += k
            if unit is not None and not self.opts.views:
                self.writer.add(*unit)
            elif unit is not None:
                units.append(unit)
        if units:  # views: one block, written as one unit (shards hold whole blocks)
            self.writer.add(np.concatenate([u[0] for u in units]), np.concatenate([u[1] for u in units]),
                            [it for u in units for it in u[2]])  # fmt: skip

    def embed(self, wave: torch.Tensor, t_wave: torch.Tensor | None) -> tuple[np.ndarray, np.ndarray]:
        """(B, L) crops (and the same crops at the teacher's rate) -> log-mel (B, T, 64) f16, target (B, D) f32."""
        t0 = time.perf_counter()
        x = wave.to(self.dev, non_blocking=True)  # (B, L)
        logmel = self.fft_logmel(x)  # (B, T, 64) float32
        mel = logmel.half().cpu().numpy()
        t1 = time.perf_counter()
        if self.use_logmel:
            emb = self.teacher.encode_audio(logmel)
        else:
            emb = self.teacher.embed_waveform(x if t_wave is None else t_wave.to(self.dev, non_blocking=True))
        tgt = F.normalize(emb.float(), dim=-1).cpu().numpy()  # (B, D)
        self.timings["logmel_s"] += t1 - t0
        self.timings["teacher_s"] += time.perf_counter() - t1
        return mel, tgt

    def accept(self, src: SourceFile, d: dict[str, Any], mel: np.ndarray, tgt: np.ndarray
               ) -> tuple[np.ndarray, np.ndarray, list[dict[str, Any]]] | None:  # fmt: skip
        """One file's rows (log-mel, target, items) for the writer, or None (skipped) if its values are unusable."""
        if not (np.isfinite(mel).all() and np.isfinite(tgt).all()):
            self.report.skipped.append({"path": src.path, "problem": "non-finite log-mel or teacher embedding"})
            return None
        if np.any(np.abs(np.linalg.norm(tgt, axis=1) - 1.0) > 1e-3):
            problem = "teacher embedding is not unit-norm (zero vector?)"
            self.report.skipped.append({"path": src.path, "problem": problem})
            return None
        split = split_of(src.rel, self.opts.seed, self.opts.val_fraction)
        offsets = d["offsets"]
        if d.get("rows") is None:  # no views: exactly the items a cache always had
            items = [dict(zip(ITEM_KEYS, (src.path, src.rel, off, j, split, src.index)))
                     for j, off in enumerate(offsets)]  # fmt: skip
        else:
            items = [{**dict(zip(ITEM_KEYS, (src.path, src.rel, offsets[j], j, split, src.index))),
                      "view": v, "aug": aug} for j, v, aug in d["rows"]]  # fmt: skip
            self.report.views_written += sum(v > 0 for _, v, _ in d["rows"])
        self.report.files_read += 1
        self.report.crops_written += len(items)
        return mel, tgt, items

    def finish(self) -> CacheReport:
        """Timings, the report files (under the folder lock), and the strict verdict."""
        report = self.report
        self.timings["write_s"] = self.writer.seconds
        self.timings["wall_s"] = time.perf_counter() - self.t_start
        report.timings = {k: round(v, 4) for k, v in self.timings.items()}
        report.clips_per_s = report.crops_written / max(self.timings["wall_s"], 1e-9)
        report.finished_at = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        write_reports(self.out, report, self.world_size)
        if self.opts.strict and report.skipped:
            first = report.skipped[0]
            raise CacheError(
                f"{len(report.skipped)} file(s) could not be cached (strict), "
                f"e.g. {first['path']}: {first['problem']}"
            )
        return report


@contextlib.contextmanager
def _teacher_on(teacher: Any, dev: torch.device, move_back: bool) -> Iterator[None]:
    """Run a module teacher on `dev` in eval mode; restore its train/eval flags (and, if `move_back`, its
    device: the caller's object goes back where it was) afterwards."""
    if not isinstance(teacher, nn.Module):
        yield
        return
    first = next(itertools.chain(teacher.parameters(), teacher.buffers()), None)
    orig_device = None if first is None else first.device
    orig_flags = [(m, m.training) for m in teacher.modules()]
    teacher.to(dev).eval()
    try:
        yield
    finally:
        for m, flag in orig_flags:
            m.training = flag
        if orig_device is not None and move_back:
            teacher.to(orig_device)


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


def _teacher_info(teacher: Any, spec: PathLike | None) -> dict[str, Any]:
    return {
        "kind": type(teacher).__name__,
        "path": os.path.abspath(os.fspath(spec)) if spec is not None and os.path.exists(spec) else None,
        "sha256": state_sha256(teacher),
        "sha256_of": "state_dict",
        "embed_dim": int(teacher.embed_dim),
        "sample_rate": int(teacher.sample_rate),
    }
