"""Few-shot adaptation (`tinyclap adapt`) against zero-shot, with the same student, on held-out clips.

    python bench/adapt.py --model runs/i13-student --us8k ../shared/data/UrbanSound8K --fold 3 \
        --shots 1,5 --draws 10

Every clip of the fold is embedded once (`tinyclap.Classifier.embed_files`, the code path of `classify` and
`adapt`); the zero-shot class matrix comes from the teacher recorded in the student's run (one prompt,
"this is the sound of {class}"). For each draw, K examples per class are picked at random, the classes are
adapted from them (`tinyclap.adapt.adapt_classes`: text + audio, the text weight chosen by leave-one-out)
and both classifiers are scored on the remaining clips of the fold (the same clips for both). Prints mean
and spread over the draws; `--json` for the raw numbers.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from tinyclap.adapt import adapt_classes
from tinyclap.classifier import Classifier
from tinyclap.data.spec import load_eval_dataset


def draw(y: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """Indices of k random examples per class."""
    return np.concatenate([rng.choice(np.flatnonzero(y == c), size=k, replace=False) for c in np.unique(y)])


def run(args: argparse.Namespace) -> dict:
    ds = load_eval_dataset("us8k", args.us8k, folds=[args.fold])
    clf = Classifier.from_model(args.model, teacher=args.teacher)
    classes = list(ds.classes)
    t0 = time.time()
    clf.set_labels(classes)
    res = clf.embed_files([it.path for it in ds.items], progress=args.progress)
    emb = res.embeddings
    y = np.array([ds.items[i].label for i in res.kept])
    zs = clf.classes
    print(f"embedded {len(y)} clips of fold {args.fold} in {time.time() - t0:.0f} s "
          f"({len(res.failed)} unreadable)", file=sys.stderr)
    zs_pred = (emb @ zs.weights.T).argmax(1)
    out = {"model": str(args.model), "fold": args.fold, "clips": int(len(y)), "classes": classes,
           "zero_shot_all": float(np.mean(zs_pred == y)), "runs": []}
    for k in args.shots:
        for d in range(args.draws):
            rng = np.random.default_rng(args.seed + 1000 * k + d)
            train = draw(y, k, rng)
            test = np.setdiff1d(np.arange(len(y)), train)
            row = {"shots": k, "draw": d, "test_clips": int(len(test)),
                   "zero_shot": float(np.mean(zs_pred[test] == y[test]))}
            for name, text, alpha in (("adapted", zs, None), ("audio_only", None, None)):
                adapted, rep = adapt_classes(emb[train], [classes[i] for i in y[train]], text, alpha=alpha,
                                             labels=classes)
                pred = (emb[test] @ adapted.weights.T).argmax(1)
                row[name] = float(np.mean(pred == y[test]))
                if name == "adapted":
                    row["alpha"] = rep.alpha
            out["runs"].append(row)
    return out


def summary(out: dict) -> str:
    lines = [f"fold {out['fold']}: {out['clips']} clips, zero-shot on all of them {100 * out['zero_shot_all']:.1f} %",
             "| examples per class | draws | zero-shot % | adapted % (text + audio) | gain (points) | min gain "
             "| audio only % | alpha chosen |",
             "|---|---|---|---|---|---|---|---|"]
    for k in sorted({r["shots"] for r in out["runs"]}):
        rs = [r for r in out["runs"] if r["shots"] == k]
        z, a, o = (np.array([r[key] for r in rs]) * 100 for key in ("zero_shot", "adapted", "audio_only"))
        g = a - z
        al = np.array([r["alpha"] for r in rs])
        lines.append(f"| {k} | {len(rs)} | {z.mean():.1f} ± {z.std():.1f} | {a.mean():.1f} ± {a.std():.1f} | "
                     f"{g.mean():+.1f} ± {g.std():.1f} | {g.min():+.1f} | {o.mean():.1f} ± {o.std():.1f} | "
                     f"{al.mean():.2f} ({al.min():g}-{al.max():g}) |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="runs/i13-student", help="student run (its recorded teacher encodes text)")
    ap.add_argument("--teacher", help="teacher checkpoint (default: the one recorded in the run)")
    ap.add_argument("--us8k", default=str(Path(__file__).resolve().parents[2] / "shared" / "data" / "UrbanSound8K"))
    ap.add_argument("--fold", type=int, default=3)
    ap.add_argument("--shots", type=lambda s: [int(x) for x in s.split(",")], default=[1, 5])
    ap.add_argument("--draws", type=int, default=10)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--progress", action="store_true")
    args = ap.parse_args(argv)
    out = run(args)
    print(json.dumps(out, indent=1) if args.json else summary(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
