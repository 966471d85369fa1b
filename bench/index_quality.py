"""Text -> audio retrieval with an index: a student's index against its teacher's, and `embed` throughput.

    python bench/index_quality.py --student runs/i13-student --teacher runs/i13-proxy \
        --export runs/i13-export --us8k ../shared/data/UrbanSound8K --fold 3 --out runs/i13-index

1. Embeds UrbanSound8K fold `--fold` (every clip, one 5 s window each: the clips are at most 4 s) into an
   index with the student and another with the teacher's audio tower (`tinyclap.index.embed_sources`).
2. For each of the ten class names, queries both indexes with the teacher's text embedding of
   "this is the sound of {class}" (the zero-shot prompt) and counts how many of the top 10 files carry
   that label: precision@10, averaged over the classes; the student's figure relative to the teacher's.
3. Times `embed` with `--export` (its model.int8.onnx, ONNX Runtime) into a fresh index, 2 threads that
   each decode a file and embed its windows: clips per second, decoding and the model included.
Prints the numbers (and `--json`); asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

import numpy as np

from tinyclap.data.labelled import load_dataset
from tinyclap.index import Index, embed_sources, text_query
from tinyclap.models import load_model


def precision_at_10(index_dir: Path, labels: dict[str, str], classes: list[str], teacher) -> dict[str, float]:
    out = {}
    with Index.open(index_dir) as ix:
        for c in classes:
            q = text_query(ix, c.replace("_", " "), teacher=teacher, templates=["this is the sound of {}"])
            hits = ix.search(q, k=10)
            out[c] = sum(labels[h.path] == c for h in hits) / 10
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--student", help="student run (with --teacher: the precision@10 comparison)")
    p.add_argument("--teacher", help="the teacher it was distilled from (text side, and the reference index)")
    p.add_argument("--export", help="export folder with model.int8.onnx, for the throughput figure")
    p.add_argument("--us8k", default="../shared/data/UrbanSound8K")
    p.add_argument("--fold", type=int, default=3)
    p.add_argument("--out", default="runs/i13-index")
    p.add_argument("--json", action="store_true")
    args = p.parse_args()
    ds = load_dataset("us8k", args.us8k, folds=[args.fold])
    labels = {str(Path(it.path).absolute()): ds.classes[it.label] for it in ds.items}
    manifest = Path(args.out) / "clips.txt"
    manifest.parent.mkdir(parents=True, exist_ok=True)
    manifest.write_text("\n".join(sorted(labels)) + "\n")
    src = [f"manifest:{manifest}"]
    res: dict = {"clips": len(labels), "fold": args.fold}
    if args.student and args.teacher:
        compare(args, src, labels, ds.classes, res)
    if args.export:
        target = Path(args.out) / "int8-throughput"
        shutil.rmtree(target, ignore_errors=True)
        t0 = time.perf_counter()
        rep = embed_sources(src, args.export, target, int8=True, workers=2, progress=False)
        wall = time.perf_counter() - t0
        res["int8_embed_clips_per_s"] = round(rep.embedded / wall, 1)
        res["int8_embed_wall_s"] = round(wall, 1)
    report(args, res, ds.classes)


def compare(args: argparse.Namespace, src: list[str], labels: dict[str, str], classes: list[str], res: dict) -> None:
    """Index the clips with the student and with the teacher; precision@10 of each for the class names."""
    teacher = load_model(args.teacher)
    for name, spec in (("student", args.student), ("teacher", args.teacher)):
        t0 = time.perf_counter()
        rep = embed_sources(src, spec, Path(args.out) / name, progress=False)
        res[f"{name}_embed_s"] = round(time.perf_counter() - t0, 1)
        res[f"{name}_failed"] = len(rep.failed)
        per_class = precision_at_10(Path(args.out) / name, labels, classes, teacher)
        res[f"{name}_p10_per_class"] = per_class
        res[f"{name}_p10"] = float(np.mean(list(per_class.values())))
    res["student_over_teacher"] = res["student_p10"] / max(res["teacher_p10"], 1e-9)


def report(args: argparse.Namespace, res: dict, classes: list[str]) -> None:
    if args.json:
        print(json.dumps(res, indent=2))
        return
    print(f"US8K fold {args.fold}, {res['clips']} clips")
    if "student_p10" not in res:
        classes = []
    else:
        print(f"  text -> audio precision@10 over the 10 class names: teacher index {100 * res['teacher_p10']:.1f} %, "
              f"student index {100 * res['student_p10']:.1f} % = {100 * res['student_over_teacher']:.0f} % of the "
              "teacher's")
    for c in classes:
        t, st = res["teacher_p10_per_class"][c], res["student_p10_per_class"][c]
        print(f"    {c:18s} teacher {t:.1f}  student {st:.1f}")
    if args.export:
        print(f"  embed with {args.export} (int8, ONNX Runtime, 2 decode+embed threads): "
              f"{res['int8_embed_clips_per_s']} clips/s ({res['int8_embed_wall_s']} s, decoding included)")


if __name__ == "__main__":
    main()
