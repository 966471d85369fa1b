"""The training loop of one distillation stage, read top to bottom in `train_stage`: set up, resume, then per
epoch train, validate, log and checkpoint; the student ends with its best (validation) weights.

- stage 1 trains the whole student (Adam, ReduceLROnPlateau on the validation loss);
- stage 2 trains only the projection head. Unlike the reference recipe, which only sets
  `requires_grad=False` on the base and so still lets its BatchNorm running statistics drift in training
  mode, the whole base stays in eval mode: stage 2 changes the projection and nothing else.

The training state is written at every epoch end and every `ckpt_every` steps (`tinyclap.train.state`);
`resume=True` continues exactly, even mid-epoch (the sampler replays the same seeded permutation and skips
the batches already done). Under a process group the student is wrapped in DDP and the data sharded
(`tinyclap.train.dist`); `batch_size` is per process.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset

from tinyclap._util import progress, resolve_device
from tinyclap.models import save_student
from tinyclap.models.checkpoint import CheckpointError
from tinyclap.train.config import StageOptions
from tinyclap.train.dist import Dist, EpochSampler, ValShard
from tinyclap.train.losses import TERMS, DistillLoss
from tinyclap.train.metrics import MetricsLogger, log
from tinyclap.train.state import (
    StageProgress,
    StageResult,
    Trainables,
    gather_rng,
    load_state,
    read_tensors,
    run_scope,
    save_state,
)
from tinyclap.train.targets import BatchFn, cached_batch, distill_loss, select_targets, spec_augment

__all__ = ["train_stage", "train_step"]

WARMUP = 0.05  # the `cosine` schedule's linear warm-up, as a share of the stage's optimiser steps


# --------------------------------------------------------------------------------------------- one step


def _autocast(device: torch.device, enabled: bool) -> contextlib.AbstractContextManager:
    return torch.autocast(device.type, dtype=torch.bfloat16) if enabled else contextlib.nullcontext()


def train_step(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    logmel: torch.Tensor,
    target: torch.Tensor,
    *,
    amp: bool = False,
    dims: torch.Tensor | None = None,
    loss_fn: DistillLoss | None = None,
    terms: dict[str, torch.Tensor] | None = None,
) -> torch.Tensor:
    """One optimisation step on a batch: logmel (B, T, M), target (B, D) -> detached loss ().

    `amp` runs the forward pass under bf16 autocast (the loss is computed in float32). `loss_fn` is a recipe's
    `DistillLoss` (None: Eq. 7); `terms`, if given, receives each term's detached (unweighted) value.
    """
    optimizer.zero_grad(set_to_none=True)
    with _autocast(logmel.device, amp):
        out = model(logmel)  # (B, K)
    if loss_fn is None or loss_fn.is_paper:
        loss = distill_loss(out, select_targets(target, dims))  # the paper's Eq. 7, exactly as it always was
        parts = {"cosine": loss}
    else:
        loss, parts = loss_fn(out, select_targets(target, dims))
    if terms is not None:
        terms.update({k: v.detach() for k, v in parts.items()})
    loss.backward()
    optimizer.step()
    return loss.detach()


@torch.no_grad()
def _validate(
    student: nn.Module,
    loader: DataLoader,
    batch_fn: BatchFn,
    device: torch.device,
    amp: bool,
    dims: torch.Tensor | None,
    d: Dist,
) -> tuple[float, float]:
    """(val_loss, val_cosine) over the whole validation split (all ranks): loss = -mean cosine."""
    was_training = [(m, m.training) for m in student.modules()]
    student.eval()
    # under DDP each rank's BN running statistics moved with its own last batch: validate (and save) with
    # rank 0's, as the checkpoint will hold
    d.broadcast_buffers(student)
    cos_sum = torch.zeros((), dtype=torch.float64, device=device)
    count = 0
    try:
        for batch in loader:
            logmel, target = batch_fn(batch, device)
            with _autocast(device, amp):
                out = student(logmel)  # (B, K)
            cos = F.cosine_similarity(out.float(), select_targets(target, dims), dim=-1)  # (B,)
            cos_sum += cos.double().sum()
            count += cos.shape[0]
    finally:
        for m, t in was_training:
            m.training = t
    total, n = d.all_sum([cos_sum.item(), count], device)
    if n == 0:
        raise ValueError("the validation split is empty")
    mean_cos = total / n
    return -mean_cos, mean_cos


# ------------------------------------------------------------------------------------------- one stage


@dataclass
class _Sums:
    """Training loss and clip count of this rank since `t0` (device tensor: no sync per step)."""

    device: torch.device
    loss: torch.Tensor = field(init=False)
    terms: torch.Tensor = field(init=False)  # (len(TERMS),) per-term sums
    n: int = 0
    t0: float = 0.0

    def __post_init__(self) -> None:
        self.reset()

    def add(self, loss: torch.Tensor, clips: int, terms: dict[str, torch.Tensor] | None = None) -> None:
        self.loss += loss.double() * clips
        self.n += clips
        for k, v in (terms or {}).items():
            self.terms[TERMS.index(k)] += v.double() * clips

    def reset(self) -> None:
        self.loss, self.n, self.t0 = torch.zeros((), dtype=torch.float64, device=self.device), 0, time.perf_counter()
        self.terms = torch.zeros(len(TERMS), dtype=torch.float64, device=self.device)


@dataclass
class _Stage:
    """A running stage: its options and place, and the objects `_set_up` builds, shared by the steps."""

    student: nn.Module
    opts: StageOptions
    dev: torch.device
    d: Dist
    dims: torch.Tensor | None
    metrics: MetricsLogger
    amp: bool = field(init=False)
    batch_fn: BatchFn = field(init=False)
    out: Path | None = field(init=False)
    objs: Trainables = field(init=False)
    sampler: EpochSampler = field(init=False)
    train_loader: DataLoader = field(init=False)
    val_loader: DataLoader = field(init=False)
    model: nn.Module = field(init=False)  # the student, or its DDP / compiled wrapper
    prog: StageProgress = field(init=False)
    loss_fn: DistillLoss | None = field(init=False)
    terms_used: tuple[str, ...] = ("cosine",)
    best_state: dict[str, torch.Tensor] | None = None
    t_mark: float = 0.0

    def __post_init__(self) -> None:
        o = self.opts
        self.amp = self.dev.type == "cuda" if o.amp is None else bool(o.amp)
        self.batch_fn = o.batch_fn or cached_batch
        self.out = Path(o.out_dir) if o.out_dir is not None else None
        self.prog = StageProgress(stage=o.stage)

    def tick(self) -> float:
        """Fold the wall time since the last call into prog.elapsed_s (kept across resumes)."""
        now = time.perf_counter()
        self.prog.elapsed_s += now - self.t_mark
        self.t_mark = now
        return self.prog.elapsed_s

    def save_last(self) -> None:
        """Checkpoint the training state to out/last.* (rank 0; every rank gathers its RNG state)."""
        rng = gather_rng(self.d, self.dev)  # collective: every rank calls it
        self.tick()
        if self.d.main and self.out is not None:
            info = {"student": getattr(self.student, "name", None), **self.opts.save_extra}
            save_state(self.out / "last", self.objs, self.prog, rng, info)

    def fold(self, sums: _Sums) -> None:
        """Add this rank's running sums (all-reduced over ranks) to the progress record; restart them."""
        s, c, *terms = self.d.all_sum([sums.loss.item(), sums.n, *sums.terms.tolist()], self.dev)
        self.prog.loss_sum += s
        self.prog.loss_count += int(c)
        for name, v in zip(TERMS, terms):
            if name in self.terms_used:  # the terms the recipe does not use stay absent
                self.prog.term_sums[name] = self.prog.term_sums.get(name, 0.0) + v
        self.prog.clips += int(c)
        self.prog.train_time += time.perf_counter() - sums.t0
        sums.reset()


def _options(opts: StageOptions | None, kw: dict[str, Any]) -> StageOptions:
    if opts is None:
        return StageOptions(**kw)
    return dataclasses.replace(opts, **kw) if kw else opts


def _check(student: nn.Module, train_ds: Dataset, val_ds: Dataset, opts: StageOptions) -> None:
    opts.validate()
    if opts.stage == 2 and not (hasattr(student, "base") and hasattr(student, "projection")):
        raise ValueError("stage 2 needs a student with .base and .projection")
    if len(val_ds) == 0 or len(train_ds) == 0:
        raise ValueError(f"empty split: {len(train_ds)} training and {len(val_ds)} validation items")


def _target_dims(student: nn.Module, target_dims: Any, dev: torch.device) -> torch.Tensor | None:
    if target_dims is None:
        return None
    dims = torch.as_tensor(list(target_dims), dtype=torch.long, device=dev)
    if dims.numel() != getattr(student, "embed_dim", dims.numel()):
        raise ValueError(f"student embed_dim {student.embed_dim} differs from len(target_dims) = {dims.numel()}")
    return dims


def _set_up(st: _Stage, train_ds: Dataset, val_ds: Dataset) -> None:
    """Student on the device, the optimiser and scheduler, the sampler and both loaders."""
    student, o, d = st.student, st.opts, st.d
    student.to(st.dev)
    channels_last = st.dev.type == "cuda" if o.channels_last is None else o.channels_last
    if channels_last:
        student.to(memory_format=torch.channels_last)
    if o.stage == 2:
        student.base.requires_grad_(False)
        params = list(student.projection.parameters())
    else:
        params = [p for p in student.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(params, lr=o.lr)
    # the loader's own generator: creating an iterator then never draws from the global RNG (dropout's)
    st.objs = Trainables(student, optimizer, None, torch.Generator().manual_seed(o.seed))
    st.loss_fn = o.loss.to(st.dev, st.dims) if o.loss is not None and not o.loss.is_paper else None
    st.terms_used = st.loss_fn.active_terms if st.loss_fn is not None else ("cosine",)
    st.sampler = EpochSampler(
        train_ds, num_replicas=d.world, rank=d.rank, shuffle=True, seed=o.seed, tag_epoch=o.tag_epoch
    )
    common: dict[str, Any] = dict(
        num_workers=o.workers, pin_memory=st.dev.type == "cuda", persistent_workers=o.workers > 0
    )
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    if o.workers > cpus and d.main:  # one line instead of PyTorch's warning on every loader
        log.info("%d DataLoader workers on %d CPUs: --workers %d may be faster", o.workers, cpus, cpus)
    st.train_loader = DataLoader(
        train_ds, batch_size=o.batch_size, sampler=st.sampler, generator=st.objs.loader_gen, **common
    )
    st.val_loader = DataLoader(ValShard(val_ds, d.rank, d.world, o.tag_epoch), batch_size=o.batch_size, **common)
    st.objs.scheduler = _scheduler(optimizer, o, o.epochs * len(st.train_loader))


def _scheduler(optimizer: torch.optim.Optimizer, o: StageOptions, total_steps: int) -> Any:
    """`plateau` (the paper's): ReduceLROnPlateau on the validation loss, stepped after each validation;
    `cosine`: a linear warm-up over the first `WARMUP` of the steps, then a cosine decay to 0 at the last step,
    stepped after each optimiser step (`_is_per_step`)."""
    if o.schedule == "plateau":
        return torch.optim.lr_scheduler.ReduceLROnPlateau(
            optimizer, mode="min", factor=o.plateau_factor, patience=o.plateau_patience
        )
    warmup = max(1, round(WARMUP * total_steps))

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, (step - warmup) / max(1, total_steps - warmup))))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def _is_per_step(scheduler: Any) -> bool:
    return not isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau)


def _resume(st: _Stage) -> None:
    """Continue from out/last (with `resume`): weights, optimiser, RNGs, position, best weights so far."""
    last = st.out / "last" if st.out is not None else None
    if st.opts.resume and last is not None and last.with_suffix(".safetensors").is_file():
        st.prog = load_state(last, st.objs, st.d, st.dev)
        if st.prog.stage != st.opts.stage:
            raise CheckpointError(f"{last}.safetensors: holds stage {st.prog.stage}, not stage {st.opts.stage}")
        log.info(
            "stage %d: resumed at epoch %d, batch %d (step %d)", st.opts.stage, st.prog.epoch + 1,
            st.prog.step_in_epoch, st.prog.global_step,
        )  # fmt: skip
    # rows a killed run wrote after its last checkpoint (or for a stage that had none yet) are stale
    st.metrics.truncate_after(st.opts.stage, st.prog.global_step)
    if st.prog.best_epoch > 0 and st.out is not None and (st.out / "best.safetensors").is_file():
        st.best_state = read_tensors(st.out / "best")


class PooledWindows(nn.Module):
    """A student run as a small device runs it: (B, T, M) log-mels -> each cut into windows of `frames`
    frames (`tinyclap.audio.io.window_starts`: back to back, the last one aligned to the end), the backbone
    per window, the features averaged, the head once -> (B, D). Holds no weights of its own."""

    def __init__(self, student: nn.Module, frames: int) -> None:
        super().__init__()
        self.student, self.frames = student, int(frames)

    def forward(self, logmel: torch.Tensor) -> torch.Tensor:
        from tinyclap.audio.io import window_starts

        if logmel.shape[1] < self.frames:
            logmel = F.pad(logmel, (0, 0, 0, self.frames - logmel.shape[1]))
        starts = window_starts(int(logmel.shape[1]), self.frames)
        windows = torch.stack([logmel[:, s : s + self.frames] for s in starts], 1)  # (B, K, frames, M)
        return self.student(windows.flatten(0, 1), windows=len(starts))


def _net(st: _Stage) -> nn.Module:
    """The student as training and validation run it: whole inputs, or pooled windows (`pool_frames`)."""
    return st.student if st.opts.pool_frames is None else PooledWindows(st.student, st.opts.pool_frames)


def _wrap(st: _Stage) -> None:
    """The model the steps run: the student (or its pooled windows), in DDP under a process group, compiled if
    asked."""
    st.model = _net(st)
    if st.d.world > 1:
        from torch.nn.parallel import DistributedDataParallel as DDP

        st.model = DDP(st.model, device_ids=[st.dev.index] if st.dev.type == "cuda" else None)
    if st.opts.compile:
        st.model = torch.compile(st.model)


def _set_train_mode(st: _Stage) -> None:
    st.model.train()
    if st.opts.stage == 2:
        # explicit: the frozen base stays in eval mode, so its BatchNorm running statistics (and dropout)
        # do not change; only the projection head trains
        st.student.base.eval()


def _train_epoch(st: _Stage, epoch: int) -> None:
    """One pass over this rank's share of the training split, from where a resumed epoch stopped."""
    o, prog = st.opts, st.prog
    st.sampler.set_epoch(epoch)
    st.sampler.set_start(prog.step_in_epoch * o.batch_size)
    n_batches = prog.step_in_epoch + len(st.train_loader)
    _set_train_mode(st)
    sums, shown = _Sums(st.dev), _Sums(st.dev)  # since the last fold into prog; this epoch, for the bar
    show = o.progress and st.d.main
    bar = progress(
        total=n_batches, initial=prog.step_in_epoch, enabled=show, unit="batch", leave=False,
        desc=f"stage {o.stage} epoch {epoch + 1}/{o.epochs}",
    )  # fmt: skip
    for batch in st.train_loader:
        logmel, target = st.batch_fn(batch, st.dev)
        if o.spec_augment:  # the student's input only: the target stays the unmasked row's
            logmel = spec_augment(logmel)
        terms: dict[str, torch.Tensor] = {}
        loss = train_step(
            st.model, st.objs.optimizer, logmel, target, amp=st.amp, dims=st.dims, loss_fn=st.loss_fn, terms=terms
        )
        if _is_per_step(st.objs.scheduler):
            st.objs.scheduler.step()
        sums.add(loss, logmel.shape[0], terms)
        shown.add(loss, logmel.shape[0])
        prog.step_in_epoch += 1
        prog.global_step += 1
        bar.update(1)
        if show and (prog.step_in_epoch % 10 == 0 or prog.step_in_epoch == n_batches):
            # .item() syncs with the device: only every 10 batches
            clips_s = shown.n * st.d.world / max(time.perf_counter() - shown.t0, 1e-9)
            bar.set_postfix(loss=f"{shown.loss.item() / shown.n:.4f}", clips_s=f"{clips_s:.1f}")
        if o.ckpt_every and prog.global_step % o.ckpt_every == 0 and prog.step_in_epoch < n_batches:
            st.fold(sums)  # the mid-epoch checkpoint holds the (all-reduced) sums so far
            st.save_last()
        if o.step_hook is not None:
            o.step_hook(prog.global_step)
    bar.close()
    st.fold(sums)


def _validate_epoch(st: _Stage, epoch: int) -> tuple[float | None, float | None]:
    """Validate every `val_every` epochs and after the last; step the scheduler; keep and save the best."""
    o, prog = st.opts, st.prog
    if (epoch + 1) % o.val_every != 0 and epoch + 1 != o.epochs:
        return None, None
    val_loss, val_cos = _validate(_net(st), st.val_loader, st.batch_fn, st.dev, st.amp, st.dims, st.d)
    if not _is_per_step(st.objs.scheduler):
        st.objs.scheduler.step(val_loss)
    if val_loss < prog.best_val_loss:
        prog.best_val_loss, prog.best_val_cosine, prog.best_epoch = val_loss, val_cos, epoch + 1
        st.best_state = {k: v.detach().clone() for k, v in st.student.state_dict().items()}
        if st.d.main and st.out is not None:
            extra = dict(o.save_extra, stage=o.stage, epoch=epoch + 1, val_loss=val_loss, val_cosine=val_cos)
            save_student(st.student, st.out / "best", **extra)
    return val_loss, val_cos


def _end_epoch(st: _Stage, epoch: int, val_loss: float | None, val_cos: float | None) -> None:
    """The epoch's metrics row and log line, then the epoch-end checkpoint."""
    o, prog = st.opts, st.prog
    row = {
        "stage": o.stage, "epoch": epoch + 1, "step": prog.global_step,
        "train_loss": prog.loss_sum / max(1, prog.loss_count), "val_loss": val_loss, "val_cosine": val_cos,
        "lr": st.objs.optimizer.param_groups[0]["lr"], "clips_per_s": prog.clips / max(prog.train_time, 1e-9),
        "time_s": st.tick(),
        **{f"loss_{k}": v / max(1, prog.loss_count) for k, v in prog.term_sums.items()},
    }  # fmt: skip
    prog.history.append(row)
    if st.d.main:
        st.metrics.write(row)
        val_txt = "" if val_loss is None else f" val_loss {val_loss:.4f} val_cosine {val_cos:.4f}"
        log.info(
            "stage %d epoch %d/%d: train_loss %.4f%s lr %.3g, %.1f clips/s", o.stage, epoch + 1, o.epochs,
            row["train_loss"], val_txt, row["lr"], row["clips_per_s"],
        )  # fmt: skip
    prog.epoch = epoch + 1
    prog.step_in_epoch = 0
    prog.loss_sum, prog.loss_count, prog.clips, prog.train_time = 0.0, 0, 0, 0.0
    prog.term_sums = {}
    prog.finished = prog.epoch == o.epochs
    st.save_last()


def _finish(st: _Stage) -> StageResult:
    """The student takes its best weights; the stage's result."""
    if st.best_state is not None:
        st.student.load_state_dict(st.best_state)
    st.tick()
    return st.prog.result()


def train_stage(
    student: nn.Module, train_ds: Dataset, val_ds: Dataset, opts: StageOptions | None = None, /, **kw: Any
) -> StageResult:
    """Train `student` (a TinyCLAPStudent: `.base` + `.projection`) against teacher targets; one stage.

    Options: a `StageOptions`, and/or its fields as keywords (`stage`, `epochs`, `lr` are required), e.g.
    `train_stage(s, train, val, stage=2, epochs=10, lr=0.004)`. stage 1 trains every parameter; stage 2 only
    the projection (base frozen AND in eval mode). Adam at `lr`, ReduceLROnPlateau on the validation loss,
    validation every `val_every` epochs and after the last; the best epoch is chosen on the VALIDATION loss
    and the student ends with its weights (on the device). Items of `train_ds`/`val_ds` are collated and
    passed to `batch_fn` (cache items by default). With `out_dir`, writes `best.*` (a loadable student),
    `last.*` (the training state) and metrics; `resume=True` continues from `last` exactly.
    """
    opts = _options(opts, kw)
    _check(student, train_ds, val_ds, opts)
    dev, d = resolve_device(opts.device), Dist.current()
    out = opts.out_dir
    metrics = opts.metrics
    if metrics is None:
        metrics = MetricsLogger(out, tensorboard=False, enabled=d.main and out is not None)
    st = _Stage(student, opts, dev, d, _target_dims(student, opts.target_dims, dev), metrics)
    frozen = [(p, p.requires_grad) for p in student.base.parameters()] if opts.stage == 2 else []
    with run_scope(opts.seed + d.rank, dev, opts.deterministic), warnings.catch_warnings():
        # _set_up says it once when there are more workers than CPUs; PyTorch would on every epoch
        warnings.filterwarnings("ignore", message=".*worker processes in total.*", category=UserWarning)
        try:
            _set_up(st, train_ds, val_ds)
            _resume(st)
            _wrap(st)
            st.t_mark = time.perf_counter()
            for epoch in range(st.prog.epoch, opts.epochs):
                _train_epoch(st, epoch)
                val_loss, val_cos = _validate_epoch(st, epoch)
                _end_epoch(st, epoch, val_loss, val_cos)
            return _finish(st)
        finally:
            for p, flag in frozen:
                p.requires_grad_(flag)
            if opts.metrics is None:
                metrics.close()
