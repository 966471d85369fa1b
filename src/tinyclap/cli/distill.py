"""`tinyclap distill`: train a student to reproduce the teacher's audio embeddings (tinyCLAP, two stages).

Data parallel: `torchrun --nproc_per_node N -m tinyclap.cli distill ...` (batch size is per process).
The defaults are `DistillConfig`'s (the paper's recipe), read from it: its module is torch-free, so
`tinyclap --help` stays fast.
"""

from __future__ import annotations

import argparse
from typing import Any

from tinyclap.cli._common import (
    BATCH,
    EPOCHS,
    add_alias,
    add_command,
    add_device_arg,
    add_model_arg,
    add_pool_window_arg,
    add_progress_arg,
    add_workers_arg,
    float_in,
    int_in,
)
from tinyclap.train.config import DistillConfig
from tinyclap.train.recipes import SCHEDULES

# DistillConfig field -> option dest, where the names differ (the rest are spelled alike)
_DEST = {"plateau_factor": "factor", "plateau_patience": "patience", "student": "model"}
# DistillConfig field -> the flag that switches it off
_OFF = {"progress": "no_progress", "tensorboard": "no_tensorboard"}
_D = " (default: %(default)s)"


def _stages(text: str) -> tuple[int, ...]:
    try:
        stages = tuple(int(s) for s in text.split(",") if s.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected 1, 2 or 1,2, got {text!r}") from None
    if stages not in ((1,), (2,), (1, 2)):
        raise argparse.ArgumentTypeError(f"expected 1, 2 or 1,2, got {text!r}")
    return stages


def _add_targets(p: argparse.ArgumentParser, d: dict[str, Any]) -> None:
    g = p.add_argument_group("targets (one of)")
    g.add_argument("--cache", help="cache folder written by `tinyclap cache` (fast path)")
    g.add_argument("--teacher", help="teacher checkpoint, for targets computed on the fly (with --data)")
    g.add_argument("--data", action="append", default=[], help="audio KIND:PATH or PATH (repeatable), with --teacher")
    g.add_argument(
        "--val-fraction", type=float_in(0, 0.9), default=d["val_fraction"], help="validation share of --data files" + _D
    )


def _add_schedule(p: argparse.ArgumentParser, d: dict[str, Any]) -> None:
    s = p.add_argument_group("schedule (paper defaults)")
    s.add_argument("--stages", type=_stages, default=",".join(map(str, d["stages"])), help="1, 2 or 1,2" + _D)
    s.add_argument("--init", help="student checkpoint to start from (required for --stages 2 alone)")
    s.add_argument("--epochs1", type=EPOCHS, default=d["epochs1"], help="stage-1 epochs" + _D)
    s.add_argument("--epochs2", type=EPOCHS, default=d["epochs2"], help="stage-2 epochs" + _D)
    s.add_argument("--lr1", type=float_in(0, 10, low_open=True), default=d["lr1"], help="stage-1 Adam lr" + _D)
    s.add_argument("--lr2", type=float_in(0, 10, low_open=True), default=d["lr2"], help="stage-2 Adam lr" + _D)
    s.add_argument("--batch-size", type=BATCH, default=d["batch_size"], help="per process" + _D)
    s.add_argument("--seed", type=int, default=d["seed"], help="seeds the student's init, the split and the order" + _D)
    s.add_argument("--patience", type=int_in(0, 100_000), default=d["plateau_patience"],
                   help="ReduceLROnPlateau patience" + _D)
    s.add_argument("--schedule", choices=SCHEDULES, default=None,
                   help="learning rate: plateau (the paper's ReduceLROnPlateau on the validation loss) or cosine "
                   "(5%% linear warm-up, then a per-step cosine decay to 0 at each stage's last step); default: "
                   "the recipe's")
    s.add_argument("--factor", type=float_in(0, 0.99, low_open=True), default=d["plateau_factor"],
                   help="ReduceLROnPlateau factor" + _D)
    s.add_argument("--val-every", type=int_in(1, 100_000), default=d["val_every"], help="validate every N epochs" + _D)
    s.add_argument("--train-crop-seconds", type=float_in(0.1, 3600, low_open=True), default=d["train_crop_seconds"],
                   metavar="SEC", help="with --cache: train on random SEC-second crops of each cached clip "
                   "(validation keeps whole clips; the target stays the whole clip's embedding)")
    add_pool_window_arg(s, help="train and validate as a small device runs the student: windows of SECONDS, "
                        "backbone per window, features averaged, head once per clip (e.g. 1 for an MCU preset)")


def _add_loss(p: argparse.ArgumentParser, d: dict[str, Any]) -> None:
    from tinyclap.train.recipes import RECIPES

    g = p.add_argument_group(
        "recipe (the loss and augmentations; each flag, and --schedule above, overrides the recipe's value)",
        "paper: the paper's Eq. 7 (minus the cosine), exactly, no augmentation, the plateau schedule. plus: + "
        "in-batch relational MSE "
        "(unproven: no term beat paper in bench/ablation.py at CPU budgets). Off in both, as flags: "
        "--kl-weight W, the text-anchored KL over the "
        "cache's text bank (tinyclap cache --text-bank); --views, the cache's augmented views (tinyclap cache "
        "--views K); --spec-augment, masks on the student's input; --schedule cosine. "
        + "; ".join(f"{k}: {v.to_dict()}" for k, v in RECIPES.items()),
    )
    g.add_argument("--recipe", choices=sorted(RECIPES), default=d["recipe"], help="loss preset" + _D)
    weight = float_in(0, 1e4)
    g.add_argument("--cos-weight", type=weight, metavar="W", help="weight of Eq. 7's cosine term")
    g.add_argument("--kl-weight", type=weight, metavar="W", help="weight of the text-anchored KL term (0: off)")
    g.add_argument("--kl-temperature", type=float_in(1e-4, 100), metavar="TAU",
                   help="temperature of the text-KL softmaxes")
    g.add_argument("--rel-weight", type=weight, metavar="W", help="weight of the relational term (0: off)")
    g.add_argument("--views", action=argparse.BooleanOptionalAction, default=None,
                   help="train on the cache's augmented views (tinyclap cache --views K), each with the teacher's "
                   "embedding of that view; an error on a cache without views (default: the recipe's)")
    g.add_argument("--spec-augment", action=argparse.BooleanOptionalAction, default=None,
                   help="SpecAugment masks (2 time masks of up to 10%% of the frames, 2 of up to 8 mel bands, "
                   "filled with the clip's mean) on the student's training log-mels only; the target stays the "
                   "teacher's embedding of the unmasked clip (default: the recipe's)")


def _add_run(p: argparse.ArgumentParser, d: dict[str, Any]) -> None:
    r = p.add_argument_group("run")
    add_workers_arg(r, d["workers"])
    r.add_argument(
        "--ckpt-every", type=int_in(0, 1 << 30), default=d["ckpt_every"],
        help="also checkpoint every N steps (0: epoch ends)" + _D,
    )  # fmt: skip
    r.add_argument("--resume", action="store_true", help="continue the run in --out exactly where it stopped")
    add_device_arg(r)
    r.add_argument("--compile", action="store_true", help="torch.compile the student (CUDA)")
    r.add_argument(
        "--deterministic", action="store_true", help="deterministic algorithms during the run (slower on GPU)"
    )
    add_progress_arg(r)
    r.add_argument("--no-tensorboard", action="store_true", help="do not write TensorBoard scalars")


def register(sub: argparse._SubParsersAction) -> None:
    p = add_command(
        sub,
        "distill",
        "distil a teacher's audio embeddings into a student",
        description="Stage 1 trains the whole student, stage 2 only its projection (from stage 1's best "
        "checkpoint). Loss: by default (--recipe paper) minus the cosine between the student's and the "
        "teacher's embeddings.",
    )
    add_model_arg(p, "the student to train, a name, e.g. phinet_alpha_1.50_beta_0.75_t0_6_N_7")
    add_alias(p, "--student", "--model", dest="model")
    p.add_argument("--out", required=True, help="run folder (checkpoints, metrics, final student)")
    defaults = DistillConfig.defaults()
    _add_targets(p, defaults)
    _add_schedule(p, defaults)
    _add_loss(p, defaults)
    _add_run(p, defaults)
    p.set_defaults(func=run)


def config_from_args(args: argparse.Namespace) -> DistillConfig:
    """The `DistillConfig` of parsed arguments (every field the command has an option for)."""
    values: dict[str, Any] = {}
    for name in DistillConfig.defaults().keys() | {"out"}:
        if name in _OFF:
            values[name] = not getattr(args, _OFF[name])
        elif hasattr(args, _DEST.get(name, name)):
            values[name] = getattr(args, _DEST.get(name, name))
    values["data"] = list(values["data"])
    values["stages"] = tuple(values["stages"])
    return DistillConfig(**values)


def run(args: argparse.Namespace) -> int:
    from tinyclap.train.distill import distill

    result = distill(config_from_args(args))
    if result.student_path is not None:  # rank 0 only
        print(result.summary())
    return 0
