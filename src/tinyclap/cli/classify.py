"""`tinyclap classify FILE...`: zero-shot labels for audio files with a teacher, a student or an export.

Without --window each file gets one ranked label list (clips longer than 5 s: mean of the window
embeddings, or the centre crop). With --window SEC [--hop SEC] each file gets a timeline: one row per
window (start, end, top label, every class's probability), streamed from disk with bounded memory
(`tinyclap.audio.stream_windows`, windows embedded a few at a time), so hour-long recordings work.
The audio model is a PyTorch one (--model/--student/--teacher, `tinyclap.models.load_model`) or an
export folder (--export-dir, run by the torch-free `tinyclap.runtime`).
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import json
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, TextIO

import numpy as np

from tinyclap.audio import display_path
from tinyclap.cli._common import add_command, add_templates_arg, classifier_from_args


def register(sub: argparse._SubParsersAction) -> None:
    p = add_command(sub, "classify", "rank class labels for audio files (zero-shot), or per-window timelines",
                    description=__doc__.split("\n\n", 1)[1].strip())
    p.add_argument("files", nargs="+", help="audio files (anything libsndfile decodes)")
    g = p.add_argument_group("model (one of)")
    g.add_argument("--student", help="student checkpoint (.safetensors/.json or a run folder)")
    g.add_argument("--teacher", help="teacher checkpoint (official MS CLAP .pth, ours or a proxy); also encodes "
                   "--labels (default for that: the teacher recorded in the student's run)")
    g.add_argument("--model", help="any model spec: checkpoint, run folder or student name")
    g.add_argument("--export-dir", help="folder written by `tinyclap export` (ONNX Runtime, classes included)")
    g.add_argument("--int8", action="store_true", help="with --export-dir: use model.int8.onnx")
    p.add_argument("--tokenizer", help="folder with the BERT uncased vocab.txt (a BERT teacher with --labels)")
    c = p.add_argument_group("classes (one of)")
    c.add_argument("--labels", help='comma-separated class names, e.g. "dog,rain,siren" (needs a text encoder)')
    c.add_argument("--classes", help="class-matrix file (.npz) saved by tinyclap, no text encoder needed")
    add_templates_arg(p)
    p.add_argument("--long-clip", choices=("windows", "centre"), default="windows",
                   help="clips longer than 5 s: mean of all window embeddings, or the centre crop")
    p.add_argument("--top", type=int, default=5, help="labels shown per file")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.add_argument("--strict", action="store_true", help="exit non-zero if any file could not be read")
    t = p.add_argument_group("timeline (long audio)")
    t.add_argument("--window", type=float, help="per-window timeline with windows of SEC seconds (e.g. 5)")
    t.add_argument("--hop", type=float, default=1.0, help="hop between windows in seconds")
    t.add_argument("--timeline-csv", help="write the timeline as CSV to PATH ('-' for stdout)")
    t.add_argument("--plot", help="PNG of class probability over time (one file per input: PATH, or PATH_<n>_<stem>)")
    t.add_argument("--batch-size", type=int, default=8, help="windows embedded together")
    p.set_defaults(func=run)


def _torch_embedder(model: Any) -> Callable[[np.ndarray], np.ndarray]:
    """(B, N) numpy windows -> (B, D) numpy embeddings through a PyTorch AudioEmbedder."""
    import torch

    def embed(waves: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return model.embed_waveform(torch.from_numpy(np.ascontiguousarray(waves))).float().cpu().numpy()

    return embed


def run(args: argparse.Namespace) -> int:
    if args.window is not None and not (args.window > 0 and args.hop > 0):
        raise ValueError(f"--window and --hop must be > 0, got {args.window} and {args.hop}")
    if args.batch_size < 1:
        raise ValueError(f"--batch-size must be >= 1, got {args.batch_size}")
    if (args.timeline_csv or args.plot) and args.window is None:
        raise ValueError("--timeline-csv and --plot need --window SEC (timeline mode)")
    if args.export_dir:
        return _run_export(args)
    if args.int8:
        raise ValueError("--int8 needs --export-dir (int8 models exist only in exports)")
    from tinyclap.models import load_model

    spec = args.student or args.model or args.teacher
    if spec is None:
        raise ValueError("give a model: --student CKPT, --teacher CKPT, --model SPEC or --export-dir DIR")
    model = load_model(spec, tokenizer_dir=args.tokenizer)
    clf = classifier_from_args(args, model, spec)
    if clf.embed_dim != model.embed_dim:
        raise ValueError(f"class matrix has {clf.embed_dim} dims but the audio model gives {model.embed_dim}")
    if args.window is not None:
        clip = int(round(5.0 * model.sample_rate))
        return _run_timelines(args, _torch_embedder(model), clf, model.sample_rate, clip)

    from tinyclap.evaluation.embedding import embed_files

    res = embed_files(model, args.files, mode=args.long_clip, progress=len(args.files) > 20)
    ranked = clf.rank(res.embeddings, args.top) if res.paths else []
    return _report_ranked(args, list(zip(res.paths, ranked)), res.failed)


def _run_export(args: argparse.Namespace) -> int:
    """--export-dir: the exported ONNX model through the torch-free runtime."""
    from tinyclap.audio import AudioError
    from tinyclap.deploy.runtime import Runtime

    if args.student or args.model or args.teacher or args.labels:
        raise ValueError(
            "--export-dir brings its own model and classes: drop --student/--model/--teacher/--labels"
        )
    rt = Runtime(args.export_dir, int8=args.int8, batch_size=args.batch_size)
    if args.classes:
        from tinyclap.zeroshot import ZeroShotClassifier

        rt.classifier = ZeroShotClassifier.load(args.classes)
        if rt.classifier.embed_dim != rt.embed_dim:
            raise ValueError(
                f"class matrix has {rt.classifier.embed_dim} dims but the export gives {rt.embed_dim}"
            )
    if args.window is not None:
        return _run_timelines(args, rt.embed, rt.classifier, rt.sample_rate, rt.clip_samples)
    ok: list[tuple[str, list[tuple[str, float]]]] = []
    failed: list[tuple[str, str]] = []
    for f in args.files:
        try:
            ok.append((f, rt.classify(f, args.top, mode=args.long_clip)))
        except AudioError as e:
            failed.append((f, e.problem))
    return _report_ranked(args, ok, failed)


def _report_ranked(
    args: argparse.Namespace, ranked: list[tuple[str, list[tuple[str, float]]]], failed: list[tuple[str, str]]
) -> int:
    if args.json:
        out = {
            "results": [{"file": p, "labels": [{"label": lb, "score": s} for lb, s in r]} for p, r in ranked],
            "failed": [{"file": p, "error": e} for p, e in failed],
        }
        print(json.dumps(out, indent=2))
    else:
        for p, r in ranked:
            print(display_path(p))
            for lb, s in r:
                print(f"  {s:7.4f}  {lb}")
    _report_failed(failed, len(args.files))
    return 1 if (failed and args.strict) or not ranked else 0


def _report_failed(failed: list[tuple[str, str]], total: int) -> None:
    for p, e in failed:
        print(f"skipped {display_path(p)}: {e}", file=sys.stderr)
    if failed:
        print(f"{len(failed)} of {total} files could not be read", file=sys.stderr)


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


def _file_timeline(args: argparse.Namespace, f: str, embed: Callable[[np.ndarray], np.ndarray], clf: Any,
                   rates: tuple[int, int], writer: Any, table: bool) -> list[Any]:
    """One file's timeline rows, printed as a table and/or written to the CSV as they come."""
    from tinyclap.deploy.runtime import iter_timeline

    labels = list(clf.labels)
    if table:
        print(f"{display_path(f)}\n  {'start':>8s} {'end':>8s}  {'top label':20s} "
              + " ".join(f"{lb[:10]:>10s}" for lb in labels))
    rows = []
    for row in iter_timeline(embed, f, clf, window=args.window, hop=args.hop, sample_rate=rates[0],
                             clip_samples=rates[1], batch_size=args.batch_size):
        rows.append(row)
        if writer is not None:
            writer.writerow([display_path(f), f"{row.start:.3f}", f"{row.end:.3f}", row.top_label,
                             *(f"{p:.6f}" for p in row.probabilities)])
        if table:
            print(f"  {row.start:8.2f} {row.end:8.2f}  {row.top_label[:20]:20s} "
                  + " ".join(f"{p:10.4f}" for p in row.probabilities))
    return rows


def _run_timelines(
    args: argparse.Namespace,
    embed: Callable[[np.ndarray], np.ndarray],
    clf: Any,
    sample_rate: int,
    clip_samples: int,
) -> int:
    """--window: a per-window timeline for each file (table, CSV, JSON and/or plot)."""
    from tinyclap.audio import AudioError

    labels = list(clf.labels)
    table = not args.json and args.timeline_csv != "-"
    results: list[dict[str, Any]] = []
    failed: list[tuple[str, str]] = []
    with _timeline_csv(args.timeline_csv, labels) as writer:
        for i, f in enumerate(args.files):
            try:
                rows = _file_timeline(args, f, embed, clf, (sample_rate, clip_samples), writer, table)
            except AudioError as e:
                failed.append((f, e.problem))
                continue
            results.append({"file": f, "rows": rows})
            if args.plot:
                out = _plot_path(args.plot, i, f, len(args.files))
                plot_timeline(rows, labels, out, title=os.path.basename(f))
                print(f"wrote {out}", file=sys.stderr)
    if args.json:
        out_json = {
            "window": args.window,
            "hop": args.hop,
            "labels": labels,
            "timelines": [{"file": r["file"], "rows": [row.to_dict(labels) for row in r["rows"]]} for r in results],
            "failed": [{"file": p, "error": e} for p, e in failed],
        }
        print(json.dumps(out_json, indent=1))
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
    probs = np.stack([r.probabilities for r in rows]) if rows else np.zeros((0, len(labels)))  # (W, C)
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
