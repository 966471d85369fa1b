"""Few-shot adaptation (`tinyclap adapt`) against zero-shot, with the same student, on held-out clips.

    python bench/adapt.py --model weak=runs/adapt/weak --model best=runs/adapt/best \
        --us8k ../shared/data/UrbanSound8K --fold 3 --shots 1,5,10 --draws 20 --cache runs/adapt/emb

Every clip of the fold is embedded once per model (`tinyclap.Classifier.embed_files`, the code path of
`classify` and `adapt`; kept in `--cache` as .npz, keyed by the model's weights), and the zero-shot class
matrix comes from the teacher recorded in the student's run (one prompt, "this is the sound of {class}").
Each draw picks K examples per class (at most the class's clips - 2, so every class keeps test clips) in
one of two ways:

- `diverse`: from K different recordings (UrbanSound8K's `fsID`; cycling through the class's recordings
  in random order when it has fewer than K);
- `slices`: K slices of one recording (a random one of those with K slices or more, else the largest),
  as a user who labels one long file would give.

The classes are adapted from them (`tinyclap.adapt.adapt_classes`: the defaults, text class vectors and
example affinities, groups found from the embeddings and the clips' long-term spectra as `tinyclap adapt`
finds them, no `group` column: a user cannot know which case they are in), and, for comparison: a plain
class matrix (`affinity=0`, the blend with lam = 3 that the MCU head takes), the affinities with every example
counting once (each its own group: Tip-Adapter's cache as published), with the recordings given as groups,
with groups found from the embeddings alone (no spectra), and from the examples alone (no text, no
affinities: prototypes). Every classifier is scored (`ZeroShotClassifier.scores`) on the remaining clips of
the fold (the same clips for all) and, for the first three, also on the remaining clips from recordings none
of the examples comes from (*unseen recordings*: the rest of the fold shares recordings with the examples,
which flatters audio). Prints mean ± standard deviation over the draws and the worst draw's gain; `--json`
for the raw numbers.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from tinyclap._util import atomic_save_npz, sha256_file
from tinyclap.adapt import AFFINITY, adapt_classes, file_spectrum
from tinyclap.data.spec import load_eval_dataset

SELECTIONS = ("diverse", "slices")
METHODS = ("adapted", "class_matrix", "each_counts", "given_groups", "embedding_groups", "audio_only")
UNSEEN = ("adapted", "class_matrix", "each_counts")


def embed_fold(spec: str, args: argparse.Namespace) -> dict[str, np.ndarray]:
    """Embeddings (N, D), labels, recording ids and the zero-shot class matrix of the fold, cached."""
    from tinyclap.classifier import Classifier

    path = Path(spec)
    weights = next((p for p in (path / "student.safetensors", path) if p.is_file()), None)
    key = sha256_file(weights)[:16] if weights is not None else path.name
    cache = Path(args.cache) / f"{key}-fold{args.fold}.npz" if args.cache else None
    ds = load_eval_dataset("us8k", args.us8k, folds=[args.fold])
    if cache is not None and cache.is_file():
        with np.load(cache) as z:
            out = dict(z)
        if "spectra" in out:  # else written before the spectra existed: computed again
            return out
    clf = Classifier.from_model(spec, teacher=args.teacher)
    clf.set_labels(list(ds.classes))
    t0 = time.time()
    res = clf.embed_files([it.path for it in ds.items], progress=args.progress)
    print(f"{spec}: embedded {len(res.kept)} clips of fold {args.fold} in {time.time() - t0:.0f} s", file=sys.stderr)
    out = {"emb": res.embeddings.astype(np.float32), "y": np.array([ds.items[i].label for i in res.kept]),
           "rec": np.array([Path(ds.items[i].path).name.split("-")[0] for i in res.kept]),
           "text": clf.classes.weights, "scale": np.float64(clf.classes.logit_scale),
           "classes": np.array(ds.classes), "names": np.array([Path(ds.items[i].path).name for i in res.kept]),
           "spectra": np.stack([file_spectrum(ds.items[i].path) for i in res.kept])}
    if cache is not None:
        atomic_save_npz(cache, **out)
    return out


def pick(y: np.ndarray, rec: np.ndarray, k: int, how: str, rng: np.random.Generator) -> np.ndarray:
    """Indices of up to k examples per class, by the selection `how` (see the module docstring)."""
    chosen = []
    for c in np.unique(y):
        idx = np.flatnonzero(y == c)
        kc = max(1, min(k, len(idx) - 2))
        recs = list(dict.fromkeys(rec[rng.permutation(idx)]))  # the class's recordings in random order
        if how == "slices":
            big = [r for r in recs if (rec[idx] == r).sum() >= kc] or [max(recs, key=lambda r: (rec[idx] == r).sum())]
            pool = rng.permutation(idx[rec[idx] == big[0]])
            chosen.append(pool[:kc])
            continue
        pools = {r: list(rng.permutation(idx[rec[idx] == r])) for r in recs}
        take: list[int] = []
        while len(take) < kc:
            for r in recs:
                if pools[r] and len(take) < kc:
                    take.append(pools[r].pop())
        chosen.append(np.array(take))
    return np.concatenate(chosen)


def adapt_all(d: dict[str, np.ndarray], train: np.ndarray) -> dict[str, tuple[object, dict]]:
    """Each method's classifier from the examples `train`, and its report."""
    from tinyclap.zeroshot import ZeroShotClassifier

    classes = [str(c) for c in d["classes"]]
    text = ZeroShotClassifier(classes, d["text"], float(d["scale"]))
    ex = [classes[i] for i in d["y"][train]]
    emb, rec, spectra = d["emb"][train], [str(r) for r in d["rec"][train]], d["spectra"][train]
    each = [str(i) for i in range(len(train))]
    runs = {"adapted": (text, None, AFFINITY, spectra), "class_matrix": (text, None, 0.0, spectra),
            "each_counts": (text, each, AFFINITY, None), "given_groups": (text, rec, AFFINITY, None),
            "embedding_groups": (text, None, AFFINITY, None), "audio_only": (None, rec, 0.0, None)}
    out = {}
    for name, (t, groups, affinity, spec) in runs.items():
        clf, rep = adapt_classes(emb, ex, t, labels=classes, groups=groups, spectra=spec, affinity=affinity)
        out[name] = (clf, rep.to_dict())
    return out


def run_model(name: str, spec: str, args: argparse.Namespace) -> dict:
    d = embed_fold(spec, args)
    y, emb = d["y"], d["emb"]
    zs_pred = (emb @ d["text"].T).argmax(1)
    out = {"model": name, "path": spec, "fold": args.fold, "clips": int(len(y)),
           "zero_shot_all": float(np.mean(zs_pred == y)), "runs": []}
    for how in args.selections:
        for k in args.shots:
            for draw in range(args.draws):
                rng = np.random.default_rng([args.seed, k, draw, SELECTIONS.index(how)])
                train = pick(y, d["rec"], k, how, rng)
                test = np.setdiff1d(np.arange(len(y)), train)
                row = {"selection": how, "shots": k, "draw": draw, "test_clips": int(len(test)),
                       "zero_shot": float(np.mean(zs_pred[test] == y[test]))}
                unseen = test[~np.isin(d["rec"][test], d["rec"][train])]  # recordings none of the examples is from
                row["unseen_clips"] = int(len(unseen))
                row["unseen_zero_shot"] = float(np.mean(zs_pred[unseen] == y[unseen])) if len(unseen) else None
                for method, (clf, rep) in adapt_all(d, train).items():
                    row[method] = float(np.mean(clf.scores(emb[test]).argmax(1) == y[test]))
                    if method in UNSEEN and len(unseen):
                        row[f"unseen_{method}"] = float(np.mean(clf.scores(emb[unseen]).argmax(1) == y[unseen]))
                    if method == "adapted":
                        row["independent"] = float(np.mean([c["independent"] for c in rep["classes"]]))
                out["runs"].append(row)
    return out


def _gain(rs: list[dict], method: str, unseen: bool = False) -> str:
    """'mean (worst)' gain in points of `method` over zero-shot, on the remaining or the unseen clips."""
    key, base = (f"unseen_{method}", "unseen_zero_shot") if unseen else (method, "zero_shot")
    g = np.array([100 * (r[key] - r[base]) for r in rs if key in r])
    return f"{g.mean():+.1f} ({g.min():+.1f})" if len(g) else "n/a"


def summary(out: dict) -> str:
    lines = [f"{out['model']} ({out['path']}): fold {out['fold']}, {out['clips']} clips, zero-shot on all of them "
             f"{100 * out['zero_shot_all']:.1f} %",
             "| selection | examples per class | draws | zero-shot % | adapted % | gain (points) | worst draw "
             "| on unseen recordings (worst) | class matrix only, --affinity 0 (worst) | its unseen (worst) "
             "| each example counts once (worst) | its unseen (worst) | recordings given as groups "
             "| embeddings alone, no spectra (worst) | audio only | independent found |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for how in SELECTIONS:
        for k in sorted({r["shots"] for r in out["runs"]}):
            rs = [r for r in out["runs"] if r["shots"] == k and r["selection"] == how]
            if not rs:
                continue
            z, a = (np.array([r[m] for r in rs]) * 100 for m in ("zero_shot", "adapted"))
            g = a - z
            ind = np.mean([r["independent"] for r in rs])
            lines.append(f"| {how} | {k} | {len(rs)} | {z.mean():.1f} | {a.mean():.1f} ± {a.std():.1f} | "
                         f"**{g.mean():+.1f}** ± {g.std():.1f} | {g.min():+.1f} | {_gain(rs, 'adapted', True)} | "
                         f"{_gain(rs, 'class_matrix')} | {_gain(rs, 'class_matrix', True)} | "
                         f"{_gain(rs, 'each_counts')} | {_gain(rs, 'each_counts', True)} | "
                         f"{_gain(rs, 'given_groups')} | {_gain(rs, 'embedding_groups')} | "
                         f"{_gain(rs, 'audio_only')} | {ind:.1f} |")
    lines.append("(the columns after the worst draw: gain over zero-shot in points, mean (worst draw); unseen "
                 "recordings: the test clips from recordings none of the examples comes from)")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", action="append", required=True, metavar="[NAME=]RUN",
                    help="student run (its recorded teacher encodes the text); repeatable")
    ap.add_argument("--teacher", help="teacher checkpoint (default: the one recorded in the run)")
    ap.add_argument("--us8k", default=str(Path(__file__).resolve().parents[2] / "shared" / "data" / "UrbanSound8K"))
    ap.add_argument("--fold", type=int, default=3)
    ap.add_argument("--shots", type=lambda s: [int(x) for x in s.split(",")], default=[1, 5, 10])
    ap.add_argument("--selections", type=lambda s: s.split(","), default=list(SELECTIONS))
    ap.add_argument("--draws", type=int, default=20)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--cache", help="folder for the fold's embeddings (.npz per model)")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--progress", action="store_true")
    args = ap.parse_args(argv)
    outs = []
    for m in args.model:
        name, _, spec = m.rpartition("=")
        outs.append(run_model(name or spec, spec, args))
    print(json.dumps(outs, indent=1) if args.json else "\n\n".join(summary(o) for o in outs))
    return 0


if __name__ == "__main__":
    sys.exit(main())
