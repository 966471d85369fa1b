"""`tinyclap download`: fetch the teacher, tokenizer and datasets with resume, hash checks and safe extraction."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from tinyclap.cli._common import add_command, add_progress_arg, float_in, int_in


def register(sub: argparse._SubParsersAction) -> None:
    p = add_command(sub, "download", "download and verify the MS CLAP teacher, BERT tokenizer or a dataset",
                    description="Resumable, size- and hash-checked downloads with safe extraction "
                    "(see tinyclap.download). Prints the path of what was fetched.")
    add_arguments(p)
    p.set_defaults(func=main_args)


def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Register the options of `tinyclap download` on `parser`."""
    from tinyclap.download.registry import ENV_HOME

    parser.add_argument("what", nargs="*", metavar="KIND NAME",
                        help="what to fetch: `teacher msclap-2022`, `tokenizer bert-base-uncased`, "
                             "`dataset esc50|us8k|tut17`; `list` (or nothing) lists everything")
    parser.add_argument("--root", type=Path, default=None,
                        help=f"folder to download into (default: ${ENV_HOME}, else the user cache folder)")
    parser.add_argument("--no-extract", action="store_true", help="download and verify archives only")
    parser.add_argument("--force", action="store_true",
                        help="download (and extract) again even if a finished copy is present")
    parser.add_argument("--sha256", action="append", metavar="HEX|NAME=HEX",
                        help="expected SHA-256 for a file without a published checksum (repeatable)")
    parser.add_argument("--allow-unverified", action="store_true",
                        help="accept files that have no published checksum (their SHA-256 is printed)")
    parser.add_argument("--keep-archives", action="store_true", help="keep archives after extracting them")
    add_progress_arg(parser)
    parser.add_argument("--timeout", type=float_in(0, 3600, low_open=True), default=30.0,
                        help="seconds before a stalled connection is retried")
    parser.add_argument("--retries", type=int_in(0, 100), default=5,
                        help="retries per URL without progress, with exponential backoff")
    parser.add_argument("--stall-timeout", type=float_in(0, 86400, low_open=True), default=120.0,
                        help="seconds in which a transfer must bring 64 KiB, else it is dropped and resumed")
    parser.add_argument("--max-size", type=float_in(0, 1 << 20, low_open=True), default=32.0, metavar="GB",
                        help="largest file accepted when its size is not known in advance (GiB)")
    return parser


def main_args(args: argparse.Namespace) -> int:
    """Run `tinyclap download` from parsed arguments; print the resulting path. Returns the exit code."""
    from tinyclap.download import DownloadError, download, format_registry

    if not args.what or [w.lower() for w in args.what] == ["list"]:
        print(format_registry())
        return 0
    log = logging.getLogger("tinyclap.download")
    if not log.handlers and not logging.getLogger().handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(message)s"))
        log.addHandler(handler)
        log.setLevel(logging.INFO)
    try:
        path = download(args.what, args.root, progress=not args.no_progress, extract=not args.no_extract,
                        force=args.force, sha256=args.sha256, allow_unverified=args.allow_unverified,
                        keep_archives=args.keep_archives, timeout=args.timeout, retries=args.retries,
                        stall_timeout=args.stall_timeout, max_bytes=int(args.max_size * (1 << 30)))
    except DownloadError as e:
        print(f"tinyclap download: error: {e}", file=sys.stderr)
        return 1
    print(path)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Stand-alone entry point: `python -m tinyclap.download dataset us8k`."""
    from tinyclap.cli._common import make_parser

    return main_args(add_arguments(make_parser("tinyclap download", __doc__.splitlines()[0])).parse_args(argv))
