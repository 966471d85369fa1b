"""`tinyclap teacher build-proxy`: a proxy CLAP teacher from real pretrained towers (aiSFX + MiniLM)."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("teacher", help="build teachers (a proxy CLAP from PyPI-shipped pretrained towers)")
    tsub = p.add_subparsers(dest="teacher_command", metavar="<action>", required=True)
    b = tsub.add_parser(
        "build-proxy",
        help="train a proxy CLAP teacher's projections on UrbanSound8K folds (frozen aiSFX audio + MiniLM text)",
    )
    b.add_argument("--us8k", required=True, help="UrbanSound8K root (metadata/, audio/): ../shared/data/UrbanSound8K")
    b.add_argument("--out", required=True, help="output folder (gets proxy_teacher.safetensors + .json)")
    b.add_argument("--folds", type=int, nargs="+", default=[1, 2], help="training folds (default 1 2)")
    b.add_argument("--eval-folds", type=int, nargs="*", default=[3], help="held-out folds to report (default 3)")
    b.add_argument("--epochs", type=int, default=20)
    b.add_argument("--seed", type=int, default=0)
    b.add_argument("--embed-dim", type=int, default=1024, help="shared-space size (MS CLAP 2022: 1024)")
    b.set_defaults(func=run_build_proxy)


def run_build_proxy(args: argparse.Namespace) -> int:
    from tinyclap.models.proxy import main

    argv = ["--us8k", args.us8k, "--out", args.out, "--epochs", str(args.epochs), "--seed", str(args.seed),
            "--embed-dim", str(args.embed_dim), "--train-folds", *map(str, args.folds)]
    if args.eval_folds:
        argv += ["--eval-folds", *map(str, args.eval_folds)]
    main(argv)
    return 0
