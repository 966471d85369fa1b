"""`tinyclap teacher build-proxy`: a proxy CLAP teacher from real pretrained towers (aiSFX + MiniLM)."""

from __future__ import annotations

import argparse
import json

from tinyclap.cli._common import add_command, add_progress_arg


def register(sub: argparse._SubParsersAction) -> None:
    p = add_command(sub, "teacher", "build teachers (a proxy CLAP from PyPI-shipped pretrained towers)")
    tsub = p.add_subparsers(dest="teacher_command", metavar="<action>", required=True)
    b = add_command(
        tsub,
        "build-proxy",
        "train a proxy CLAP teacher's projections on UrbanSound8K folds (frozen aiSFX audio + MiniLM text)",
        description="Train the projections of a proxy CLAP teacher (frozen aiSFX audio and MiniLM text towers "
        "shipped in PyPI wheels) contrastively on UrbanSound8K class captions, save it to OUT, and print its "
        "zero-shot accuracy on the training and held-out folds as JSON.",
    )
    b.add_argument("--us8k", required=True, metavar="DIR", help="UrbanSound8K root (holds metadata/ and audio/)")
    b.add_argument("--out", required=True, metavar="DIR", help="output folder (gets proxy_teacher.safetensors + .json)")
    b.add_argument("--folds", type=int, nargs="+", default=[1, 2], help="training folds")
    b.add_argument("--eval-folds", type=int, nargs="*", default=[3],
                   help="held-out folds to report; given empty, no held-out report")
    b.add_argument("--epochs", type=int, default=20, help="head training epochs")
    b.add_argument("--limit-per-class", type=int, metavar="N",
                   help="train on the first N clips of each class of --folds (a quick try)")
    b.add_argument("--seed", type=int, default=0, help="seeds the head's initialisation and batches")
    b.add_argument("--embed-dim", type=int, default=1024, help="shared-space size (MS CLAP 2022: 1024)")
    add_progress_arg(b)
    b.set_defaults(func=run_build_proxy)


def run_build_proxy(args: argparse.Namespace) -> int:
    from tinyclap.train.proxy import build_and_report

    if args.limit_per_class is not None and args.limit_per_class < 1:
        raise ValueError(f"--limit-per-class must be >= 1, got {args.limit_per_class}")
    report = build_and_report(
        args.us8k, args.out, args.folds, args.eval_folds, seed=args.seed, epochs=args.epochs,
        embed_dim=args.embed_dim, progress=not args.no_progress, max_clips_per_class=args.limit_per_class,
    )  # fmt: skip
    print(json.dumps(report, indent=2))
    return 0
