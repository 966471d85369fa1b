"""`tinyclap demo`: the whole pipeline offline on a built-in default (or on a real teacher and dataset)."""

from __future__ import annotations

import argparse

from tinyclap.cli._common import add_alias, add_command, add_model_arg


def register(sub: argparse._SubParsersAction) -> None:
    from tinyclap.demo import DemoOptions  # torch-free: its defaults are the ones --help shows

    d = DemoOptions()
    p = add_command(sub, "demo", "run the whole pipeline end to end, offline (default: generated sounds)")
    p.add_argument("--out", default=d.out, help="output folder (finished stages are reused on a rerun)")
    add_model_arg(p, f"the student to train, a name (none given: {d.student})")
    add_alias(p, "--student", "--model", dest="model")
    p.add_argument("--per-class", type=int, default=d.per_class, help="generated clips per class")
    p.add_argument("--epochs1", type=int, default=d.epochs1, help="stage-1 epochs (the paper: 100)")
    p.add_argument("--epochs2", type=int, default=d.epochs2, help="stage-2 epochs (the paper: 10)")
    p.add_argument("--no-export", action="store_true", help="skip the ONNX export stage")
    real = p.add_argument_group("the real pipeline instead of the built-in default")
    real.add_argument("--teacher", help="teacher checkpoint (official MS CLAP .pth, ours, or a proxy teacher)")
    real.add_argument("--tokenizer", help="folder with the BERT uncased vocab.txt")
    real.add_argument("--dataset", help="evaluation dataset: esc50, us8k, tut17 or csv")
    real.add_argument("--root", help="dataset root (or CSV file)")
    real.add_argument("--esc50", help="shorthand for --dataset esc50 --root PATH")
    real.add_argument(
        "--data", action="append", default=[],
        help="distillation audio spec(s); default: the evaluation dataset's audio (labels unused)",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from tinyclap.demo import DemoOptions, run_demo

    if args.esc50:
        args.dataset, args.root = "esc50", args.esc50
    names = {"per_class": "per_class", "epochs1": "epochs1", "epochs2": "epochs2", "student": "model"}
    given = {k: getattr(args, a) for k, a in names.items() if getattr(args, a) is not None}  # else DemoOptions'
    opt = DemoOptions(
        out=args.out, export=not args.no_export, teacher=args.teacher, tokenizer=args.tokenizer,
        dataset=args.dataset, root=args.root, data=tuple(args.data), **given,
    )
    run_demo(opt)
    return 0
