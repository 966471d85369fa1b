"""`tinyclap download`: fetch the teacher, tokenizer and datasets with resume, hash checks and safe extraction."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    from tinyclap.download import add_arguments, main_args

    p = sub.add_parser("download", help="download and verify the MS CLAP teacher, BERT tokenizer or a dataset")
    add_arguments(p)
    p.set_defaults(func=main_args)
