"""`python -m tinyclap.runtime --model EXPORT_DIR FILE...`: zero-shot classification with an export folder where torch
is not installed (onnxruntime, numpy, soundfile and soxr only).

    python -m tinyclap.runtime --model EXPORT_DIR FILE... [-k K] [--json] [--int8] [--threads N] [--window 5]
                               [--labels "a kettle whistling,rain" --templates "this is the sound of {}"]

(the folder as the first positional argument, the old spelling, still works). Folders of audio are read
recursively, as in `tinyclap embed`.

Each file gets a ranked label list (a clip longer than 5 s: the renormalised mean of its window embeddings),
or with --window a per-window timeline, streamed with bounded memory, the log-mel computed once and each
window sliced from it. --labels (names, or a file of them) needs an export with a text tower (`tinyclap
export --text`; ONNX Runtime + tokenizers). Both are `tinyclap.Classifier.from_export` and `tinyclap.timeline`,
the code `tinyclap classify --model EXPORT_DIR` runs, behind a parser of its own. This module also re-exports the export
folder's reader (`tinyclap.deploy.runtime`) under a short, torch-free name.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator, Sequence
from typing import Any

from tinyclap._util import display_path
from tinyclap.audio import AudioError
from tinyclap.classifier import Classifier, format_failed, format_ranked, ranked_json
from tinyclap.cli._common import (
    add_int8_arg,
    add_json_arg,
    add_model_arg,
    add_progress_arg,
    add_templates_arg,
    add_top_arg,
    add_window_args,
    audio_inputs,
    int_in,
    make_parser,
    parse_labels,
)
from tinyclap.deploy.runtime import (
    EXPORT_FORMAT,
    MANIFEST_FILE,
    MAX_THREADS,
    ExportError,
    Runtime,
    ort_session,
    read_manifest,
    read_verified,
)
from tinyclap.schemas import classify_document, timeline_result
from tinyclap.timeline import TimelineRow

__all__ = [
    "EXPORT_FORMAT",
    "MANIFEST_FILE",
    "ExportError",
    "Runtime",
    "build_parser",
    "main",
    "ort_session",
    "read_manifest",
    "read_verified",
]


def build_parser() -> Any:
    p = make_parser(
        "python -m tinyclap.runtime",
        "Zero-shot audio classification with an exported tinyclap model (no torch needed).",
    )
    add_model_arg(p, "export folder written by `tinyclap export` (none given: the first positional argument)")
    p.add_argument("files", nargs="+", help="audio files or folders (recursive)")
    add_top_arg(p)
    add_json_arg(p)
    add_progress_arg(p)
    add_int8_arg(p)
    p.add_argument("--threads", type=int_in(1, MAX_THREADS), help="ONNX Runtime intra-op threads")
    add_window_args(p)
    p.add_argument("--labels", help='class names instead of the export\'s classes: "dog,rain,a kettle whistling" '
                   "or a file of names (one a line); needs an export made with `tinyclap export --text`")
    add_templates_arg(p)
    return p


def parse_args(argv: Sequence[str] | None = None) -> Any:
    """The parsed command line, `export_dir` set from --model or (the old spelling) the first positional."""
    parser = build_parser()
    args = parser.parse_intermixed_args(argv)  # files on both sides of the options: `a.wav --model E b.wav`
    args.export_dir = args.model
    if args.export_dir is None:
        if len(args.files) < 2:
            parser.error("give the export folder (--model DIR) and at least one audio file")
        args.export_dir = args.files.pop(0)
    return args


def main(argv: Sequence[str] | None = None) -> int:
    """The command line; exit status 0 (something classified), 1 (an error, or no file readable), 2 (bad
    arguments), 130 (Ctrl-C). Errors are one line on stderr, never a traceback."""
    args = parse_args(argv)
    try:
        args.files = audio_inputs(args.files)
        clf = Classifier.from_export(args.export_dir, int8=args.int8, threads=args.threads,
                                     classes=parse_labels(args.labels) or None, templates=args.templates)
        if args.window:
            timelines, failed = _timelines(clf, args.files, args.window, args.hop)
            lines = _timeline_view(timelines, failed, clf.labels, args)
            ok = bool(timelines)
        else:
            ranked = clf.classify_files(args.files, args.top, progress=not args.no_progress and len(args.files) > 20)
            failed = [(r.path, r.error or "") for r in ranked if not r.ok]
            lines = [json.dumps(ranked_json(ranked), indent=2)] if args.json else list(format_ranked(ranked))
            ok = len(failed) < len(ranked)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except (ValueError, OSError, MemoryError) as e:  # ExportError, and a broken model's non-finite output
        print(f"error: {e}", file=sys.stderr)
        return 1
    for line in lines:
        print(line)
    for line in format_failed(failed, len(args.files)):
        print(line, file=sys.stderr)
    return 0 if ok else 1


def _timelines(clf: Classifier, files: Sequence[str], window: float, hop: float
               ) -> tuple[list[tuple[str, list[TimelineRow]]], list[tuple[str, str]]]:
    """Each readable file's rows (`Classifier.iter_timeline`); a file that cannot be read is listed and skipped."""
    out: list[tuple[str, list[TimelineRow]]] = []
    failed: list[tuple[str, str]] = []
    for f in files:
        try:
            out.append((f, list(clf.iter_timeline(f, window, hop))))
        except AudioError as e:
            failed.append((f, e.problem))
    return out, failed


def _timeline_view(timelines: list[tuple[str, list[TimelineRow]]], failed: list[tuple[str, str]],
                   labels: list[str], args: Any) -> Iterator[str]:
    """JSON (the `tinyclap.classify` document with a timeline per file, docs/json.md), or per file its name
    and one `start end probability top-label` line per window."""
    if args.json:
        results = [timeline_result(f, rows, labels, args.window, args.hop, args.top) for f, rows in timelines]
        yield json.dumps(classify_document(results, failed), indent=2)
        return
    for f, rows in timelines:
        yield display_path(f)
        for r in rows:
            yield f"  {r.start:9.2f} {r.end:9.2f}  {float(r.scores[r.top()]):6.3f}  {labels[r.top()]}"


if __name__ == "__main__":
    sys.exit(main())
