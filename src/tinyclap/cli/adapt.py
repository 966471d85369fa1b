"""`tinyclap adapt --model M --examples CSV --out classes.npz`: few-shot classes from your own labelled clips.

The CSV has two columns, `path,label` (a header row `path,label` is optional; relative paths are read from
the CSV's folder). Each class vector blends the label's text embedding (when a text side is found:
--teacher, the model's own text tower, the teacher recorded in its run, or --text-classes FILE.npz) with
the mean of its examples' normalised audio embeddings; the mixing weight is chosen by leave-one-out on
the examples (or fixed with --alpha). Labels without text (or all of them with --no-text) are classes
from their examples alone. The output is an ordinary class-matrix file: `classify --classes`,
`export --classes` and the torch-free runtime read it unchanged. See `tinyclap.adapt`.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import sys
from pathlib import Path
from typing import Any

from tinyclap.cli._common import (
    add_command,
    add_device_arg,
    add_json_arg,
    add_model_arg,
    add_progress_arg,
    add_templates_arg,
)

MAX_EXAMPLES = 1_000_000
MAX_LABEL_CHARS = 1000
MAX_CSV_BYTES = 256 << 20


def register(sub: argparse._SubParsersAction) -> None:
    p = add_command(sub, "adapt", "few-shot classes from labelled example clips -> classes.npz",
                    description=__doc__.split("\n\n", 1)[1].strip())
    add_model_arg(p, required=True)
    p.add_argument("--examples", required=True, metavar="CSV", help="CSV of path,label rows")
    p.add_argument("--out", required=True, help="class-matrix file to write (.npz)")
    t = p.add_argument_group("text side (optional)")
    t.add_argument("--teacher", help="teacher checkpoint whose text tower encodes the labels (default: the model's "
                   "own, or the teacher recorded in its run)")
    t.add_argument("--tokenizer", help="folder with the BERT uncased vocab.txt (a BERT teacher)")
    t.add_argument("--text-classes", metavar="NPZ", help="take the labels' text vectors from this class-matrix file "
                   "instead of a text encoder")
    t.add_argument("--no-text", action="store_true", help="examples only: no text embeddings at all")
    add_templates_arg(t)
    p.add_argument("--alpha", type=float, help="fixed text weight in [0, 1] (default: chosen by leave-one-out)")
    p.add_argument("--batch-size", type=int, default=16, help="windows embedded together")
    p.add_argument("--strict", action="store_true", help="fail if any example file could not be read")
    add_json_arg(p, "the report")
    add_device_arg(p)
    add_progress_arg(p)
    p.set_defaults(func=run)


def read_examples(path: str | os.PathLike) -> list[tuple[str, str]]:
    """(audio path, label) rows of an examples CSV; a one-line ValueError naming the file and row otherwise."""
    from tinyclap._util import display_path

    name = display_path(path)
    p = Path(path)
    if not p.is_file():
        raise ValueError(f"{name}: no such file" if not p.exists() else f"{name}: not a regular file")
    try:
        if p.stat().st_size > MAX_CSV_BYTES:
            raise ValueError(f"{name}: larger than {MAX_CSV_BYTES >> 20} MiB; not an examples CSV")
        text = p.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise ValueError(f"{name}: not UTF-8 text ({e.reason} at byte {e.start})") from e
    except OSError as e:
        raise ValueError(f"{name}: cannot read ({e.strerror or e})") from e
    rows: list[tuple[str, str]] = []
    try:
        for i, row in enumerate(csv.reader(io.StringIO(text)), start=1):
            if not row or all(not c.strip() for c in row):
                continue
            if i == 1 and [c.strip().lower() for c in row] == ["path", "label"]:
                continue
            if len(row) != 2 or not row[0].strip() or not row[1].strip():
                raise ValueError(f"{name}, row {i}: expected two non-empty columns path,label, got {row!r:.120}")
            label = row[1].strip()
            if len(label) > MAX_LABEL_CHARS or not label.isprintable():
                raise ValueError(f"{name}, row {i}: label must be printable and at most {MAX_LABEL_CHARS} chars")
            audio = Path(row[0].strip())
            rows.append((os.fspath(audio if audio.is_absolute() else p.parent / audio), label))
            if len(rows) > MAX_EXAMPLES:
                raise ValueError(f"{name}: more than {MAX_EXAMPLES} examples")
    except csv.Error as e:
        raise ValueError(f"{name}: malformed CSV ({e})") from e
    if not rows:
        raise ValueError(f"{name}: no examples (expected rows path,label)")
    return rows


def _text_side(args: argparse.Namespace, clf: Any, labels: list[str]) -> Any:
    """The text class matrix for `labels` (None: no text), by the options' rule."""
    from tinyclap.zeroshot import ZeroShotClassifier

    if args.no_text:
        return None
    if args.text_classes:
        return ZeroShotClassifier.load(args.text_classes)
    if not clf.can_encode_text:
        if args.teacher:  # asked for explicitly: say why it cannot be used
            clf.set_labels(labels)
        print("note: no text side found (give --teacher or --text-classes): classes from examples only",
              file=sys.stderr)
        return None
    clf.set_labels(labels)
    return clf.classes


def run(args: argparse.Namespace) -> int:
    from tinyclap.adapt import adapt_classes
    from tinyclap.classifier import Classifier

    if args.alpha is not None and not 0.0 <= args.alpha <= 1.0:
        raise ValueError(f"--alpha must be in [0, 1], got {args.alpha}")
    if not 1 <= args.batch_size <= 1024:
        raise ValueError(f"--batch-size must be in 1..1024, got {args.batch_size}")
    if args.no_text and (args.text_classes or args.alpha is not None):
        raise ValueError("--no-text leaves nothing to blend: drop --text-classes/--alpha")
    examples = read_examples(args.examples)
    from tinyclap._util import resolve_device

    clf = Classifier.from_model(args.model, teacher=args.teacher, tokenizer=args.tokenizer, templates=args.templates,
                                batch_size=args.batch_size, device=resolve_device(args.device))
    labels = list(dict.fromkeys(lb for _, lb in examples))
    text = _text_side(args, clf, labels)
    res = clf.embed_files([p for p, _ in examples], progress=not args.no_progress and len(examples) > 20)
    for p, why in res.failed:
        print(f"skipped {p}: {why}", file=sys.stderr)
    if res.failed and args.strict:
        raise ValueError(f"{args.examples}: {len(res.failed)} of {len(examples)} example files could not be read")
    kept_labels = [examples[i][1] for i in res.kept]
    lost = [lb for lb in labels if lb not in set(kept_labels)]
    if lost:
        print(f"dropped classes with no readable example: {', '.join(lost)}", file=sys.stderr)
    if not kept_labels:
        raise ValueError(f"{args.examples}: no example file could be read")
    adapted, report = adapt_classes(res.embeddings, kept_labels, text, alpha=args.alpha)
    out = adapted.save(args.out)
    info = {"out": os.fspath(out), "examples": len(res.kept), "failed": [list(f) for f in res.failed],
            **report.to_dict()}
    if args.json:
        print(json.dumps(info, indent=1))
    else:
        print(f"wrote {out}: {len(adapted.labels)} classes from {len(res.kept)} examples, alpha {report.alpha:g} "
              f"({report.chosen_by}), logit scale {report.logit_scale:.2f}")
        if report.loo_accuracy:
            best = report.loo_accuracy.get(f"{report.alpha:g}")
            print(f"  leave-one-out accuracy {best:.3f} on {report.loo_examples} examples "
                  f"(text only: {report.loo_accuracy.get('1', float('nan')):.3f})")
        for c in report.classes:
            kind = 'text + audio' if c['text'] else 'audio only'
            print(f"  {c['label'][:60]:60s} {c['examples']:5d} examples  {kind}")
    return 0
