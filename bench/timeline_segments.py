"""Timeline segments on real recordings: segments found vs true, before and after smoothing.

    python bench/timeline_segments.py --model runs/real/teacher/proxy_teacher.safetensors --recordings 3

Builds `--recordings` long recordings by concatenating real UrbanSound8K clips (fold 3, never used to train
a teacher's projection or a student's labels in bench/real_retention.py): `--segments` true segments each,
each segment 2-5 clips of one class (8-20 s; the next segment is another class), so every true boundary
is known. Runs `tinyclap.Classifier.timeline` once per recording (`--window`, `--hop`), then merges the
rows into segments for a grid of `smooth` x `min_segment` settings (`Timeline.segments`; both in window
lengths), and reports per setting, summed over the recordings:

- segments found (vs true), and how many are shorter than 2 s;
- boundary precision / recall / F1 at a tolerance of `--tolerance` seconds (a found boundary matches at most
  one true boundary within the tolerance, greedily by distance);
- time accuracy: the fraction of the recordings' time whose segment label is the true class.

The table's first row is the old behaviour (no smoothing, no minimum length); `*` marks the library default.
`--rows FILE.npz` keeps the timelines (computed once, reused by a later run with the same file).
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import csv  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from collections.abc import Sequence  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import numpy as np  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
US8K = REPO.parent / "shared" / "data" / "UrbanSound8K"
SMOOTH = (0.0, 0.5, 1.0, 1.5, 2.0)  # in window lengths
MIN_SEGMENT = (0.0, 0.5, 1.0, 1.5, 2.0)  # in window lengths


@dataclass
class Recording:
    """A concatenation of real clips: the waveform and its true (class, start, end) segments."""

    wave: np.ndarray
    truth: list[tuple[str, float, float]]


def us8k_clips(root: Path, fold: int) -> dict[str, list[Path]]:
    """class name (spaces) -> the fold's clips present on disk, in CSV order."""
    out: dict[str, list[Path]] = {}
    with open(root / "metadata" / "UrbanSound8K.csv", newline="") as f:
        for row in csv.DictReader(f):
            path = root / "audio" / f"fold{row['fold']}" / row["slice_file_name"]
            if int(row["fold"]) == fold and path.is_file():
                out.setdefault(row["class"].replace("_", " "), []).append(path)
    return out


def build_recording(clips: dict[str, list[Path]], n_segments: int, rng: np.random.Generator, sr: int) -> Recording:
    """`n_segments` segments of 2-5 clips of one class each, the class changing at every boundary."""
    from tinyclap.audio import load_audio

    parts, truth, t, prev = [], [], 0.0, None
    for _ in range(n_segments):
        cls = str(rng.choice([c for c in sorted(clips) if c != prev and len(clips[c]) >= 5]))
        picks = rng.choice(len(clips[cls]), size=int(rng.integers(2, 6)), replace=False)
        seg = np.concatenate([load_audio(clips[cls][i], sr) for i in picks])
        parts.append(seg)
        truth.append((cls, t, t + len(seg) / sr))
        t, prev = t + len(seg) / sr, cls
    return Recording(np.concatenate(parts).astype(np.float32), truth)


def boundary_matches(found: Sequence[float], true: Sequence[float], tol: float) -> int:
    """Found boundaries matched one-to-one to true ones within `tol` seconds, closest pairs first."""
    pairs = sorted((abs(f - t), i, j) for i, f in enumerate(found) for j, t in enumerate(true) if abs(f - t) <= tol)
    used_f, used_t, hits = set(), set(), 0
    for _, i, j in pairs:
        if i not in used_f and j not in used_t:
            used_f.add(i)
            used_t.add(j)
            hits += 1
    return hits


def time_accuracy(segments: Sequence[Any], truth: Sequence[tuple[str, float, float]], step: float = 0.1) -> float:
    t = np.arange(0.0, truth[-1][2], step) + step / 2
    want = np.empty(len(t), object)
    got = np.full(len(t), "", object)
    for lab, a, b in truth:
        want[(t >= a) & (t < b)] = lab
    for s in segments:
        got[(t >= s.start) & (t < s.end)] = s.label
    return float(np.mean(want == got))


def score(timelines: Sequence[Any], recs: Sequence[Recording], smooth: float, min_seg: float, tol: float
          ) -> dict[str, Any]:
    found = true = hits = short = n_true = 0
    acc = []
    for tl, rec in zip(timelines, recs):
        segs = tl.segments(smooth=smooth, min_segment=min_seg)
        fb = [s.start for s in segs[1:]]
        tb = [a for _, a, _ in rec.truth[1:]]
        found, true, hits = found + len(fb), true + len(tb), hits + boundary_matches(fb, tb, tol)
        n_true += len(rec.truth)
        short += sum(s.end - s.start < 2.0 for s in segs)
        acc.append(time_accuracy(segs, rec.truth))
    p, r = hits / max(found, 1), hits / max(true, 1)
    return {"smooth": smooth, "min_segment": min_seg, "segments": found + len(recs), "true_segments": n_true,
            "short_segments": short, "precision": p, "recall": r, "f1": 2 * p * r / max(p + r, 1e-12),
            "time_accuracy": float(np.mean(acc))}


def save_rows(path: Path, timelines: Sequence[Any], recs: Sequence[Recording]) -> None:
    arrays: dict[str, Any] = {"labels": np.array(timelines[0].labels), "window": timelines[0].window,
                              "hop": timelines[0].hop}
    for i, (tl, rec) in enumerate(zip(timelines, recs)):
        arrays[f"t{i}"] = np.array([[r.start, r.end] for r in tl.rows])
        arrays[f"p{i}"] = np.stack([r.scores for r in tl.rows])
        arrays[f"s{i}"] = np.stack([r.similarity for r in tl.rows])
        arrays[f"truth{i}"] = np.array([[lab, a, b] for lab, a, b in rec.truth])
    np.savez(path, n=len(recs), **arrays)


def load_rows(path: Path) -> tuple[list[Any], list[Recording]]:
    from tinyclap.timeline import Timeline, TimelineRow

    z = np.load(path)
    labels, timelines, recs = [str(x) for x in z["labels"]], [], []
    for i in range(int(z["n"])):
        rows = [TimelineRow(float(a), float(b), p, s) for (a, b), p, s in zip(z[f"t{i}"], z[f"p{i}"], z[f"s{i}"])]
        timelines.append(Timeline(labels, rows, float(z["window"]), float(z["hop"])))
        recs.append(Recording(np.zeros(0, np.float32), [(str(c), float(a), float(b)) for c, a, b in z[f"truth{i}"]]))
    return timelines, recs


def compute(args: argparse.Namespace) -> tuple[list[Any], list[Recording]]:
    """The recordings and their timelines (the model run once per recording)."""
    import torch

    from tinyclap.classifier import Classifier

    torch.set_num_threads(1)
    clips = us8k_clips(Path(args.us8k), args.fold)
    clf = Classifier.from_model(args.model, args.classes or sorted(clips), teacher=args.teacher)
    rng = np.random.default_rng(args.seed)
    recs = [build_recording(clips, args.segments, rng, clf.sample_rate) for _ in range(args.recordings)]
    return [clf.timeline(r.wave, args.window, args.hop, sample_rate=clf.sample_rate) for r in recs], recs


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", required=True, help="model spec (tinyclap.models.load_model) or export folder")
    ap.add_argument("--teacher", help="text side for the class names (default: the model's, or its run's)")
    ap.add_argument("--classes", help="class matrix (.npz) instead of encoding the US8K class names")
    ap.add_argument("--us8k", default=str(US8K), help="UrbanSound8K root")
    ap.add_argument("--fold", type=int, default=3)
    ap.add_argument("--recordings", type=int, default=3)
    ap.add_argument("--segments", type=int, default=15, help="true segments per recording")
    ap.add_argument("--window", type=float, default=5.0)
    ap.add_argument("--hop", type=float, default=1.0)
    ap.add_argument("--tolerance", type=float, default=2.0, help="boundary tolerance (s)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--rows", help="timelines file (.npz): read when it exists, else written")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)

    from tinyclap.timeline import MIN_SEGMENT_WINDOWS, SMOOTH_WINDOWS

    t0 = time.perf_counter()
    if args.rows and Path(args.rows).is_file():
        timelines, recs = load_rows(Path(args.rows))
    else:
        timelines, recs = compute(args)
        if args.rows:
            save_rows(Path(args.rows), timelines, recs)
    elapsed = time.perf_counter() - t0
    window = timelines[0].window
    rows = [score(timelines, recs, s * window, m * window, args.tolerance) for s in SMOOTH for m in MIN_SEGMENT]
    summary = {"model": args.model, "recordings": len(recs), "seconds": [r.truth[-1][2] for r in recs],
               "window": window, "hop": timelines[0].hop, "tolerance": args.tolerance,
               "timeline_seconds": round(elapsed, 1), "rows": rows,
               "default": [SMOOTH_WINDOWS * window, MIN_SEGMENT_WINDOWS * window]}
    if args.json:
        print(json.dumps(summary, indent=1))
        return 0
    mins = ", ".join(f"{s:.0f} s" for s in summary["seconds"])
    print(f"{args.model}: {len(recs)} recordings ({mins}), window {window:g} s, hop {summary['hop']:g} s, "
          f"boundary tolerance {args.tolerance:g} s")
    print("| smooth (s) | min segment (s) | segments (true) | < 2 s | boundary P | R | F1 | time accuracy |")
    print("|---|---|---|---|---|---|---|---|")
    key = tuple(summary["default"])
    shown = [rows[0]] + sorted(rows[1:], key=lambda r: -r["f1"])[:10]
    shown += [r for r in rows if (r["smooth"], r["min_segment"]) == key and r not in shown]
    for r in shown:
        mark = " *" if (r["smooth"], r["min_segment"]) == key else ""
        print(f"| {r['smooth']:g}{mark} | {r['min_segment']:g} | {r['segments']} ({r['true_segments']}) | "
              f"{r['short_segments']} | {r['precision']:.2f} | {r['recall']:.2f} | {r['f1']:.2f} | "
              f"{r['time_accuracy']:.3f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
