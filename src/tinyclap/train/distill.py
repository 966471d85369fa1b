"""Distillation of a student into the teacher's audio embedding space (tinyCLAP, Eq. 7).

The loss is minus the cosine similarity between the student's embedding and the teacher's L2-normalised
embedding of the same clip; `val_cosine` is its negative on the validation split. Two stages, as in the
paper and its recipe (fpaissan/tinyCLAP: `tinyclap.py` `tinyCLAP_loss`, `hparams/distill_clap.yaml`,
`projection_only`; followed for the recipe, no code copied):

- stage 1 trains the whole student (Adam, lr 0.012, batch 64, 100 epochs, ReduceLROnPlateau(0.1, 10) on
  the validation loss);
- stage 2 starts from stage 1's best checkpoint and trains only the projection head (lr 0.004, 10 epochs).
  Unlike the reference recipe, which only sets `requires_grad=False` on the base and so still lets its
  BatchNorm running statistics drift in training mode, we keep the whole base in eval mode: stage 2 changes
  the projection and nothing else.

Targets come either from a cache written by `tinyclap.train.cache.build_cache` (log-mel fp16 + teacher target per
clip: the fast path) or are computed on the fly from waveforms (`WaveformDataset` + `TeacherTargets`: the
log-mel and the teacher's embedding are computed on the training device, under no_grad).

Training state (model, optimiser, scheduler, RNG states, sampler position, best metric) is written as one
safetensors file with its JSON in the header (`stageN/last.safetensors`, a `.json` copy beside it), never a
pickle, atomically, at every epoch end and every `ckpt_every` steps; `resume=True` continues exactly, even
mid-epoch (the sampler replays the same seeded permutation and skips the batches already done).

Data parallel: under `torchrun` (WORLD_SIZE > 1) `distill` joins the process group (nccl on CUDA, gloo on
CPU); `train_stage` uses DDP and a `DistributedSampler` whenever a process group is initialised. Only rank 0
writes files; losses and cosines are all-reduced. `batch_size` is per process.

Nothing here changes global state at import. Inside a run, the RNGs are seeded and cuDNN benchmarking is
enabled on CUDA; both are restored when the run ends.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import itertools
import json
import logging
import math
import os
import platform
import random
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from tinyclap._util import atomic_write_files, remove_stale_temps
from tinyclap.models.checkpoint import (
    CheckpointError,
    atomic_write_text,
    load_state_dict_checked,
)

__all__ = [
    "DistillConfig",
    "RunResult",
    "StageResult",
    "EpochSampler",
    "MetricsLogger",
    "TeacherTargets",
    "WaveformDataset",
    "cached_batch",
    "distill",
    "read_stage_result",
    "resolve_device",
    "distill_loss",
    "select_targets",
    "split_paths",
    "train_stage",
    "train_step",
]

log = logging.getLogger("tinyclap.train.distill")

STATE_KIND = "train-state"
METRIC_FIELDS = (
    "stage", "epoch", "step", "train_loss", "val_loss", "val_cosine", "lr", "clips_per_s", "time_s",
)  # fmt: skip

BatchFn = Callable[[Any, torch.device], tuple[torch.Tensor, torch.Tensor]]


# --------------------------------------------------------------------------------------------------- loss


def select_targets(target: torch.Tensor, dims: torch.Tensor | None) -> torch.Tensor:
    """Teacher targets (B, D) restricted to `dims` (K,) and renormalised -> (B, K); unchanged when None."""
    if dims is None:
        return target
    return F.normalize(target.index_select(-1, dims), dim=-1)


def distill_loss(student_out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Eq. 7 of the paper: -mean_b cos(student_b, teacher_b). Inputs (B, D); computed in float32."""
    return -F.cosine_similarity(student_out.float(), target.float(), dim=-1).mean()


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
) -> torch.Tensor:
    """One optimisation step on a batch: logmel (B, T, M), target (B, D) -> detached loss ().

    `amp` runs the forward pass under bf16 autocast (the loss is computed in float32).
    """
    optimizer.zero_grad(set_to_none=True)
    with _autocast(logmel.device, amp):
        out = model(logmel)  # (B, K)
    loss = distill_loss(out, select_targets(target, dims))
    loss.backward()
    optimizer.step()
    return loss.detach()


# ---------------------------------------------------------------------------------------- batches / data


def cached_batch(batch: Any, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """A cache batch (logmel fp16 (B, T, M), target (B, D)) -> float32 tensors on `device`."""
    logmel, target = batch
    # copy the fp16 log-mel (half the bytes), widen on the device
    return logmel.to(device, non_blocking=True).float(), target.to(device, non_blocking=True).float()


class WaveformDataset(Dataset):
    """Audio files -> fixed-length 44.1 kHz crops for on-the-fly distillation.

    Items are `(wave (N,), teacher_wave (M,))`: the crop for the student's log-mel and, for a teacher with
    another sample rate, the same crop resampled to it (an empty tensor when the rates agree). Training
    crops are random (`fit_clip(policy="train")`) from a generator derived from (seed, epoch, index), so
    they are reproducible and independent of worker processes; index the dataset with `(epoch, index)`
    (what `EpochSampler(tag_epoch=True)` yields). Validation crops are the deterministic centre crops.
    """

    def __init__(
        self,
        paths: Sequence[str | os.PathLike],
        *,
        train: bool,
        seed: int = 1234,
        teacher_rate: int | None = None,
        clip_samples: int | None = None,
    ) -> None:
        from tinyclap.audio import CLIP_SAMPLES, SAMPLE_RATE

        self.paths = [Path(p) for p in paths]
        self.train = bool(train)
        self.seed = int(seed)
        self.sample_rate = SAMPLE_RATE
        self.teacher_rate = int(teacher_rate or SAMPLE_RATE)
        self.clip_samples = int(clip_samples or CLIP_SAMPLES)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, key: int | tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        import soxr

        from tinyclap.audio import RESAMPLE_QUALITY, fit_clip, load_audio

        epoch, index = key if isinstance(key, tuple) else (0, int(key))
        wave = load_audio(self.paths[index], self.sample_rate)  # (n,)
        if self.train:
            rng = np.random.default_rng([self.seed, epoch, index])
            clip = fit_clip(wave, self.clip_samples, policy="train", rng=rng)
        else:
            clip = fit_clip(wave, self.clip_samples, policy="eval")  # (N,)
        if self.teacher_rate == self.sample_rate:
            return torch.from_numpy(clip), torch.empty(0)
        tw = soxr.resample(clip, self.sample_rate, self.teacher_rate, quality=RESAMPLE_QUALITY)  # (M,)
        return torch.from_numpy(clip), torch.from_numpy(np.ascontiguousarray(tw, dtype=np.float32))


class TeacherTargets:
    """On-the-fly batches: (wave (B, N), teacher_wave (B, M)) -> (logmel (B, T, 64), target (B, D)) on device.

    The log-mel is MS CLAP's front end on the device (by default `tinyclap.audio.frontend.FFTLogMel`, the FFT form of
    `tinyclap.audio.frontend.LogMel` the cache uses too), in float32 outside autocast: the log of small powers
    needs the precision. The target is the teacher's normalised embedding under no_grad, in float32. A
    teacher with the same front end and `encode_audio` (CLAPTeacher) reuses the student's log-mel instead of
    computing it twice; any other teacher gets `embed_waveform` on its own-rate waveform.
    """

    def __init__(self, teacher: Any, frontend: nn.Module | None = None) -> None:
        from tinyclap.audio.frontend import FFTLogMel, LogMel

        self.teacher = teacher
        self.frontend = frontend if frontend is not None else FFTLogMel(LogMel())
        cfg = getattr(self.frontend, "frontend_config", None)
        if cfg is None and hasattr(self.frontend, "config"):
            cfg = self.frontend.config()
        t_front = getattr(teacher, "frontend", None)
        self.shared_frontend = (
            callable(getattr(teacher, "encode_audio", None))
            and int(getattr(teacher, "sample_rate", 0)) == int(getattr(self.frontend, "sample_rate", -1))
            and callable(getattr(t_front, "config", None))
            and t_front.config() == cfg
        )

    def to(self, device: torch.device) -> TeacherTargets:
        self.frontend.to(device)
        if isinstance(self.teacher, nn.Module):
            self.teacher.to(device).eval()
            self.teacher.requires_grad_(False)
        return self

    def __call__(self, batch: Any, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        wave, teacher_wave = batch
        wave = wave.to(device, non_blocking=True)  # (B, N)
        with torch.no_grad():
            logmel = self.frontend(wave)  # (B, T, M)
            if self.shared_frontend:
                target = self.teacher.encode_audio(logmel)  # (B, D)
            else:
                tw = teacher_wave.to(device, non_blocking=True) if teacher_wave.numel() else wave
                target = self.teacher.embed_waveform(tw)  # (B, D)
        return logmel, F.normalize(target.float(), dim=-1)


def split_paths(paths: Sequence[Path], val_fraction: float, seed: int) -> tuple[list[Path], list[Path]]:
    """Deterministic train/val split of a file list: a seeded permutation, at least one file on each side."""
    paths = sorted(set(Path(p) for p in paths))
    if len(paths) < 2:
        raise ValueError(
            f"need at least 2 audio files to make a train and a validation split, got {len(paths)}"
        )
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}")
    n_val = min(len(paths) - 1, max(1, round(len(paths) * val_fraction)))
    order = np.random.default_rng(seed).permutation(len(paths))
    val = sorted(paths[i] for i in order[:n_val])
    train = sorted(paths[i] for i in order[n_val:])
    return train, val


class EpochSampler(DistributedSampler):
    """torch's DistributedSampler (seeded per-epoch permutation, `set_epoch`, rank shards) that can also
    start mid-epoch (`set_start(n)` skips this rank's first n items of the SAME permutation) and can tag
    each index with its epoch (`tag_epoch=True` yields `(epoch, index)` for `WaveformDataset`).

    Works without a process group (num_replicas=1, rank=0).
    """

    def __init__(
        self,
        dataset: Dataset,
        *,
        num_replicas: int = 1,
        rank: int = 0,
        shuffle: bool = True,
        seed: int = 0,
        tag_epoch: bool = False,
    ) -> None:
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=shuffle, seed=seed)
        self.start = 0
        self.tag_epoch = tag_epoch

    def set_start(self, start: int) -> None:
        self.start = max(0, int(start))

    def __iter__(self) -> Iterator[Any]:
        it = itertools.islice(super().__iter__(), self.start, None)
        if self.tag_epoch:
            epoch = self.epoch
            return ((epoch, int(i)) for i in it)
        return it

    def __len__(self) -> int:
        return max(0, self.num_samples - self.start)


class _ValShard(Dataset):
    """This rank's share of the validation set (indices rank::world, no padding), epoch-tagged if asked."""

    def __init__(self, dataset: Dataset, rank: int, world: int, tag_epoch: bool) -> None:
        self.dataset = dataset
        self.indices = list(range(rank, len(dataset), world))
        self.tag_epoch = tag_epoch

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> Any:
        j = self.indices[i]
        return self.dataset[(0, j) if self.tag_epoch else j]


# ------------------------------------------------------------------------------------------------ metrics


class MetricsLogger:
    """metrics.csv (one row per epoch) and TensorBoard scalars (if `tensorboard` is importable); rank 0 only.

    TensorBoard events go to `tensorboard/stage{N}/`. On resume, rows and events written after the
    checkpoint being resumed are dropped (`truncate_after`), so both match an uninterrupted run.
    """

    def __init__(
        self, run_dir: str | os.PathLike | None, *, tensorboard: bool = True, enabled: bool = True
    ) -> None:
        self.enabled = enabled and run_dir is not None
        self.run_dir = Path(run_dir) if run_dir is not None else None
        self.path = self.run_dir / "metrics.csv" if self.run_dir is not None else None
        self.writers: dict[int, Any] = {}
        self._purge: dict[int, int] = {}
        self.tensorboard = False
        if self.enabled and tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter  # noqa: F401
            except ImportError:  # tensorboard is optional
                log.info("tensorboard is not installed: no TensorBoard scalars (metrics.csv is written)")
            else:
                self.tensorboard = True

    def truncate_after(self, stage: int, step: int) -> None:
        """Drop rows (and, for TensorBoard, events) of a later stage, or of `stage` after step `step`."""
        if not self.enabled:
            return
        self._purge[stage] = step + 1
        if not self.path.is_file():
            return
        with open(self.path, newline="") as f:
            rows = list(csv.DictReader(f))
        # a row cut short (the disk filled up mid-append) has missing or unparsable fields: drop it too
        keep = [r for r in rows if (key := _row_key(r)) is not None and key <= (stage, step)]
        if len(keep) != len(rows):
            lines = [",".join(METRIC_FIELDS)] + [",".join(r[k] for k in METRIC_FIELDS) for r in keep]
            atomic_write_text(self.path, "\n".join(lines) + "\n")

    def _writer(self, stage: int) -> Any:
        if stage not in self.writers:
            from torch.utils.tensorboard import SummaryWriter

            self.writers[stage] = SummaryWriter(
                log_dir=str(self.run_dir / "tensorboard" / f"stage{stage}"), purge_step=self._purge.get(stage)
            )
        return self.writers[stage]

    def write(self, row: Mapping[str, Any]) -> None:
        if not self.enabled:
            return
        new = not self.path.is_file()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            with open(self.path, "a", newline="") as f:
                if new:
                    f.write(",".join(METRIC_FIELDS) + "\n")
                f.write(",".join(_fmt(row.get(k)) for k in METRIC_FIELDS) + "\n")
        except OSError as e:  # ENOSPC/EACCES from write or close: say which file
            text = f"{e.strerror or e}; could not append to metrics.csv"
            raise OSError(e.errno, text, str(self.path)) from e
        if self.tensorboard:
            stage, step = int(row["stage"]), int(row["step"])
            writer = self._writer(stage)
            for k in ("train_loss", "val_loss", "val_cosine", "lr", "clips_per_s"):
                if row.get(k) is not None:
                    writer.add_scalar(k, float(row[k]), step)
            writer.flush()

    def close(self) -> None:
        for w in self.writers.values():
            w.close()
        self.writers = {}


def _row_key(row: Mapping[str, Any]) -> tuple[int, int] | None:
    """(stage, step) of a metrics.csv row, None for a malformed one (missing fields, not integers)."""
    if any(row.get(k) is None for k in METRIC_FIELDS):
        return None
    try:
        return int(row["stage"]), int(row["step"])
    except ValueError:
        return None


def _fmt(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        return repr(v)
    return str(v)


# ------------------------------------------------------------------------------------------ run context


@dataclass
class _Dist:
    """This process's place in the (optional) process group."""

    rank: int = 0
    world: int = 1

    @property
    def main(self) -> bool:
        return self.rank == 0

    @classmethod
    def current(cls) -> _Dist:
        if dist.is_available() and dist.is_initialized():
            return cls(dist.get_rank(), dist.get_world_size())
        return cls()

    def all_sum(self, values: Sequence[float], device: torch.device) -> list[float]:
        """Sum float64 values over ranks (identity without a process group)."""
        if self.world == 1:
            return [float(v) for v in values]
        t = torch.tensor([float(v) for v in values], dtype=torch.float64, device=device)
        dist.all_reduce(t)
        return t.tolist()

    def barrier(self) -> None:
        if self.world > 1:
            dist.barrier()


@contextlib.contextmanager
def _run_scope(seed: int, device: torch.device, deterministic: bool) -> Iterator[None]:
    """Seed python/numpy/torch and set backend flags for the run; restore all of it afterwards."""
    py_state, np_state = random.getstate(), np.random.get_state()
    cuda = device.type == "cuda"
    cuda_devices = [device.index if device.index is not None else torch.cuda.current_device()] if cuda else []
    prev_bench = torch.backends.cudnn.benchmark
    prev_det = torch.are_deterministic_algorithms_enabled()
    prev_warn = torch.is_deterministic_algorithms_warn_only_enabled()
    with torch.random.fork_rng(devices=cuda_devices):
        try:
            random.seed(seed)
            np.random.seed(seed % 2**32)
            torch.manual_seed(seed)
            if cuda:
                # autotuned convolutions: fixed input shapes make the search pay off after a few steps
                torch.backends.cudnn.benchmark = not deterministic
            if deterministic:
                torch.use_deterministic_algorithms(True)
            yield
        finally:
            torch.backends.cudnn.benchmark = prev_bench
            torch.use_deterministic_algorithms(prev_det, warn_only=prev_warn)
            random.setstate(py_state)
            np.random.set_state(np_state)


def resolve_device(device: str | torch.device | None) -> torch.device:
    """'auto'/None -> cuda (this process's local rank under torchrun) if available, else cpu."""
    if device is None or str(device) == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        return torch.device("cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and dev.index is None:
        dev = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return dev


# ------------------------------------------------------------------------------------- training state io


@dataclass
class StageResult:
    """Outcome of one stage: the best validation loss/cosine and its epoch (1-based), and per-epoch rows."""

    best_val_loss: float
    best_val_cosine: float
    best_epoch: int
    history: list[dict[str, Any]] = field(default_factory=list)
    steps: int = 0
    elapsed_s: float = 0.0


@dataclass
class _Progress:
    """Everything besides tensors that a resumed stage needs (stored as JSON)."""

    stage: int
    epoch: int = 0  # epochs completed
    step_in_epoch: int = 0  # batches of the current epoch already done (this rank)
    global_step: int = 0
    best_val_loss: float = math.inf
    best_val_cosine: float = math.nan
    best_epoch: int = 0
    loss_sum: float = 0.0  # this epoch's training loss sum (over samples, all ranks) so far
    loss_count: int = 0
    clips: int = 0  # clips trained this epoch (all ranks), for clips/s
    train_time: float = 0.0  # seconds spent training this epoch
    elapsed_s: float = 0.0
    finished: bool = False
    history: list[dict[str, Any]] = field(default_factory=list)


def _gather_rng(d: _Dist, device: torch.device) -> list[tuple[torch.Tensor, torch.Tensor | None]]:
    """(cpu, cuda) torch RNG states of every rank (collective under DDP)."""
    mine = (torch.get_rng_state(), torch.cuda.get_rng_state(device) if device.type == "cuda" else None)
    if d.world == 1:
        return [mine]
    out: list[Any] = [None] * d.world
    dist.all_gather_object(out, mine)
    return out


def _save_state(
    path: Path,
    *,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    progress: _Progress,
    rng: list[tuple[torch.Tensor, torch.Tensor | None]],
    loader_gen: torch.Generator,
    info: Mapping[str, Any],
) -> None:
    """Write the training state as one safetensors file (JSON in its header) + a JSON copy, atomically."""
    from safetensors.torch import save

    tensors: dict[str, torch.Tensor] = {f"model.{k}": v for k, v in model.state_dict().items()}
    opt = optimizer.state_dict()
    opt_scalars: dict[str, dict[str, Any]] = {}
    for pid, st in opt["state"].items():
        for name, v in st.items():
            if isinstance(v, torch.Tensor):
                tensors[f"optim.{pid}.{name}"] = v
            else:
                opt_scalars.setdefault(str(pid), {})[name] = v
    for r, (cpu, cuda) in enumerate(rng):
        tensors[f"rng.torch.{r}"] = cpu
        if cuda is not None:
            tensors[f"rng.cuda.{r}"] = cuda
    np_state = np.random.get_state()
    tensors["rng.numpy"] = torch.from_numpy(np.asarray(np_state[1], dtype=np.int64))
    tensors["rng.loader"] = loader_gen.get_state()
    py_state = random.getstate()
    meta = {
        "kind": STATE_KIND,
        "progress": dataclasses.asdict(progress),
        "optimizer": {"param_groups": opt["param_groups"], "scalars": opt_scalars},
        "scheduler": scheduler.state_dict(),
        "rng": {
            "numpy": [np_state[0], int(np_state[2]), int(np_state[3]), float(np_state[4])],
            "python": [py_state[0], list(py_state[1]), py_state[2]],
            "world_size": len(rng),
        },
        "info": dict(info),
    }
    text = json.dumps(meta, sort_keys=True)
    tensors = {k: v.detach().cpu().contiguous().clone() for k, v in tensors.items()}
    # human-readable copy without the long python RNG state; the safetensors header is what resume reads.
    # Both are staged before either is replaced, so a full disk leaves the previous state pair intact.
    readable = {**meta, "rng": {k: v for k, v in meta["rng"].items() if k != "python"}}
    atomic_write_files(
        {
            path.with_suffix(".safetensors"): save(tensors, metadata={"tinyclap": text}),
            path.with_suffix(".json"): (json.dumps(readable, indent=2, sort_keys=True) + "\n").encode(),
        }
    )


def _read_state(path: Path) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    from tinyclap.models.checkpoint import read_model

    meta, tensors = read_model(path.with_suffix(".safetensors"))
    if meta.get("kind") != STATE_KIND:
        raise CheckpointError(f"{path}: not a training-state checkpoint (kind {meta.get('kind')!r})")
    return meta, tensors


def _load_state(
    path: Path,
    *,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    loader_gen: torch.Generator,
    d: _Dist,
    device: torch.device,
) -> _Progress:
    """Restore everything `_save_state` wrote; returns the progress record."""
    meta, tensors = _read_state(path)
    src = str(path.with_suffix(".safetensors"))
    load_state_dict_checked(
        model, {k[6:]: v for k, v in tensors.items() if k.startswith("model.")}, source=f"{src} (model)"
    )
    om = meta["optimizer"]
    groups = [dict(g, betas=tuple(g["betas"])) if "betas" in g else dict(g) for g in om["param_groups"]]
    state: dict[int, dict[str, Any]] = {}
    for k, v in tensors.items():
        if k.startswith("optim."):
            _, pid, name = k.split(".", 2)
            state.setdefault(int(pid), {})[name] = v
    for pid, sc in om.get("scalars", {}).items():
        state.setdefault(int(pid), {}).update(sc)
    try:
        optimizer.load_state_dict({"state": state, "param_groups": groups})
    except (ValueError, KeyError) as e:
        raise CheckpointError(f"{src}: optimiser state does not match this stage ({e})") from e
    scheduler.load_state_dict(meta["scheduler"])
    rng = meta["rng"]
    if int(rng["world_size"]) != d.world:
        raise CheckpointError(
            f"{src}: saved by {rng['world_size']} process(es), resumed with {d.world}: an exact resume needs "
            "the same number of processes"
        )
    torch.set_rng_state(tensors[f"rng.torch.{d.rank}"])
    if device.type == "cuda" and f"rng.cuda.{d.rank}" in tensors:
        torch.cuda.set_rng_state(tensors[f"rng.cuda.{d.rank}"], device)
    kind, pos, has_gauss, gauss = rng["numpy"]
    np.random.set_state((kind, tensors["rng.numpy"].numpy().astype(np.uint32), pos, has_gauss, gauss))
    version, internal, gauss_next = rng["python"]
    random.setstate((version, tuple(internal), gauss_next))
    loader_gen.set_state(tensors["rng.loader"])
    return _Progress(**meta["progress"])


def read_stage_result(stage_dir: str | os.PathLike) -> StageResult | None:
    """The result of a finished stage from its `last` checkpoint (None if absent or unfinished)."""
    path = Path(stage_dir) / "last.safetensors"
    if not path.is_file():
        return None
    meta, _ = _read_state(path)
    p = _Progress(**meta["progress"])
    if not p.finished:
        return None
    return StageResult(
        p.best_val_loss, p.best_val_cosine, p.best_epoch, p.history, p.global_step, p.elapsed_s
    )


# ------------------------------------------------------------------------------------------- one stage


def _set_train_mode(model: nn.Module, student: nn.Module, stage: int) -> None:
    model.train()
    if stage == 2:
        # explicit: the frozen base stays in eval mode, so its BatchNorm running statistics (and dropout)
        # do not change; only the projection head trains
        student.base.eval()


@torch.no_grad()
def _validate(
    student: nn.Module,
    loader: DataLoader,
    batch_fn: BatchFn,
    device: torch.device,
    amp: bool,
    dims: torch.Tensor | None,
    d: _Dist,
) -> tuple[float, float]:
    """(val_loss, val_cosine) over the whole validation split (all ranks): loss = -mean cosine."""
    was_training = [(m, m.training) for m in student.modules()]
    student.eval()
    if d.world > 1:
        # under DDP each rank's BN running statistics moved with its own last batch: validate (and save)
        # with rank 0's, as the checkpoint will hold
        for buf in student.buffers():
            dist.broadcast(buf, 0)
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


def train_stage(
    student: nn.Module,
    train_ds: Dataset,
    val_ds: Dataset,
    *,
    stage: int,
    epochs: int,
    lr: float,
    batch_size: int = 64,
    seed: int = 1234,
    device: str | torch.device = "cpu",
    target_dims: Sequence[int] | None = None,
    out_dir: str | os.PathLike | None = None,
    resume: bool = False,
    progress: bool = True,
    workers: int = 0,
    val_every: int = 1,
    ckpt_every: int = 0,
    plateau_factor: float = 0.1,
    plateau_patience: int = 10,
    amp: bool | None = None,
    channels_last: bool | None = None,
    compile: bool = False,
    deterministic: bool = False,
    batch_fn: BatchFn | None = None,
    tag_epoch: bool = False,
    metrics: MetricsLogger | None = None,
    save_extra: Mapping[str, Any] | None = None,
    step_hook: Callable[[int], None] | None = None,
) -> StageResult:
    """Train `student` (a TinyCLAPStudent: `.base` + `.projection`) against teacher targets; one stage.

    stage 1 trains every parameter; stage 2 only the projection (base frozen AND in eval mode). Adam at
    `lr`, ReduceLROnPlateau(`plateau_factor`, `plateau_patience`) on the validation loss, validation every
    `val_every` epochs and after the last. The best epoch is chosen on the VALIDATION loss; when the stage
    ends the student holds the best weights (on `device`).

    Data: items of `train_ds`/`val_ds` are collated and passed to `batch_fn(batch, device) -> (logmel
    (B, T, M), target (B, D))`; the default `cached_batch` takes cache items `(logmel fp16, target)`.
    `target_dims` slices the targets to those entries and renormalises them (the student's embed_dim must be
    len(target_dims)). With `out_dir`, writes `best.*` (a loadable student), `last.*` (the full training
    state, every epoch end and every `ckpt_every` steps) and metrics; `resume=True` continues from `last`
    exactly. `amp`/`channels_last` default to True on CUDA (bf16 autocast). `step_hook(global_step)` is called
    after each optimiser step (and its checkpoint), e.g. to stop a run in tests.
    """
    if stage not in (1, 2):
        raise ValueError(f"stage must be 1 (whole student) or 2 (projection only), got {stage}")
    if epochs < 1 or batch_size < 1 or lr <= 0 or val_every < 1 or ckpt_every < 0:
        raise ValueError(
            "need epochs >= 1, batch_size >= 1, lr > 0, val_every >= 1, ckpt_every >= 0; got "
            f"epochs={epochs}, batch_size={batch_size}, lr={lr}, val_every={val_every}, "
            f"ckpt_every={ckpt_every}"
        )
    if stage == 2 and not (hasattr(student, "base") and hasattr(student, "projection")):
        raise ValueError("stage 2 needs a student with .base and .projection")
    if len(val_ds) == 0 or len(train_ds) == 0:
        raise ValueError(f"empty split: {len(train_ds)} training and {len(val_ds)} validation items")
    out = Path(out_dir) if out_dir is not None else None
    if resume and out is None:
        raise ValueError("resume=True needs out_dir (where the training state is)")
    dev = resolve_device(device)
    d = _Dist.current()
    amp = dev.type == "cuda" if amp is None else bool(amp)
    channels_last = dev.type == "cuda" if channels_last is None else bool(channels_last)
    batch_fn = batch_fn or cached_batch
    dims = None
    if target_dims is not None:
        dims = torch.as_tensor(list(target_dims), dtype=torch.long, device=dev)
        if dims.numel() != getattr(student, "embed_dim", dims.numel()):
            raise ValueError(
                f"student embed_dim {student.embed_dim} differs from len(target_dims) = {dims.numel()}"
            )
    owns_metrics = metrics is None
    if metrics is None:
        metrics = MetricsLogger(out, tensorboard=False, enabled=d.main and out is not None)

    frozen = [(p, p.requires_grad) for p in student.base.parameters()] if stage == 2 else []
    with _run_scope(seed + d.rank, dev, deterministic):
        try:
            return _train_stage(
                student, train_ds, val_ds, stage=stage, epochs=epochs, lr=lr, batch_size=batch_size,
                seed=seed, dev=dev, d=d, dims=dims, out=out, resume=resume, progress=progress,
                workers=workers, val_every=val_every, ckpt_every=ckpt_every, plateau_factor=plateau_factor,
                plateau_patience=plateau_patience, amp=amp, channels_last=channels_last, compile=compile,
                batch_fn=batch_fn, tag_epoch=tag_epoch, metrics=metrics, save_extra=save_extra or {},
                step_hook=step_hook,
            )  # fmt: skip
        finally:
            for p, flag in frozen:
                p.requires_grad_(flag)
            if owns_metrics:
                metrics.close()


def _train_stage(
    student: nn.Module,
    train_ds: Dataset,
    val_ds: Dataset,
    *,
    stage: int,
    epochs: int,
    lr: float,
    batch_size: int,
    seed: int,
    dev: torch.device,
    d: _Dist,
    dims: torch.Tensor | None,
    out: Path | None,
    resume: bool,
    progress: bool,
    workers: int,
    val_every: int,
    ckpt_every: int,
    plateau_factor: float,
    plateau_patience: int,
    amp: bool,
    channels_last: bool,
    compile: bool,
    batch_fn: BatchFn,
    tag_epoch: bool,
    metrics: MetricsLogger,
    save_extra: Mapping[str, Any],
    step_hook: Callable[[int], None] | None,
) -> StageResult:
    from tqdm.auto import tqdm

    from tinyclap.models import save_student

    student.to(dev)
    if channels_last:
        student.to(memory_format=torch.channels_last)
    if stage == 2:
        student.base.requires_grad_(False)
        params = [p for p in student.projection.parameters()]
    else:
        params = [p for p in student.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(params, lr=lr)
    scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
        optimizer, mode="min", factor=plateau_factor, patience=plateau_patience
    )
    # the loader's own generator: creating an iterator then never draws from the global RNG (dropout's)
    loader_gen = torch.Generator().manual_seed(seed)
    sampler = EpochSampler(
        train_ds, num_replicas=d.world, rank=d.rank, shuffle=True, seed=seed, tag_epoch=tag_epoch
    )
    pin = dev.type == "cuda"
    common: dict[str, Any] = dict(num_workers=workers, pin_memory=pin, persistent_workers=workers > 0)
    train_loader = DataLoader(
        train_ds, batch_size=batch_size, sampler=sampler, generator=loader_gen, **common
    )
    val_loader = DataLoader(_ValShard(val_ds, d.rank, d.world, tag_epoch), batch_size=batch_size, **common)

    prog = _Progress(stage=stage)
    last_path = out / "last" if out is not None else None
    if resume and last_path is not None and last_path.with_suffix(".safetensors").is_file():
        prog = _load_state(
            last_path, model=student, optimizer=optimizer, scheduler=scheduler, loader_gen=loader_gen, d=d,
            device=dev,
        )  # fmt: skip
        if prog.stage != stage:
            raise CheckpointError(f"{last_path}.safetensors: holds stage {prog.stage}, not stage {stage}")
        log.info(
            "stage %d: resumed at epoch %d, batch %d (step %d)", stage, prog.epoch + 1, prog.step_in_epoch,
            prog.global_step,
        )  # fmt: skip

    # rows a killed run wrote after its last checkpoint (or for a stage that had none yet) are stale
    metrics.truncate_after(stage, prog.global_step)
    best_state: dict[str, torch.Tensor] | None = None
    if prog.best_epoch > 0 and out is not None and (out / "best.safetensors").is_file():
        from tinyclap.models.checkpoint import read_model

        best_state = read_model(out / "best.safetensors")[1]

    model: nn.Module = student
    if d.world > 1:
        from torch.nn.parallel import DistributedDataParallel as DDP

        model = DDP(student, device_ids=[dev.index] if dev.type == "cuda" else None)
    if compile:
        model = torch.compile(model)

    t_mark = time.perf_counter()

    def tick() -> float:
        """Fold the wall time since the last call into prog.elapsed_s (kept across resumes)."""
        nonlocal t_mark
        now = time.perf_counter()
        prog.elapsed_s += now - t_mark
        t_mark = now
        return prog.elapsed_s

    def save_last() -> None:
        rng = _gather_rng(d, dev)  # collective: every rank calls it
        tick()
        if d.main and last_path is not None:
            _save_state(
                last_path, model=student, optimizer=optimizer, scheduler=scheduler, progress=prog, rng=rng,
                loader_gen=loader_gen, info={"student": getattr(student, "name", None), **save_extra},
            )  # fmt: skip

    bar_disabled = not (progress and d.main)
    for epoch in range(prog.epoch, epochs):
        sampler.set_epoch(epoch)
        sampler.set_start(prog.step_in_epoch * batch_size)
        n_batches = prog.step_in_epoch + len(train_loader)
        _set_train_mode(model, student, stage)
        loss_sum = torch.zeros((), dtype=torch.float64, device=dev)  # since the last fold into prog
        n_local = 0
        shown_sum = torch.zeros((), dtype=torch.float64, device=dev)  # this rank, for the progress bar
        shown_n = 0
        bar = tqdm(
            total=n_batches, initial=prog.step_in_epoch, disable=bar_disabled, unit="batch", leave=False,
            desc=f"stage {stage} epoch {epoch + 1}/{epochs}", dynamic_ncols=True,
        )  # fmt: skip
        t_epoch = t_shown = time.perf_counter()
        for batch in train_loader:
            logmel, target = batch_fn(batch, dev)
            loss = train_step(model, optimizer, logmel, target, amp=amp, dims=dims)
            b = logmel.shape[0]
            loss_sum += loss.double() * b
            shown_sum += loss.double() * b
            n_local += b
            shown_n += b
            prog.step_in_epoch += 1
            prog.global_step += 1
            bar.update(1)
            if not bar_disabled and (prog.step_in_epoch % 10 == 0 or prog.step_in_epoch == n_batches):
                # .item() syncs with the device: only every 10 batches
                clips_s = shown_n * d.world / max(time.perf_counter() - t_shown, 1e-9)
                bar.set_postfix(loss=f"{shown_sum.item() / shown_n:.4f}", clips_s=f"{clips_s:.1f}")
            mid_ckpt = ckpt_every and prog.global_step % ckpt_every == 0 and prog.step_in_epoch < n_batches
            if mid_ckpt:
                # fold this rank's running sums into the (all-reduced) progress record before saving
                s, c = d.all_sum([loss_sum.item(), n_local], dev)
                prog.loss_sum += s
                prog.loss_count += int(c)
                prog.clips += int(c)
                prog.train_time += time.perf_counter() - t_epoch
                loss_sum.zero_()
                n_local = 0
                t_epoch = time.perf_counter()
                save_last()
            if step_hook is not None:
                step_hook(prog.global_step)
        bar.close()
        s, c = d.all_sum([loss_sum.item(), n_local], dev)
        prog.loss_sum += s
        prog.loss_count += int(c)
        prog.clips += int(c)
        prog.train_time += time.perf_counter() - t_epoch
        train_loss = prog.loss_sum / max(1, prog.loss_count)
        clips_per_s = prog.clips / max(prog.train_time, 1e-9)

        val_loss = val_cos = None
        if (epoch + 1) % val_every == 0 or epoch + 1 == epochs:
            val_loss, val_cos = _validate(student, val_loader, batch_fn, dev, amp, dims, d)
            scheduler.step(val_loss)
            if val_loss < prog.best_val_loss:
                prog.best_val_loss, prog.best_val_cosine, prog.best_epoch = val_loss, val_cos, epoch + 1
                best_state = {k: v.detach().clone() for k, v in student.state_dict().items()}
                if d.main and out is not None:
                    extra = dict(
                        save_extra, stage=stage, epoch=epoch + 1, val_loss=val_loss, val_cosine=val_cos
                    )
                    save_student(student, out / "best", **extra)
        row = {
            "stage": stage, "epoch": epoch + 1, "step": prog.global_step, "train_loss": train_loss,
            "val_loss": val_loss, "val_cosine": val_cos, "lr": optimizer.param_groups[0]["lr"],
            "clips_per_s": clips_per_s, "time_s": tick(),
        }  # fmt: skip
        prog.history.append(row)
        if d.main:
            metrics.write(row)
            val_txt = "" if val_loss is None else f" val_loss {val_loss:.4f} val_cosine {val_cos:.4f}"
            log.info(
                "stage %d epoch %d/%d: train_loss %.4f%s lr %.3g, %.1f clips/s", stage, epoch + 1, epochs,
                train_loss, val_txt, row["lr"], clips_per_s,
            )  # fmt: skip
        prog.epoch = epoch + 1
        prog.step_in_epoch = 0
        prog.loss_sum, prog.loss_count, prog.clips, prog.train_time = 0.0, 0, 0, 0.0
        prog.finished = prog.epoch == epochs
        save_last()

    if best_state is not None:
        student.load_state_dict(best_state)
    return StageResult(
        prog.best_val_loss,
        prog.best_val_cosine,
        prog.best_epoch,
        list(prog.history),
        prog.global_step,
        tick(),
    )


# ------------------------------------------------------------------------------------------ whole run


@dataclass
class DistillConfig:
    """Every setting of a distillation run (the CLI's arguments). Paper defaults (tinyCLAP, Sec. 3)."""

    out: str
    student: str | None = None
    cache: str | None = None
    teacher: str | None = None
    data: list[str] = field(default_factory=list)
    stages: tuple[int, ...] = (1, 2)
    init: str | None = None
    epochs1: int = 100
    epochs2: int = 10
    lr1: float = 0.012
    lr2: float = 0.004
    batch_size: int = 64
    seed: int = 1234
    workers: int = 4
    val_every: int = 1
    ckpt_every: int = 500
    plateau_factor: float = 0.1
    plateau_patience: int = 10
    val_fraction: float = 0.1  # on-the-fly targets only (a cache has its own split)
    device: str = "auto"
    compile: bool = False
    deterministic: bool = False
    resume: bool = False
    progress: bool = True
    tensorboard: bool = True
    target_dims: list[int] | None = None
    # cache targets only: train on random crops of this many seconds of each cached clip (validation keeps
    # the whole clip); shorter crops buy more steps on a CPU, the target stays the whole clip's embedding
    train_crop_seconds: float | None = None

    def validate(self) -> None:
        if self.cache is None and not (self.teacher and self.data):
            raise ValueError("give the targets: --cache DIR, or --teacher CKPT with --data SPEC (on the fly)")
        if self.cache is not None and (self.teacher or self.data):
            raise ValueError(
                "--cache and --teacher/--data are exclusive: the cache already holds the targets"
            )
        stages = tuple(self.stages)
        if not stages or any(s not in (1, 2) for s in stages) or list(stages) != sorted(set(stages)):
            raise ValueError(f"stages must be 1, 2 or 1,2; got {','.join(map(str, stages))}")
        if stages == (2,) and not self.init:
            raise ValueError("--stages 2 alone needs --init CKPT (the stage-1 student to start from)")
        if self.train_crop_seconds is not None and (self.cache is None or self.train_crop_seconds <= 0):
            raise ValueError("--train-crop-seconds needs --cache and a positive length")
        if not self.student and not self.init:
            raise ValueError("give --student NAME (or --init CKPT to start from a trained student)")


@dataclass
class RunResult:
    """A finished run: its folder, per-stage results, the final student's path and validation cosine."""

    run_dir: Path
    stages: dict[int, StageResult]
    student_path: Path | None
    val_cosine: float
    elapsed_s: float
    student: str = "student"

    def summary(self) -> str:
        """Val cosine and best epoch per stage, times, and the final student's path."""
        lines = [f"distilled {self.student} into {self.run_dir} in {self.elapsed_s:.1f} s"]
        for s, r in self.stages.items():
            lines.append(
                f"  stage {s}: best val_cosine {r.best_val_cosine:.4f} (val_loss {r.best_val_loss:.4f}) "
                f"at epoch {r.best_epoch}, {r.steps} steps, {r.elapsed_s:.1f} s"
            )
        lines.append(f"  final student: {self.student_path}")
        return "\n".join(lines)


def _versions() -> dict[str, str]:
    import tinyclap

    out = {"tinyclap": tinyclap.__version__, "torch": torch.__version__, "numpy": np.__version__}
    out["python"] = sys.version.split()[0]
    out["platform"] = platform.platform()
    with contextlib.suppress(Exception):
        import safetensors

        out["safetensors"] = safetensors.__version__
    return out


def _compact(obj: Any, limit: int = 50) -> Any:
    """JSON-able copy of a config with long lists (file lists) replaced by their length."""
    if isinstance(obj, Mapping):
        return {str(k): _compact(v, limit) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_compact(v, limit) for v in obj] if len(obj) <= limit else f"<{len(obj)} items>"
    if isinstance(obj, (str, int, float, bool)) or obj is None:
        return obj
    return str(obj)


# settings that must not change between a run and its resumption (else the resume is not exact)
_RESUME_KEYS = (
    "student",
    "cache",
    "teacher",
    "data",
    "init",
    "batch_size",
    "seed",
    "lr1",
    "lr2",
    "world_size",
    "train_crop_seconds",
)


# files of a run folder (and its stage folders) written atomically, whose orphan temp files a resume removes
_RUN_FILES = (
    "config.json", "metrics.csv", "student.safetensors", "student.json",
    "last.safetensors", "last.json", "best.safetensors", "best.json",
)  # fmt: skip


@contextlib.contextmanager
def _log_to(run_dir: Path | None, verbose: bool) -> Iterator[None]:
    handlers: list[logging.Handler] = []
    if run_dir is not None:
        fh = logging.FileHandler(run_dir / "train.log")
        fh.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
        handlers.append(fh)
    if verbose:
        sh = logging.StreamHandler(sys.stderr)
        sh.setFormatter(logging.Formatter("%(message)s"))
        sh.addFilter(lambda record: not getattr(record, "file_only", False))
        handlers.append(sh)
    prev_level, prev_prop = log.level, log.propagate
    log.setLevel(logging.INFO)
    log.propagate = False
    for h in handlers:
        log.addHandler(h)
    try:
        yield
    finally:
        for h in handlers:
            log.removeHandler(h)
            h.close()
        log.setLevel(prev_level)
        log.propagate = prev_prop


def _init_process_group(device: torch.device) -> bool:
    """Join the torchrun process group (WORLD_SIZE > 1) unless already in one; True if we created it."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or (dist.is_available() and dist.is_initialized()):
        return False
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return True


def distill(config: DistillConfig, *, step_hook: Callable[[int, int], None] | None = None) -> RunResult:
    """Run a whole distillation (stages 1 and/or 2) into `config.out`; see the module doc.

    Writes config.json, metrics.csv, train.log, tensorboard/ (if available), stage{1,2}/{best,last}.* and the
    final student (student.safetensors + student.json, loadable with `tinyclap.models.load_model(out)`).
    `step_hook(stage, global_step)` is for tests (e.g. to interrupt a run).
    """
    config.validate()
    dev = resolve_device(config.device)
    created = _init_process_group(dev)
    try:
        result = _distill(config, dev, step_hook)
        if created:
            dist.barrier()  # only on success: after an error the other ranks may never get here
        return result
    finally:
        if created:
            dist.destroy_process_group()


def _distill(
    config: DistillConfig, dev: torch.device, step_hook: Callable[[int, int], None] | None
) -> RunResult:
    from tinyclap.models import load_student, save_student
    from tinyclap.models.students import create_student

    t0 = time.perf_counter()
    d = _Dist.current()
    run = Path(config.out)
    existing = run.is_dir() and any(run.glob("stage*/last.safetensors"))
    if existing and not config.resume:
        raise ValueError(f"{run}: already holds a run; pass --resume to continue it or choose another --out")
    d.barrier()  # every rank has checked the folder before rank 0 writes to it
    if d.main:
        run.mkdir(parents=True, exist_ok=True)
        # orphan temp files of a killed run's atomic writes (never read; only rank 0 writes here)
        for folder in (run, run / "stage1", run / "stage2"):
            remove_stale_temps(folder, _RUN_FILES)
    d.barrier()

    # ---- targets: a cache, or a teacher on the fly
    batch_fn: BatchFn = cached_batch
    tag_epoch = False
    teacher_info: dict[str, Any]
    cache_info: dict[str, Any] | None = None
    if config.cache is not None:
        from tinyclap.train.cache import CachedDataset, CacheStore

        store = CacheStore(config.cache)
        crop_frames = None
        if config.train_crop_seconds is not None:
            crop_frames = int(round(config.train_crop_seconds * store.n_frames / float(store.config.get(
                "clip_seconds", 5.0))))
        train_ds: Dataset = CachedDataset(store, split="train", crop_frames=crop_frames)
        val_ds: Dataset = CachedDataset(store, split="val")
        embed_dim = int(store.embed_dim)
        cache_cfg = _compact(store.config)
        cache_info = {"dir": str(Path(config.cache).resolve()), "config": cache_cfg, "clips": len(store)}
        teacher_info = cache_cfg.get("teacher", {}) if isinstance(cache_cfg, dict) else {}
        if not isinstance(teacher_info, dict):
            teacher_info = {"teacher": teacher_info}
    else:
        from tinyclap.data.datasets import parse_data_spec
        from tinyclap.models import load_model

        paths: list[Path] = []
        for spec in config.data:
            paths += parse_data_spec(spec)
        train_paths, val_paths = split_paths(paths, config.val_fraction, config.seed)
        teacher = load_model(config.teacher)
        rate = int(teacher.sample_rate)
        train_ds = WaveformDataset(train_paths, train=True, seed=config.seed, teacher_rate=rate)
        val_ds = WaveformDataset(val_paths, train=False, seed=config.seed, teacher_rate=rate)
        batch_fn = TeacherTargets(teacher).to(dev)
        tag_epoch = True
        embed_dim = int(teacher.embed_dim)
        teacher_info = {
            "checkpoint": str(Path(config.teacher).resolve()),
            "type": type(teacher).__name__,
            "sample_rate": rate,
            "embed_dim": embed_dim,
        }
    if config.target_dims is not None:
        embed_dim = len(config.target_dims)

    # ---- the student (seeded init; DDP broadcasts rank 0's weights anyway)
    with _run_scope(config.seed, dev, False):
        if config.init:
            student = load_student(config.init)
            if config.student and config.student != student.name:
                raise ValueError(
                    f"--init {config.init} holds {student.name!r}, not --student {config.student!r}"
                )
        else:
            student = create_student(config.student, embed_dim=embed_dim)
    if student.embed_dim != embed_dim:
        raise ValueError(f"student embed_dim {student.embed_dim} differs from the targets' {embed_dim}")

    resolved = {
        **{k: (list(v) if isinstance(v, tuple) else v) for k, v in dataclasses.asdict(config).items()},
        "student": student.name,
        "embed_dim": embed_dim,
        "device": str(dev),
        "world_size": d.world,
        "train_clips": len(train_ds),
        "val_clips": len(val_ds),
        "cache_info": cache_info,
        "teacher_info": teacher_info,
        "versions": _versions(),
    }
    cfg_path = run / "config.json"
    if config.resume and cfg_path.is_file():
        old = json.loads(cfg_path.read_text())
        changed = [k for k in _RESUME_KEYS if old.get(k) != resolved.get(k)]
        if changed:
            diffs = ", ".join(f"{k}: {old.get(k)!r} -> {resolved.get(k)!r}" for k in changed)
            raise ValueError(f"{run}: cannot resume with different settings ({diffs})")
    if d.main:
        atomic_write_text(cfg_path, json.dumps(resolved, indent=2, sort_keys=True) + "\n")

    results: dict[int, StageResult] = {}
    with _log_to(run if d.main else None, verbose=d.main and config.progress):
        metrics = MetricsLogger(run, tensorboard=config.tensorboard, enabled=d.main)
        log.info(
            "distilling %s (%d params) on %s x%d: %d train / %d val clips, embed_dim %d",
            student.name, sum(p.numel() for p in student.parameters()), dev, d.world, len(train_ds),
            len(val_ds), embed_dim,
        )  # fmt: skip
        try:
            for stage in config.stages:
                stage_dir = run / f"stage{stage}"
                done = read_stage_result(stage_dir) if config.resume else None
                if done is not None:
                    log.info("stage %d: already finished (best epoch %d), skipped", stage, done.best_epoch)
                    results[stage] = done
                    if (stage_dir / "best.safetensors").is_file():
                        load_state_dict_checked(
                            student, _student_tensors(stage_dir / "best"), source=str(stage_dir / "best")
                        )
                    continue
                hook = (lambda step, s=stage: step_hook(s, step)) if step_hook is not None else None
                results[stage] = train_stage(
                    student, train_ds, val_ds, stage=stage,
                    epochs=config.epochs1 if stage == 1 else config.epochs2,
                    lr=config.lr1 if stage == 1 else config.lr2,
                    batch_size=config.batch_size, seed=config.seed, device=dev,
                    target_dims=config.target_dims, out_dir=stage_dir, resume=config.resume,
                    progress=config.progress, workers=config.workers,
                    val_every=config.val_every, ckpt_every=config.ckpt_every,
                    plateau_factor=config.plateau_factor, plateau_patience=config.plateau_patience,
                    compile=config.compile, deterministic=config.deterministic, batch_fn=batch_fn,
                    tag_epoch=tag_epoch, metrics=metrics, save_extra={"teacher": teacher_info},
                    step_hook=hook,
                )  # fmt: skip
        finally:
            metrics.close()

        final = results[config.stages[-1]]
        student_path = None
        if d.main:
            student.cpu()
            student_path = save_student(
                student.to(memory_format=torch.contiguous_format), run / "student", teacher=teacher_info,
                val_cosine=final.best_val_cosine, cache=cache_info,
                distill={
                    f"stage{s}": {"val_cosine": r.best_val_cosine, "val_loss": r.best_val_loss,
                                  "best_epoch": r.best_epoch}
                    for s, r in results.items()
                },
            )  # fmt: skip
        elapsed = time.perf_counter() - t0
        result = RunResult(run, results, student_path, final.best_val_cosine, elapsed, student.name)
        if d.main:
            log.info(result.summary(), extra={"file_only": True})  # the CLI prints it
    return result


def _student_tensors(path: Path) -> dict[str, torch.Tensor]:
    from tinyclap.models.checkpoint import read_model

    return read_model(path.with_suffix(".safetensors"))[1]
