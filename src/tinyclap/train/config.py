"""Settings of a distillation: `DistillConfig` (a whole run, the CLI's arguments; every default once) and
`StageOptions` (one stage of `tinyclap.train.loop.train_stage`).

Torch-free on purpose: `tinyclap distill --help` reads its defaults from `DistillConfig` without importing
torch.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # annotations only: this module stays importable without torch
    import os

    import torch

    from tinyclap.train.losses import DistillLoss
    from tinyclap.train.metrics import MetricsLogger

    BatchFn = Callable[[Any, torch.device], tuple[torch.Tensor, torch.Tensor]]

from tinyclap.train.recipes import Recipe, resolve_recipe

__all__ = ["DistillConfig", "StageOptions"]


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
    # train and validate as a small device runs the student (`--pool-window`): each log-mel cut into windows
    # of this many seconds, the backbone run per window, the features averaged, the head run once per clip
    pool_window: float | None = None
    # the loss (tinyclap.train.recipes): a named preset; None fields take the preset's value
    recipe: str = "paper"
    cos_weight: float | None = None
    kl_weight: float | None = None
    kl_temperature: float | None = None
    rel_weight: float | None = None
    # augmentations (None: the recipe's): the cache's augmented views (tinyclap cache --views K; asked for on
    # a cache without views: an error naming it) and SpecAugment masks on the student's training log-mels
    views: bool | None = None
    spec_augment: bool | None = None
    schedule: str | None = None  # the learning-rate schedule (None: the recipe's): plateau or cosine

    def resolved_recipe(self) -> Recipe:
        """The recipe's settings with this config's overrides (ValueError on an unknown recipe or bad value)."""
        return resolve_recipe(
            self.recipe, cos_weight=self.cos_weight, kl_weight=self.kl_weight,
            kl_temperature=self.kl_temperature, rel_weight=self.rel_weight, views=self.views,
            spec_augment=self.spec_augment, schedule=self.schedule,
        )  # fmt: skip

    def validate(self) -> None:
        """Raise ValueError (worded for the CLI) on a combination that cannot run."""
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
        if self.pool_window is not None and not 0.05 <= self.pool_window <= 5.0:
            raise ValueError(f"--pool-window must be 0.05 to 5 seconds, got {self.pool_window}")
        if self.views and self.cache is None:
            raise ValueError("--views trains on a cache's augmented views: give --cache DIR (tinyclap cache --views K)")
        if not self.student and not self.init:
            raise ValueError("give --model NAME, the student to train (or --init CKPT to start from a trained one)")
        if self.resolved_recipe().needs_text_bank and self.cache is None:
            raise ValueError(
                "the text-KL term needs --cache with a text bank (tinyclap cache --text-bank); on-the-fly "
                "targets have none: use --kl-weight 0"
            )

    @classmethod
    def defaults(cls) -> dict[str, Any]:
        """Field name -> default value (the fields that have one), e.g. for the CLI's --help."""
        out: dict[str, Any] = {}
        for f in dataclasses.fields(cls):
            if f.default is not dataclasses.MISSING:
                out[f.name] = f.default
            elif f.default_factory is not dataclasses.MISSING:
                out[f.name] = f.default_factory()
        return out


@dataclass
class StageOptions:
    """The options of one stage (`train_stage`). Schedule defaults are DistillConfig's; a library call
    defaults to the CPU, no DataLoader workers and checkpoints at epoch ends only.

    `target_dims` slices the targets to those entries (renormalised); `out_dir` receives best.*, last.* and
    metrics; `amp`/`channels_last` None mean "on for CUDA"; `batch_fn(batch, device) -> (logmel, target)`
    None means `cached_batch`; `tag_epoch` hands `(epoch, index)` keys to the dataset (WaveformDataset);
    `step_hook(global_step)` runs after each optimiser step (and its checkpoint), e.g. to stop a test run.
    `loss` is the recipe's `DistillLoss`; None is the paper's Eq. 7 (minus the cosine). `spec_augment` masks
    the student's training log-mels (`tinyclap.train.targets.spec_augment`; never in validation).
    `pool_frames` trains and validates the student on pooled windows of that many log-mel frames
    (`tinyclap.train.loop.PooledWindows`).
    """

    stage: int
    epochs: int
    lr: float
    batch_size: int = DistillConfig.batch_size
    seed: int = DistillConfig.seed
    device: str | torch.device = "cpu"
    target_dims: Sequence[int] | None = None
    out_dir: str | os.PathLike | None = None
    resume: bool = False
    progress: bool = True
    workers: int = 0
    val_every: int = DistillConfig.val_every
    ckpt_every: int = 0
    plateau_factor: float = DistillConfig.plateau_factor
    plateau_patience: int = DistillConfig.plateau_patience
    amp: bool | None = None
    channels_last: bool | None = None
    compile: bool = False
    deterministic: bool = False
    batch_fn: BatchFn | None = None
    tag_epoch: bool = False
    metrics: MetricsLogger | None = None
    save_extra: Mapping[str, Any] = field(default_factory=dict)
    step_hook: Callable[[int], None] | None = None
    loss: DistillLoss | None = None
    spec_augment: bool = False
    schedule: str = "plateau"
    pool_frames: int | None = None  # log-mel frames per pooled window (None: the whole input at once)

    @classmethod
    def for_run(cls, config: DistillConfig, stage: int, **kw: Any) -> StageOptions:
        """Stage `stage` of a run: its epochs and lr, and the run's shared settings; `kw` adds the rest."""
        shared = (
            "batch_size", "seed", "device", "target_dims", "resume", "progress", "workers", "val_every",
            "ckpt_every", "plateau_factor", "plateau_patience", "compile", "deterministic",
        )  # fmt: skip
        return cls(
            stage=stage,
            epochs=config.epochs1 if stage == 1 else config.epochs2,
            lr=config.lr1 if stage == 1 else config.lr2,
            **{**{k: getattr(config, k) for k in shared}, **kw},
        )

    def validate(self) -> None:
        """Raise ValueError on options no stage can run with."""
        if self.stage not in (1, 2):
            raise ValueError(f"stage must be 1 (whole student) or 2 (projection only), got {self.stage}")
        if self.epochs < 1 or self.batch_size < 1 or self.lr <= 0 or self.val_every < 1 or self.ckpt_every < 0:
            raise ValueError(
                "need epochs >= 1, batch_size >= 1, lr > 0, val_every >= 1, ckpt_every >= 0; got "
                f"epochs={self.epochs}, batch_size={self.batch_size}, lr={self.lr}, val_every={self.val_every}, "
                f"ckpt_every={self.ckpt_every}"
            )
        if self.resume and self.out_dir is None:
            raise ValueError("resume=True needs out_dir (where the training state is)")
