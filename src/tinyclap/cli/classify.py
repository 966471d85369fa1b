"""`tinyclap classify FILE...`: zero-shot labels for audio files with a teacher, a student or an export.

Without --window each file gets one ranked label list (clips longer than 5 s: mean of the window
embeddings, or the centre crop). With --window SEC [--hop SEC] each file gets a timeline: one row per
window (start, end, top label, probabilities), streamed from disk with bounded memory, the log-mel front
end run once per recording and windows sliced from it (`tinyclap.timeline`), so hour-long recordings
work; --segments merges consecutive windows into labelled segments (--threshold, --none-below), after
smoothing the window scores (--smooth) and folding runs shorter than --min-segment into a neighbour.
The audio model (--model) is a PyTorch one (`tinyclap.models.load_model`) or an export folder (ONNX
Runtime, no torch). Folders stand for the audio files under them (recursively, as in `embed`). All of it
is `tinyclap.Classifier`, the Python API.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import json
import os
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, TextIO

import numpy as np

from tinyclap.audio import display_path
from tinyclap.cli._common import (
    add_alias,
    add_command,
    add_device_arg,
    add_int8_arg,
    add_json_arg,
    add_model_arg,
    add_pool_window_arg,
    add_progress_arg,
    add_templates_arg,
    add_top_arg,
    add_window_args,
    audio_inputs,
    export_model,
    float_in,
    int_in,
    parse_labels,
)
from tinyclap.deploy.runtime import MAX_BATCH
from tinyclap.timeline import MIN_SEGMENT_WINDOWS, SMOOTH_WINDOWS


def register(sub: argparse._SubParsersAction) -> None:
    p = add_command(sub, "classify", "rank class labels for audio files (zero-shot), or per-window timelines",
                    description=__doc__.split("\n\n", 1)[1].strip())
    p.add_argument("files", nargs="+", help="audio files (anything libsndfile decodes) or folders (recursive)")
    g = p.add_argument_group("model")
    add_model_arg(g)
    g.add_argument("--teacher", help="teacher checkpoint whose text tower encodes --labels (default: the model's "
                   "own, the teacher recorded in its run, or an export's text tower from `export --text`); the "
                   "model too when --model is not given")
    add_alias(g, "--student", "--model")
    add_alias(g, "--export-dir", "--model")
    add_int8_arg(g)
    p.add_argument("--tokenizer", help="folder with the BERT uncased vocab.txt (a BERT teacher with --labels)")
    c = p.add_argument_group("classes (one of)")
    c.add_argument("--labels", help='comma-separated class names, e.g. "dog,rain,siren", or a file of names (one a '
                   "line); needs a text encoder (a teacher, or an export with a text tower)")
    c.add_argument("--classes", help="class-matrix file (.npz) saved by tinyclap, no text encoder needed")
    add_templates_arg(p)
    p.add_argument("--long-clip", choices=("windows", "centre"), default="windows",
                   help="clips longer than 5 s: mean of all window embeddings, or the centre crop")
    add_pool_window_arg(p)
    add_top_arg(p)
    add_json_arg(p)
    add_device_arg(p)
    add_progress_arg(p)
    p.add_argument("--strict", action="store_true", help="exit non-zero if any file could not be read")
    t = p.add_argument_group("timeline (long audio)")
    add_window_args(t)
    t.add_argument("--segments", action="store_true", help="print segments: consecutive windows with one label "
                   "merged (each window stands for one hop around its centre)")
    t.add_argument("--threshold", type=float_in(0, 1), default=0.0, help="with --segments: a window counts "
                   "for its top label only with at least this probability, else as '(none)'")
    t.add_argument("--none-below", type=float_in(-1, 1), metavar="COS", help="with --segments: a window whose "
                   "best cosine similarity to any class is below COS counts as '(none)' (none of these)")
    t.add_argument("--smooth", type=float_in(0, 3600), metavar="SEC", help="with --segments: average each "
                   "window's scores with those of the windows within SEC/2 seconds (0: off; default: "
                   f"{SMOOTH_WINDOWS:g} x --window)")
    t.add_argument("--min-segment", type=float_in(0, 3600), metavar="SEC", help="with --segments: runs of "
                   f"windows shorter than SEC join a neighbour (0: off; default: {MIN_SEGMENT_WINDOWS:g} x --window)")
    t.add_argument("--timeline-csv", help="write the timeline as CSV to PATH ('-' for stdout)")
    t.add_argument("--plot", help="PNG of class probability over time (one file per input: PATH, or PATH_<n>_<stem>)")
    t.add_argument("--batch-size", type=int_in(1, MAX_BATCH), default=8, help="windows embedded together")
    p.set_defaults(func=run)


def _classifier(args: argparse.Namespace) -> Any:
    """The `tinyclap.Classifier` the options describe (an export, or a PyTorch model + classes)."""
    from tinyclap.classifier import Classifier

    export_model(args)
    if args.export_dir:
        if args.student or args.model or args.teacher:
            raise ValueError("an export folder brings its own model (and text tower): give it alone as --model, "
                             "without --teacher or a second model")
        if args.labels and args.classes:
            raise ValueError("give --labels or --classes, not both")
        classes = parse_labels(args.labels) or args.classes
        return Classifier.from_export(args.export_dir, int8=args.int8, classes=classes, templates=args.templates,
                                      batch_size=args.batch_size, pool_window=args.pool_window)
    if args.int8:
        raise ValueError("--int8 needs an export folder as --model (int8 models exist only in exports)")
    spec = args.student or args.model or args.teacher
    if spec is None:
        raise ValueError("give a model: --model RUN|CHECKPOINT|NAME|EXPORT_DIR")
    labels = parse_labels(args.labels)
    clf = Classifier.from_model(spec, args.classes or labels or None, teacher=args.teacher, tokenizer=args.tokenizer,
                                templates=args.templates, batch_size=args.batch_size, device=_device(args.device),
                                pool_window=args.pool_window)
    if clf.classes is None:
        raise ValueError('give the classes: --labels "a,b,c" (with a text encoder) or --classes FILE.npz')
    return clf


def _device(device: str) -> Any:
    from tinyclap._util import resolve_device

    return resolve_device(device)


def run(args: argparse.Namespace) -> int:
    if (args.timeline_csv or args.plot or args.segments) and args.window is None:
        raise ValueError("--timeline-csv, --plot and --segments need --window SEC (timeline mode)")
    args.files = audio_inputs(args.files)
    clf = _classifier(args)
    if args.window is not None:
        return _run_timelines(args, clf)
    try:
        results = clf.classify_files(args.files, args.top, long_clip=args.long_clip,
                                     progress=not args.no_progress and len(args.files) > 20)
    except ValueError as e:  # non-finite embeddings: the model is broken, not the audio
        raise ValueError(f"{args.export_dir or args.student or args.model or args.teacher}: {e}") from e
    from tinyclap.classifier import format_ranked, ranked_json

    for line in [json.dumps(ranked_json(results), indent=2)] if args.json else format_ranked(results):
        print(line)
    failed = [(r.path, r.error or "") for r in results if not r.ok]
    _report_failed(failed, len(args.files))
    return 1 if (failed and args.strict) or len(failed) == len(results) else 0


def _report_failed(failed: list[tuple[str, str]], total: int) -> None:
    from tinyclap.classifier import format_failed

    for line in format_failed(failed, total):
        print(line, file=sys.stderr)


# ---------------------------------------------------------------------------------------------------------
# timelines
# ---------------------------------------------------------------------------------------------------------


def _plot_path(base: str, index: int, file: str, n_files: int) -> Path:
    if n_files == 1:
        return Path(base)
    b = Path(base)
    return b.with_name(f"{b.stem}_{index}_{Path(file).stem}{b.suffix or '.png'}")


@contextlib.contextmanager
def _timeline_csv(target: str | None, labels: Sequence[str]) -> Iterator[Any]:
    """A csv writer for --timeline-csv (header written; '-' is stdout), or None without it."""
    if not target:
        yield None
        return
    f: TextIO = sys.stdout if target == "-" else open(target, "w", newline="")  # noqa: SIM115
    try:
        writer = csv.writer(f)
        writer.writerow(["file", "start", "end", "top_label", *labels])
        yield writer
    finally:
        if f is not sys.stdout:
            f.close()


def _file_timeline(args: argparse.Namespace, f: str, clf: Any, writer: Any, table: bool) -> Any:
    """One file's Timeline; rows printed (a view under 100 columns) and written to the CSV as they come."""
    from tinyclap.timeline import Timeline, format_segments, format_timeline_rows

    labels = clf.labels
    tl = Timeline(labels, [], args.window, args.hop)
    source = clf.iter_timeline(f, args.window, args.hop)  # a refused file fails here, before its name is printed

    def rows() -> Iterator[Any]:
        for row in source:
            tl.rows.append(row)
            if writer is not None:
                writer.writerow([display_path(f), f"{row.start:.3f}", f"{row.end:.3f}", labels[row.top()],
                                 *(f"{p:.6f}" for p in row.scores)])
            yield row

    it = rows()
    if table:
        print(display_path(f))
        if not args.segments:
            for line in format_timeline_rows(it, labels):
                print(line)
    for _ in it:  # the rest (segments view, CSV or JSON only)
        pass
    if table and args.segments:
        for line in format_segments(_segments(args, tl)):
            print(line)
    return tl


def _segments(args: argparse.Namespace, tl: Any) -> list[Any]:
    """The segments the options ask for (--threshold, --none-below, --smooth, --min-segment)."""
    return tl.segments(args.threshold, min_similarity=args.none_below, smooth=args.smooth,
                       min_segment=args.min_segment)


def _run_timelines(args: argparse.Namespace, clf: Any) -> int:
    """--window: a per-window timeline for each file (table or segments, CSV, JSON and/or plot)."""
    from tinyclap.audio import AudioError

    labels = clf.labels
    table = not args.json and args.timeline_csv != "-"
    results: list[tuple[str, Any]] = []
    failed: list[tuple[str, str]] = []
    with _timeline_csv(args.timeline_csv, labels) as writer:
        for i, f in enumerate(args.files):
            try:
                tl = _file_timeline(args, f, clf, writer, table)
            except AudioError as e:
                failed.append((f, e.problem))
                continue
            results.append((f, tl))
            if args.plot:
                out = _plot_path(args.plot, i, f, len(args.files))
                plot_timeline(tl.rows, labels, out, title=os.path.basename(f))
                print(f"wrote {out}", file=sys.stderr)
    if args.json:  # the tinyclap.classify document (docs/json.md)
        from tinyclap.schemas import classify_document, timeline_result

        timelines = []
        for f, tl in results:
            segs = _segments(args, tl) if args.segments else None
            timelines.append(timeline_result(f, tl.rows, labels, args.window, args.hop, args.top, segs))
        print(json.dumps(classify_document(timelines, failed), indent=1))
    _report_failed(failed, len(args.files))
    return 1 if (failed and args.strict) or not results else 0


def plot_timeline(
    rows: Sequence[Any],
    labels: Sequence[str],
    path: str | os.PathLike,
    title: str = "",
    max_classes: int = 10,
) -> Path:
    """PNG of class probability vs time (window start), the `max_classes` classes that peak highest.

    Uses matplotlib's Agg canvas directly, so no global backend is changed.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    path = Path(path)
    probs = np.stack([r.scores for r in rows]) if rows else np.zeros((0, len(labels)))  # (W, C)
    t = np.array([r.start for r in rows])
    order = np.argsort(-probs.max(axis=0))[:max_classes] if len(rows) else []
    fig = Figure(figsize=(10, 4), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    for j in order:
        ax.step(t, probs[:, j], where="post", label=labels[j])
    ax.set_xlabel("window start (s)")
    ax.set_ylabel("class probability")
    ax.set_ylim(0, 1)
    ax.set_title(title)
    if len(order):
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize="small")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    return path
