"""`tinyclap embed SRC... --model M --out INDEX`: index your own audio for `tinyclap search`.

Every audio file under the sources (files, folders scanned recursively, manifests, KIND:PATH dataset
specs) is cut into --window second windows every --hop seconds and embedded by the model (a student run
or checkpoint, a teacher, or an export folder run by ONNX Runtime without torch) into INDEX: an SQLite
database (files, windows with their offsets), fp16 + int8 embedding matrices and a manifest. A rerun embeds
only new or changed files and drops deleted ones; a killed run resumes where it stopped. Unreadable files
are listed, not fatal. Under torchrun the files are split across the processes.
"""

from __future__ import annotations

import argparse
import json
import sys

from tinyclap.cli._common import (
    BATCH,
    WINDOW_SECONDS,
    add_command,
    add_int8_arg,
    add_json_arg,
    add_model_arg,
    add_progress_arg,
    add_window_args,
    add_workers_arg,
)


def register(sub: argparse._SubParsersAction) -> None:
    p = add_command(sub, "embed", "embed audio files into a searchable index (incremental, resumable)",
                    description=__doc__.split("\n\n", 1)[1].strip())
    p.add_argument("sources", nargs="+", metavar="SRC",
                   help="audio files, folders (recursive), manifest:FILE (a list of paths) or KIND:PATH[#folds=..] "
                   "specs")
    add_model_arg(p, required=True)
    add_int8_arg(p)
    p.add_argument("--out", required=True, metavar="INDEX", help="index folder (created; reruns update it)")
    add_window_args(p)
    p.add_argument("--batch-size", type=BATCH, default=16, help="windows embedded (and committed) together")
    add_workers_arg(p, 2)
    p.add_argument("--overwrite", action="store_true", help="start again if INDEX was built with other settings")
    p.add_argument("--ann", action="store_true",
                   help="also build the approximate (FAISS HNSW) index for `search --approximate` (needs faiss-cpu)")
    p.add_argument("--strict", action="store_true", help="exit non-zero if any file could not be read")
    add_json_arg(p, "the report")
    add_progress_arg(p)
    p.set_defaults(func=run)


def _check_lists(sources: list[str]) -> None:
    """A bare file that is not audio (`list.txt`) is refused: a list of paths is named `manifest:list.txt`."""
    from pathlib import Path

    from tinyclap.audio import display_path
    from tinyclap.data.files import AUDIO_EXTENSIONS

    for src in sources:
        path = Path(src).expanduser()
        if path.is_file() and path.suffix.lower() not in AUDIO_EXTENSIONS:
            raise ValueError(f"{display_path(src)}: not an audio file; to embed the files it lists, "
                             f"write manifest:{src}")


def run(args: argparse.Namespace) -> int:
    from tinyclap.audio import display_path
    from tinyclap.index.build import embed_sources

    _check_lists(args.sources)
    window = WINDOW_SECONDS if args.window is None else args.window
    report = embed_sources(args.sources, args.model, args.out, window=window, hop=args.hop,
                           batch_size=args.batch_size, workers=args.workers, int8=args.int8,
                           overwrite=args.overwrite, progress=not args.no_progress)
    if args.ann:
        from tinyclap.index import Index
        from tinyclap.index.ann import build_ann

        with Index.open(args.out) as index:
            path = build_ann(index)
        print(f"wrote {path}", file=sys.stderr)
    if args.json:
        print(json.dumps(report.to_dict(), indent=2))
    else:
        print(report.summary())
    for f in report.failed:
        print(f"skipped {display_path(f['path'])}: {f['error']}", file=sys.stderr)
    return 1 if args.strict and report.failed else 0
