"""Pooled windows vs whole clips: how close a student's clip embedding stays when its backbone sees only
short windows (what a microcontroller does), fp32, on real UrbanSound8K clips.

    python bench/pool_window.py --model runs/real/students/phinet_alpha_0.75_beta_0.75_t0_4_N_4 --windows 1,0.5

For each clip (fold 3, `--limit` clips spread over the fold) and window W, the cosine to the whole-clip
embedding of:

- `pooled`: backbone per W s window, features averaged, head once (`StudentEmbedder(pool_window=W)`);
- `mean of embeddings`: each window embedded on its own (head included) and the normalised embeddings
  averaged (what one gets without splitting the student).

Two clip forms: `5 s` is the clip as `classify` and `eval` embed it (US8K's 4 s clips zero-padded to 5 s, so
with W = 1 one window is silence in both); `as is` is the clip unpadded (4 s: four 1 s windows). With
`--classes FILE.npz` (class names = US8K's) it also reports zero-shot accuracy and top-1 agreement with the
whole clip.
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import csv  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
US8K = REPO.parent / "shared" / "data" / "UrbanSound8K"


def fold_clips(root: Path, fold: int, limit: int) -> list[tuple[Path, str]]:
    """(path, class name with spaces) of `limit` clips spread evenly over the fold's clips on disk."""
    rows = []
    with open(root / "metadata" / "UrbanSound8K.csv", newline="") as f:
        for row in csv.DictReader(f):
            path = root / "audio" / f"fold{row['fold']}" / row["slice_file_name"]
            if int(row["fold"]) == fold and path.is_file():
                rows.append((path, row["class"].replace("_", " ")))
    idx = np.linspace(0, len(rows) - 1, min(limit, len(rows))).round().astype(int)
    return [rows[i] for i in sorted(set(idx.tolist()))]


@torch.no_grad()
def measure(model: Any, waves: list[np.ndarray], window: float) -> dict[str, np.ndarray]:
    """Per clip: whole-clip, pooled and mean-of-embeddings embeddings (each (n, D), normalised)."""
    from tinyclap.audio.io import window_starts

    whole, pooled, mean_emb = [], [], []
    win = int(round(window * model.sample_rate))
    for w in waves:
        x = torch.from_numpy(w)[None]
        model.set_pool_window(None)
        whole.append(model.embed_waveform(x)[0])
        model.set_pool_window(window)
        pooled.append(model.embed_waveform(x)[0])
        model.set_pool_window(None)
        xp = F.pad(x, (0, max(0, win - x.shape[-1])))
        parts = torch.cat([xp[:, s : s + win] for s in window_starts(xp.shape[-1], win)])
        mean_emb.append(F.normalize(model.embed_waveform(parts).mean(0), dim=-1))
    return {k: torch.stack(v).numpy() for k, v in (("whole", whole), ("pooled", pooled), ("mean", mean_emb))}


def summarise(emb: dict[str, np.ndarray], labels: list[str], clf: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k in ("pooled", "mean"):
        cos = np.sum(emb[k] * emb["whole"], 1)
        out[k] = {"mean_cosine": float(cos.mean()), "min_cosine": float(cos.min()),
                  "p10_cosine": float(np.percentile(cos, 10))}
    if clf is not None:
        top = {k: np.argmax(v @ clf.weights.T, 1) for k, v in emb.items()}
        want = np.array([clf.labels.index(lb) for lb in labels])
        for k in ("pooled", "mean"):
            out[k]["top1_agreement"] = float(np.mean(top[k] == top["whole"]))
            out[k]["accuracy"] = float(np.mean(top[k] == want))
        out["whole_accuracy"] = float(np.mean(top["whole"] == want))
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", required=True, help="a student (run folder, checkpoint or name)")
    ap.add_argument("--classes", help="class matrix (.npz) with US8K's class names, for accuracy")
    ap.add_argument("--us8k", default=str(US8K))
    ap.add_argument("--fold", type=int, default=3)
    ap.add_argument("--limit", type=int, default=100, help="clips, spread over the fold")
    ap.add_argument("--windows", default="1", help="pool windows in seconds, comma-separated")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)

    from tinyclap.audio import eval_windows, load_audio
    from tinyclap.models import load_model
    from tinyclap.models.embedder import with_pool_window
    from tinyclap.zeroshot import ZeroShotClassifier

    torch.set_num_threads(1)
    model = with_pool_window(load_model(args.model), 1.0).eval()  # a student, or a one-line error
    clf = ZeroShotClassifier.load(args.classes) if args.classes else None
    clips = fold_clips(Path(args.us8k), args.fold, args.limit)
    raw = [load_audio(p, model.sample_rate) for p, _ in clips]
    forms = {"5 s": [eval_windows(w, 5 * model.sample_rate)[0] for w in raw], "as is": raw}
    labels = [lb for _, lb in clips]
    res = {"model": args.model, "clips": len(clips), "fold": args.fold, "results": {}}
    for window in [float(w) for w in args.windows.split(",")]:
        for form, waves in forms.items():
            res["results"][f"{window:g} s / {form}"] = summarise(measure(model, waves, window), labels, clf)
    if args.json:
        print(json.dumps(res, indent=1))
        return 0
    print(f"{args.model}: {len(clips)} clips of US8K fold {args.fold}, fp32")
    print("| window / clip | pooled: mean cos (min) | mean of embeddings: mean cos (min) | top-1 agr. pooled / mean "
          "| accuracy whole / pooled / mean |")
    print("|---|---|---|---|---|")
    for key, r in res["results"].items():
        p, m = r["pooled"], r["mean"]
        agr = f"{100 * p['top1_agreement']:.1f} % / {100 * m['top1_agreement']:.1f} %" if clf is not None else "-"
        acc = (f"{100 * r['whole_accuracy']:.1f} / {100 * p['accuracy']:.1f} / {100 * m['accuracy']:.1f} %"
               if clf is not None else "-")
        print(f"| {key} | {p['mean_cosine']:.4f} ({p['min_cosine']:.4f}) | {m['mean_cosine']:.4f} "
              f"({m['min_cosine']:.4f}) | {agr} | {acc} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
