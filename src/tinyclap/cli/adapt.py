"""`tinyclap adapt --model M --examples CSV --out classes.npz`: few-shot classes from your own labelled clips.

The CSV has the columns `path,label` and optionally `group` (a header row is optional; relative paths are
read from the CSV's folder). The group names the recording (file, session) an example comes from: examples
of one group count as one independent example. Without it, examples of a class whose embeddings are
near-duplicates, or whose long-term spectra agree (slices of one recording), form a
group. Each class keeps the label's text embedding (when a text side is found: --teacher, the model's own
text tower, the teacher recorded in its run, or --text-classes FILE.npz) as its class vector, and its examples
become affinities: a clip close to an example gains on that example's class, each recording counting once
(--affinity; 0 for a plain class matrix, as the MCU head needs, whose class vectors then blend the text with
the mean of the groups' audio embeddings, the text weight shrinking with the number of independent examples:
--prior, or one fixed --alpha). Labels
that differ only in case, spaces or `_` are one class; repeated rows count once; one class is refused.
Labels without text (or all of them with --no-text) are classes from their examples alone. The output is
an ordinary class-matrix file: `classify --classes`, `export --classes` and the torch-free runtime read it
unchanged. See `tinyclap.adapt`.
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
    float_in,
)

MAX_EXAMPLES = 1_000_000
MAX_LABEL_CHARS = 1000
MAX_CSV_BYTES = 256 << 20


def _prior(text: str) -> float | str:
    """--prior: a number >= 0 (inf allowed) or `auto`."""
    if text == "auto":
        return text
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number or 'auto'") from None
    if not value >= 0:  # NaN fails too
        raise argparse.ArgumentTypeError(f"{text} is not >= 0")
    return value


def register(sub: argparse._SubParsersAction) -> None:
    from tinyclap.adapt import AFFINITY, MAX_AFFINITY

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
    p.add_argument("--affinity", type=float_in(0.0, MAX_AFFINITY), default=AFFINITY, metavar="A",
                   help="how much a clip close to an example gains on its class, in units of the spread of the class "
                   "scores; 0: a plain class matrix (what export --target tflm takes)")
    p.add_argument("--prior", type=_prior, default=None, metavar="LAM|auto",
                   help="the text side's weight in independent examples: a class's text weight is LAM / (LAM + "
                   "its independent examples); auto: chosen by leave-one-group-out; inf: the text alone (default: "
                   "inf with affinities, tinyclap.adapt.PRIOR (3) with --affinity 0)")
    p.add_argument("--alpha", type=float, help="one fixed text weight in [0, 1] for every class (instead of --prior)")
    p.add_argument("--batch-size", type=int, default=16, help="windows embedded together")
    p.add_argument("--strict", action="store_true", help="fail if any example file could not be read")
    add_json_arg(p, "the report")
    add_device_arg(p)
    add_progress_arg(p)
    p.set_defaults(func=run)


Example = tuple[str, str, str | None]  # (audio path, label, group or None)


def _row(row: list[str], name: str, i: int, base: Path) -> Example:
    """One CSV row as an example; a one-line ValueError naming the file and row otherwise."""
    if len(row) not in (2, 3) or not row[0].strip() or not row[1].strip():
        raise ValueError(f"{name}, row {i}: expected the columns path,label[,group] (path and label non-empty), "
                         f"got {row!r:.120}")
    label, group = row[1].strip(), row[2].strip() if len(row) == 3 else ""
    for what, text in (("label", label), ("group", group)):
        if len(text) > MAX_LABEL_CHARS or not text.isprintable():
            raise ValueError(f"{name}, row {i}: {what} must be printable and at most {MAX_LABEL_CHARS} chars")
    audio = Path(row[0].strip())
    return os.fspath(audio if audio.is_absolute() else base / audio), label, group or None


def read_examples(path: str | os.PathLike) -> list[Example]:
    """(audio path, label, group or None) rows of an examples CSV; a one-line ValueError naming the file and
    row otherwise."""
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
    rows: list[Example] = []
    try:
        for i, row in enumerate(csv.reader(io.StringIO(text)), start=1):
            if not row or all(not c.strip() for c in row):
                continue
            if i == 1 and [c.strip().lower() for c in row] in (["path", "label"], ["path", "label", "group"]):
                continue
            rows.append(_row(row, name, i, p.parent))
            if len(rows) > MAX_EXAMPLES:
                raise ValueError(f"{name}: more than {MAX_EXAMPLES} examples")
    except csv.Error as e:
        raise ValueError(f"{name}: malformed CSV ({e})") from e
    if not rows:
        raise ValueError(f"{name}: no examples (expected rows path,label)")
    return rows


def tidy_examples(rows: list[Example]) -> tuple[list[Example], list[str]]:
    """Labels that differ only in case, spaces or `_` merged into their first spelling, repeated (path, label)
    rows kept once; the rows and a note for each change. A ValueError when one class is left."""
    first: dict[str, str] = {}
    merged: dict[str, str] = {}
    out: dict[tuple[str, str], Example] = {}
    for audio, label, group in rows:
        key = " ".join(label.replace("_", " ").casefold().split())
        keep = first.setdefault(key, label)
        if keep != label:
            merged.setdefault(label, keep)
        out.setdefault((os.path.normpath(audio), keep), (audio, keep, group))
    notes = [f"label {lb!r} taken as {keep!r}" for lb, keep in merged.items()]
    if len(out) < len(rows):
        notes.append(f"{len(rows) - len(out)} repeated row(s) (same file and label) counted once")
    if len(first) < 2:
        raise ValueError(f"examples of one class only ({next(iter(first.values()))!r}): a classifier needs two "
                         "classes or more")
    return list(out.values()), notes


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
    from tinyclap.adapt import adapt_classes, file_spectrum
    from tinyclap.classifier import Classifier

    if args.alpha is not None and not 0.0 <= args.alpha <= 1.0:
        raise ValueError(f"--alpha must be in [0, 1], got {args.alpha}")
    if not 1 <= args.batch_size <= 1024:
        raise ValueError(f"--batch-size must be in 1..1024, got {args.batch_size}")
    if args.no_text and (args.text_classes or args.alpha is not None):
        raise ValueError("--no-text leaves nothing to blend: drop --text-classes/--alpha")
    examples, notes = tidy_examples(read_examples(args.examples))
    for note in notes:
        print(f"note: {note}", file=sys.stderr)
    from tinyclap._util import resolve_device

    clf = Classifier.from_model(args.model, teacher=args.teacher, tokenizer=args.tokenizer, templates=args.templates,
                                batch_size=args.batch_size, device=resolve_device(args.device))
    labels = list(dict.fromkeys(lb for _, lb, _ in examples))
    text = _text_side(args, clf, labels)
    res = clf.embed_files([p for p, _, _ in examples], progress=not args.no_progress and len(examples) > 20)
    for p, why in res.failed:
        print(f"skipped {p}: {why}", file=sys.stderr)
    if res.failed and args.strict:
        raise ValueError(f"{args.examples}: {len(res.failed)} of {len(examples)} example files could not be read")
    kept = [examples[i] for i in res.kept]
    lost = [lb for lb in labels if lb not in {lb for _, lb, _ in kept}]
    if lost:
        print(f"dropped classes with no readable example: {', '.join(lost)}", file=sys.stderr)
    if not kept:
        raise ValueError(f"{args.examples}: no example file could be read")
    import numpy as np

    spectra = np.stack([file_spectrum(p) for p, _, _ in kept])  # slices of one recording share one spectrum
    adapted, report = adapt_classes(res.embeddings, [lb for _, lb, _ in kept], text, alpha=args.alpha,
                                    groups=[g for _, _, g in kept], prior=args.prior, spectra=spectra,
                                    affinity=args.affinity)
    out = adapted.save(args.out)
    _print_report(args, out, adapted, report, res)
    return 0


def _print_report(args: argparse.Namespace, out: Path, adapted: Any, report: Any, res: Any) -> None:
    """The report: JSON, or a summary line and one line per class; a warning per class that looks like one
    recording (on stderr, both ways)."""
    for c in report.classes:
        if c["one_recording"]:
            print(f"warning: the {c['examples']} examples of {c['label'][:60]!r} look like one recording "
                  f"(near-duplicate embeddings, one long-term spectrum, or one group): they count as "
                  f"{c['independent']:.1f} independent example(s), text weight "
                  f"{c['text_weight']:.2f}; add recordings, or a group column if they are not", file=sys.stderr)
    if args.json:
        print(json.dumps({"out": os.fspath(out), "examples": len(res.kept), "failed": [list(f) for f in res.failed],
                          **report.to_dict()}, indent=1))
        return
    lam = "inf" if report.lam is None else f"{report.lam:g}"
    aff = report.affinity
    print(f"wrote {out}: {len(adapted.labels)} classes from {len(res.kept)} examples, text prior {lam} "
          f"({report.chosen_by}; groups: {report.grouping}), logit scale {report.logit_scale:.2f}")
    print(f"  example affinities: strength {aff['strength']:g} (an independent example's gain {aff['weight']:.3f}), "
          f"sharpness {aff['sharpness']:.1f}" if aff else "  no example affinities: a plain class matrix")
    if report.loo_accuracy:
        print(f"  leave-one-group-out accuracy {report.loo_accuracy[lam]:.3f} on {report.scored_examples} examples "
              f"(text only: {report.loo_accuracy['inf']:.3f})")
    print(f"  {'class':40s} examples  independent  text weight")
    for c in report.classes:
        weight = f"{c['text_weight']:.2f}" if c["text"] else "no text"
        print(f"  {c['label'][:40]:40s} {c['examples']:8d}  {c['independent']:11.1f}  {weight}")
