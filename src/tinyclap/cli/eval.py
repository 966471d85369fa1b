"""`tinyclap eval`: zero-shot accuracy of a teacher or a student on ESC-50, UrbanSound8K, TUT17 or a CSV."""

from __future__ import annotations

import argparse

from tinyclap.cli._common import (
    BATCH,
    COUNT,
    DatasetArg,
    add_command,
    add_embedding_run_args,
    add_model_arg,
    add_pool_window_arg,
    add_templates_arg,
    embedding_run_kwargs,
    require,
)


def _folds(text: str) -> list[int]:
    from tinyclap.data.spec import parse_folds

    try:
        return list(parse_folds(text))
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def register(sub: argparse._SubParsersAction) -> None:
    p = add_command(
        sub,
        "eval",
        "zero-shot accuracy on a labelled dataset (per fold, per class, confusion matrix)",
        description=(
            "Score a model with the tinyCLAP protocol: every clip, prompt 'this is the sound of {class}' "
            "(underscores -> spaces), deterministic embedding of long clips. Writes report.json, "
            "confusion.png and predictions.csv to --out. The dataset is KIND:PATH[#folds=1,2&limit=N&subset=S] "
            "(the grammar prune and cache take), or a bare KIND with --root PATH."
        ),
    )
    add_model_arg(p, required=True)
    p.add_argument(
        "--dataset",
        required=True,
        action=DatasetArg,
        metavar="KIND[:PATH#OPTIONS]",
        help="dataset: esc50, esc10, us8k, tut17 or csv, with its path as KIND:PATH or in --root",
    )
    p.add_argument("--root", help="dataset folder (for csv: the CSV file with path,label[,fold])")
    p.add_argument("--out", required=True, help="output folder")
    t = p.add_argument_group("class prompts (text embeddings)")
    t.add_argument("--teacher", help="teacher checkpoint whose text tower encodes the class prompts (none given: "
                   "the model's own text tower, else the teacher recorded in its run)")
    t.add_argument(
        "--tokenizer", help="folder with BERT's uncased vocab.txt (for a CLAP teacher's text tower)"
    )
    t.add_argument("--classes", help="class matrix (.npz) saved by tinyclap, instead of a text encoder")
    add_templates_arg(t)
    d = p.add_argument_group("clips")
    d.add_argument("--folds", type=_folds, help="only these folds, e.g. 1 or 1,2,3")
    d.add_argument("--esc10", action="store_true", help="ESC-10 subset of ESC-50")
    d.add_argument("--subset", choices=("auto", "development", "evaluation"), help="TUT17 set (none given: auto)")
    d.add_argument("--limit", type=COUNT, help="evaluate an evenly spread subset of N clips (quick checks)")
    d.add_argument(
        "--long-clip",
        choices=("windows", "centre"),
        default="windows",
        help="clips longer than 5 s: mean of all window embeddings or the centre crop",
    )
    add_pool_window_arg(d)
    p.add_argument("--against-teacher", action="store_true",
                   help="also score the student's teacher (--teacher, else the one recorded in its run) on the same "
                   "clips: accuracy retention, top-1 agreement and mean cosine")
    r = add_embedding_run_args(p)
    r.add_argument("--batch-size", type=BATCH, default=16, help="5 s windows per forward pass")
    r.add_argument(
        "--strict", action="store_true", help="exit 1 if any listed clip was missing or unreadable"
    )
    p.set_defaults(func=require(run, "root"))


def run(args: argparse.Namespace) -> int:
    import sys

    from tinyclap.evaluation.run import run_eval

    if args.classes and (args.teacher or args.templates):
        raise ValueError("--classes already holds the class embeddings: drop --teacher/--templates")
    report = run_eval(
        args.model,
        args.dataset,
        args.root,
        args.out,
        teacher=args.teacher,
        tokenizer=args.tokenizer,
        classes_file=args.classes,
        templates=args.templates,
        folds=args.folds,
        esc10=args.esc10,
        subset=args.subset,
        limit=args.limit,
        long_clip=args.long_clip,
        batch_size=args.batch_size,
        against_teacher=args.against_teacher,
        pool_window=args.pool_window,
        **embedding_run_kwargs(args),
    )
    ds = report["dataset"]
    for s in ds["skipped"]:
        print(f"skipped {s['file']}: {s['error']}", file=sys.stderr)
    if ds["n_missing"]:
        print(f"{ds['n_missing']} listed clip(s) are not on disk (see report.json)", file=sys.stderr)
    if args.strict and (ds["n_skipped"] or ds["n_missing"]):
        print("--strict: some clips were not evaluated", file=sys.stderr)
        return 1
    return 0
