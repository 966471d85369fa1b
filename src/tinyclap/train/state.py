"""Training state of a stage: what a checkpoint holds, how it is written and read back, and the run's RNG
scope.

The state (model, optimiser, scheduler, RNG states of every rank, the loader's generator, the progress
record) is one safetensors file with its JSON in the header (`stageN/last.safetensors`, a readable `.json`
copy beside it), never a pickle, written atomically; `load_state` restores it exactly, so a resumed stage
continues bit for bit, even mid-epoch.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import random
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from tinyclap._util import atomic_write_files
from tinyclap.models.checkpoint import CheckpointError, load_state_dict_checked, read_model
from tinyclap.train.dist import Dist

__all__ = [
    "STATE_KIND",
    "StageProgress",
    "StageResult",
    "Trainables",
    "gather_rng",
    "load_state",
    "read_stage_result",
    "read_state",
    "read_tensors",
    "run_scope",
    "save_state",
]

STATE_KIND = "train-state"

RngStates = list[tuple[torch.Tensor, torch.Tensor | None]]  # (cpu, cuda) torch RNG state per rank


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
class StageProgress:
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
    term_sums: dict[str, float] = field(default_factory=dict)  # this epoch's sums per loss term (train.losses)
    elapsed_s: float = 0.0
    finished: bool = False
    history: list[dict[str, Any]] = field(default_factory=list)

    def result(self) -> StageResult:
        """The stage's result as far as it got."""
        return StageResult(
            self.best_val_loss, self.best_val_cosine, self.best_epoch, list(self.history), self.global_step,
            self.elapsed_s,
        )  # fmt: skip


@dataclass
class Trainables:
    """The objects whose state a training checkpoint holds besides the RNGs and the progress record."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: Any
    loader_gen: torch.Generator


# ---------------------------------------------------------------------------------------------- RNG


@contextlib.contextmanager
def run_scope(seed: int, device: torch.device, deterministic: bool) -> Iterator[None]:
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


def gather_rng(d: Dist, device: torch.device) -> RngStates:
    """(cpu, cuda) torch RNG states of every rank (collective under DDP)."""
    mine = (torch.get_rng_state(), torch.cuda.get_rng_state(device) if device.type == "cuda" else None)
    return d.all_gather(mine)


def _restore_rng(meta_rng: Mapping[str, Any], tensors: Mapping[str, torch.Tensor], d: Dist,
                 device: torch.device, src: str) -> None:
    """Set this rank's torch (cpu, cuda), numpy and python RNG states to the saved ones."""
    if int(meta_rng["world_size"]) != d.world:
        raise CheckpointError(
            f"{src}: saved by {meta_rng['world_size']} process(es), resumed with {d.world}: an exact resume "
            "needs the same number of processes"
        )
    torch.set_rng_state(tensors[f"rng.torch.{d.rank}"])
    if device.type == "cuda" and f"rng.cuda.{d.rank}" in tensors:
        torch.cuda.set_rng_state(tensors[f"rng.cuda.{d.rank}"], device)
    kind, pos, has_gauss, gauss = meta_rng["numpy"]
    np.random.set_state((kind, tensors["rng.numpy"].numpy().astype(np.uint32), pos, has_gauss, gauss))
    version, internal, gauss_next = meta_rng["python"]
    random.setstate((version, tuple(internal), gauss_next))


# -------------------------------------------------------------------------------------------- save


def _state_tensors(objs: Trainables, rng: RngStates) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The checkpoint's tensors (model, optimiser tensors, RNG states) and the optimiser's non-tensor state."""
    tensors: dict[str, torch.Tensor] = {f"model.{k}": v for k, v in objs.model.state_dict().items()}
    opt_scalars: dict[str, dict[str, Any]] = {}
    for pid, st in objs.optimizer.state_dict()["state"].items():
        for name, v in st.items():
            if isinstance(v, torch.Tensor):
                tensors[f"optim.{pid}.{name}"] = v
            else:
                opt_scalars.setdefault(str(pid), {})[name] = v
    for r, (cpu, cuda) in enumerate(rng):
        tensors[f"rng.torch.{r}"] = cpu
        if cuda is not None:
            tensors[f"rng.cuda.{r}"] = cuda
    tensors["rng.numpy"] = torch.from_numpy(np.asarray(np.random.get_state()[1], dtype=np.int64))
    tensors["rng.loader"] = objs.loader_gen.get_state()
    return tensors, opt_scalars


def save_state(path: Path, objs: Trainables, progress: StageProgress, rng: RngStates,
               info: Mapping[str, Any]) -> None:
    """Write the training state as one safetensors file (JSON in its header) + a JSON copy, atomically."""
    from safetensors.torch import save

    tensors, opt_scalars = _state_tensors(objs, rng)
    np_state, py_state = np.random.get_state(), random.getstate()
    meta = {
        "kind": STATE_KIND,
        "progress": dataclasses.asdict(progress),
        "optimizer": {"param_groups": objs.optimizer.state_dict()["param_groups"], "scalars": opt_scalars},
        "scheduler": objs.scheduler.state_dict(),
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


# -------------------------------------------------------------------------------------------- load


def read_state(path: Path) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """(metadata, tensors) of a training-state checkpoint; CheckpointError for any other kind of file."""
    meta, tensors = read_model(path.with_suffix(".safetensors"))
    if meta.get("kind") != STATE_KIND:
        raise CheckpointError(f"{path}: not a training-state checkpoint (kind {meta.get('kind')!r})")
    return meta, tensors


def read_tensors(path: Path) -> dict[str, torch.Tensor]:
    """The tensors of our safetensors checkpoint `path` (suffix replaced by .safetensors)."""
    return read_model(path.with_suffix(".safetensors"))[1]


def _load_optimizer(optimizer: torch.optim.Optimizer, meta_opt: Mapping[str, Any],
                    tensors: Mapping[str, torch.Tensor], src: str) -> None:
    groups = [dict(g, betas=tuple(g["betas"])) if "betas" in g else dict(g) for g in meta_opt["param_groups"]]
    state: dict[int, dict[str, Any]] = {}
    for k, v in tensors.items():
        if k.startswith("optim."):
            _, pid, name = k.split(".", 2)
            state.setdefault(int(pid), {})[name] = v
    for pid, sc in meta_opt.get("scalars", {}).items():
        state.setdefault(int(pid), {}).update(sc)
    try:
        optimizer.load_state_dict({"state": state, "param_groups": groups})
    except (ValueError, KeyError) as e:
        raise CheckpointError(f"{src}: optimiser state does not match this stage ({e})") from e


def load_state(path: Path, objs: Trainables, d: Dist, device: torch.device) -> StageProgress:
    """Restore everything `save_state` wrote; returns the progress record."""
    meta, tensors = read_state(path)
    src = str(path.with_suffix(".safetensors"))
    load_state_dict_checked(
        objs.model, {k[6:]: v for k, v in tensors.items() if k.startswith("model.")}, source=f"{src} (model)"
    )
    _load_optimizer(objs.optimizer, meta["optimizer"], tensors, src)
    objs.scheduler.load_state_dict(meta["scheduler"])
    _restore_rng(meta["rng"], tensors, d, device, src)
    objs.loader_gen.set_state(tensors["rng.loader"])
    return StageProgress(**meta["progress"])


def read_stage_result(stage_dir: str | os.PathLike) -> StageResult | None:
    """The result of a finished stage from its `last` checkpoint (None if absent or unfinished)."""
    path = Path(stage_dir) / "last.safetensors"
    if not path.is_file():
        return None
    meta, _ = read_state(path)
    p = StageProgress(**meta["progress"])
    return p.result() if p.finished else None
