"""CLI subcommands, one module each: `register(subparsers)` adds the parser and sets `func(args) -> int`.

Modules here import only argparse-level code at import time; heavy imports (torch, models) happen inside
`func`, so `tinyclap --help` stays fast.
"""

from __future__ import annotations

import argparse


def add_embedding_run_args(parser: argparse.ArgumentParser) -> argparse._ArgumentGroup:
    """The "running" options shared by the commands that embed datasets (`eval`, `prune`); returns the group."""
    r = parser.add_argument_group("running")
    r.add_argument("--embed-cache", help="folder for cached audio embeddings (default: the user cache folder)")
    r.add_argument("--no-cache", action="store_true", help="do not read or write cached embeddings")
    r.add_argument("--seed", type=int, default=0, help="initialisation seed when --model is a bare student name")
    r.add_argument("--device", default="auto", help="torch device (default: cuda if available, else cpu)")
    r.add_argument("--quiet", action="store_true", help="no progress bar")
    r.add_argument("--debug", action="store_true", help="show tracebacks")
    return r
