"""`tinyclap prune`: sweep the size of the shared latent space (masked model, and smaller students)."""

from __future__ import annotations

import argparse

from tinyclap.cli._common import (
    EPOCHS,
    add_command,
    add_embedding_run_args,
    add_model_arg,
    add_templates_arg,
    embedding_run_kwargs,
    float_in,
)


def _dims(text: str) -> list[int]:
    try:
        dims = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"dims must be integers separated by commas, got {text!r}") from None
    if not dims or min(dims) < 1:
        raise argparse.ArgumentTypeError(f"dims must be positive integers, got {text!r}")
    return dims


def register(sub: argparse._SubParsersAction) -> None:
    p = add_command(
        sub,
        "prune",
        "prune the shared latent space: accuracy against size for masked and smaller students",
        description=(
            "Rank the latent entries on a calibration set (--criterion), keep the top k for each k in "
            "--dims, "
            "and report zero-shot accuracy of the masked model (cached embeddings, no new audio passes) and, "
            "for a student, of the physically smaller k-dim student (optionally fine-tuned). "
            "Datasets are NAME:PATH[#folds=1,2&limit=N&subset=S] with NAME in esc50, esc10, us8k, tut17, csv."
        ),
    )
    add_model_arg(p, "student run folder or checkpoint (or a teacher)", required=True)
    p.add_argument("--dims", type=_dims, required=True, help="latent sizes, e.g. 768,512,256,128,64,32")
    p.add_argument(
        "--calibration", required=True, metavar="DATASET", help="calibration set, e.g. esc50:DIR#folds=1"
    )
    p.add_argument("--eval", nargs="+", required=True, metavar="DATASET", help="evaluation set(s)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--criterion", choices=("contribution", "variance", "energy"), default="contribution")
    p.add_argument(
        "--calibration-audio",
        choices=("auto", "teacher", "student"),
        default="auto",
        help="whose audio embeddings rank the entries (auto: the teacher's when it has an audio tower)",
    )
    p.add_argument("--teacher", help="teacher checkpoint (default: the one recorded in the student's config)")
    p.add_argument("--tokenizer", help="folder with BERT's uncased vocab.txt (CLAP teacher text tower)")
    add_templates_arg(p)
    p.add_argument("--long-clip", choices=("windows", "centre"), default="windows")
    f = p.add_argument_group("small students")
    f.add_argument(
        "--finetune-epochs", type=EPOCHS, default=0, help="projection-only fine-tuning epochs (0: none)"
    )
    f.add_argument(
        "--cache", help="distillation cache (tinyclap cache) with the teacher targets for fine-tuning"
    )
    f.add_argument("--lr", type=float_in(0, 10, low_open=True), default=1e-3, help="fine-tuning learning rate")
    f.add_argument(
        "--eval-small", action="store_true", help="also evaluate small students that were not fine-tuned"
    )
    add_embedding_run_args(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from tinyclap.evaluation.prune import run_prune

    run_prune(
        args.model,
        args.dims,
        args.calibration,
        args.eval,
        args.out,
        criterion=args.criterion,
        teacher=args.teacher,
        tokenizer=args.tokenizer,
        calibration_audio=args.calibration_audio,
        templates=args.templates,
        long_clip=args.long_clip,
        finetune_epochs=args.finetune_epochs,
        cache=args.cache,
        lr=args.lr,
        eval_small=args.eval_small,
        **embedding_run_kwargs(args),
    )
    return 0
