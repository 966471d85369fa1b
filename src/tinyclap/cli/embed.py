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

from tinyclap.cli._common import BATCH, WORKERS, add_command, float_in
from tinyclap.index.build import MAX_WINDOW_S


def register(sub: argparse._SubParsersAction) -> None:
    p = add_command(sub, "embed", "embed audio files into a searchable index (incremental, resumable)",
                    description=__doc__.split("\n\n", 1)[1].strip())
    p.add_argument("sources", nargs="+", metavar="SRC",
                   help="audio files, folders (recursive), manifest:FILE (a list of paths) or KIND:PATH[#folds=..] "
                   "specs")
    p.add_argument("--model", required=True,
                   help="student run/checkpoint/name, teacher checkpoint, or export folder (torch-free)")
    p.add_argument("--int8", action="store_true", help="with an export folder: its model.int8.onnx")
    p.add_argument("--out", required=True, metavar="INDEX", help="index folder (created; reruns update it)")
    seconds = float_in(0, MAX_WINDOW_S, low_open=True)
    p.add_argument("--window", type=seconds, default=5.0, help="window length in seconds")
    p.add_argument("--hop", type=seconds, help="hop between windows in seconds (default: --window)")
    p.add_argument("--batch-size", type=BATCH, default=16, help="windows embedded (and committed) together")
    p.add_argument("--workers", type=WORKERS, default=2, help="decoding threads (0: decode inline)")
    p.add_argument("--overwrite", action="store_true", help="start again if INDEX was built with other settings")
    p.add_argument("--ann", action="store_true",
                   help="also build the approximate (FAISS HNSW) index for `search --approximate` (needs faiss-cpu)")
    p.add_argument("--strict", action="store_true", help="exit non-zero if any file could not be read")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.add_argument("--no-progress", action="store_true", help="no progress display")
    p.add_argument("--debug", action="store_true", help="show tracebacks")
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
    report = embed_sources(args.sources, args.model, args.out, window=args.window, hop=args.hop,
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
