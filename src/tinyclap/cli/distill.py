"""`tinyclap distill`: train a student to reproduce the teacher's audio embeddings (tinyCLAP, two stages).

Data parallel: `torchrun --nproc_per_node N -m tinyclap.cli distill ...` (batch size is per process).
"""

from __future__ import annotations

import argparse
from types import SimpleNamespace
from typing import Any

# The paper's defaults (tinyclap.train.distill.DistillConfig holds the same values; a test keeps them equal).
# Literal here so that `tinyclap --help` does not import torch.
_D = SimpleNamespace(
    stages=(1, 2),
    epochs1=100,
    epochs2=10,
    lr1=0.012,
    lr2=0.004,
    batch_size=64,
    seed=1234,
    workers=4,
    val_every=1,
    ckpt_every=500,
    plateau_factor=0.1,
    plateau_patience=10,
    val_fraction=0.1,
    device="auto",
)


def _stages(text: str) -> tuple[int, ...]:
    try:
        stages = tuple(int(s) for s in text.split(",") if s.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected 1, 2 or 1,2, got {text!r}") from None
    if stages not in ((1,), (2,), (1, 2)):
        raise argparse.ArgumentTypeError(f"expected 1, 2 or 1,2, got {text!r}")
    return stages


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "distill",
        help="distil a teacher's audio embeddings into a student",
        description="Stage 1 trains the whole student, stage 2 only its projection (from stage 1's best "
        "checkpoint). Loss: minus the cosine between the student's and the teacher's embeddings.",
    )
    p.add_argument("--student", help="student name, e.g. phinet_alpha_1.50_beta_0.75_t0_6_N_7")
    p.add_argument("--out", required=True, help="run folder (checkpoints, metrics, final student)")
    g = p.add_argument_group("targets (one of)")
    g.add_argument("--cache", help="cache folder written by `tinyclap cache` (fast path)")
    g.add_argument("--teacher", help="teacher checkpoint, for targets computed on the fly (with --data)")
    g.add_argument(
        "--data", action="append", default=[], help="audio KIND:PATH or PATH (repeatable), with --teacher"
    )
    g.add_argument(
        "--val-fraction", type=float, default=_D.val_fraction, help="validation share of --data files"
    )
    s = p.add_argument_group("schedule (paper defaults)")
    s.add_argument("--stages", type=_stages, default=_D.stages, help="1, 2 or 1,2 (default 1,2)")
    s.add_argument("--init", help="student checkpoint to start from (required for --stages 2 alone)")
    s.add_argument("--epochs1", type=int, default=_D.epochs1, help="stage-1 epochs (default %(default)s)")
    s.add_argument("--epochs2", type=int, default=_D.epochs2, help="stage-2 epochs (default %(default)s)")
    s.add_argument("--lr1", type=float, default=_D.lr1, help="stage-1 Adam lr (default %(default)s)")
    s.add_argument("--lr2", type=float, default=_D.lr2, help="stage-2 Adam lr (default %(default)s)")
    s.add_argument("--batch-size", type=int, default=_D.batch_size, help="per process (default %(default)s)")
    s.add_argument("--seed", type=int, default=_D.seed, help="default %(default)s")
    s.add_argument("--patience", type=int, default=_D.plateau_patience, help="ReduceLROnPlateau patience")
    s.add_argument("--factor", type=float, default=_D.plateau_factor, help="ReduceLROnPlateau factor")
    s.add_argument("--val-every", type=int, default=_D.val_every, help="validate every N epochs")
    r = p.add_argument_group("run")
    r.add_argument("--workers", type=int, default=_D.workers, help="DataLoader workers (default %(default)s)")
    r.add_argument(
        "--ckpt-every", type=int, default=_D.ckpt_every, help="also checkpoint every N steps (0: epoch ends)"
    )
    r.add_argument("--resume", action="store_true", help="continue the run in --out exactly where it stopped")
    r.add_argument("--device", default=_D.device, help="auto (cuda if available), cpu, cuda, cuda:1, ...")
    r.add_argument("--compile", action="store_true", help="torch.compile the student (CUDA)")
    r.add_argument(
        "--deterministic", action="store_true", help="deterministic algorithms during the run (slower on GPU)"
    )
    r.add_argument("--no-progress", action="store_true", help="no progress bars or console log")
    r.add_argument("--no-tensorboard", action="store_true", help="do not write TensorBoard scalars")
    r.add_argument("--debug", action="store_true", help="show tracebacks")
    p.set_defaults(func=run)


def config_from_args(args: argparse.Namespace) -> Any:
    """The `tinyclap.train.distill.DistillConfig` of parsed arguments."""
    from tinyclap.train.distill import DistillConfig

    return DistillConfig(
        out=args.out,
        student=args.student,
        cache=args.cache,
        teacher=args.teacher,
        data=list(args.data),
        stages=tuple(args.stages),
        init=args.init,
        epochs1=args.epochs1,
        epochs2=args.epochs2,
        lr1=args.lr1,
        lr2=args.lr2,
        batch_size=args.batch_size,
        seed=args.seed,
        workers=args.workers,
        val_every=args.val_every,
        ckpt_every=args.ckpt_every,
        plateau_factor=args.factor,
        plateau_patience=args.patience,
        val_fraction=args.val_fraction,
        device=args.device,
        compile=args.compile,
        deterministic=args.deterministic,
        resume=args.resume,
        progress=not args.no_progress,
        tensorboard=not args.no_tensorboard,
    )


def run(args: argparse.Namespace) -> int:
    from tinyclap.train.distill import distill

    result = distill(config_from_args(args))
    if result.student_path is not None:  # rank 0 only
        print(result.summary())
    return 0
