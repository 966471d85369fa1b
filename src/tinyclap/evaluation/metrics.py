"""Zero-shot metrics and their reports: `evaluate` is a pure function of embeddings (reused by pruning),
`EvalReport` holds its numbers, `save_confusion_png` draws them, `json_safe`/`write_json` write strict JSON.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tinyclap._util import atomic_write_text, l2_normalize
from tinyclap.zeroshot import ZeroShotClassifier

__all__ = ["EvalReport", "evaluate", "json_safe", "save_confusion_png", "write_json"]


@dataclass
class EvalReport:
    """Zero-shot results on one set of clips: overall, per-fold and per-class accuracy, confusion matrix.

    `class_accuracy[c]` is None for a class without clips; fold statistics are empty/None without folds.
    `fold_std` is the population standard deviation over folds (numpy's default, ddof=0).
    """

    class_names: list[str]
    labels: np.ndarray  # (n,) int true class indices
    predictions: np.ndarray  # (n,) int predicted class indices
    folds: np.ndarray | None  # (n,) int fold per clip (-1: none), or None
    confusion: np.ndarray  # (C, C) int, rows = true class, columns = predicted class
    accuracy: float
    balanced_accuracy: float  # mean of the per-class accuracies over classes that have clips
    class_accuracy: list[float | None]
    class_counts: list[int]
    fold_accuracy: dict[int, float] = field(default_factory=dict)
    fold_counts: dict[int, int] = field(default_factory=dict)
    fold_mean: float | None = None
    fold_std: float | None = None

    @property
    def n(self) -> int:
        return int(self.labels.shape[0])

    @property
    def correct(self) -> int:
        return int((self.labels == self.predictions).sum())

    def to_dict(self, predictions: bool = False) -> dict[str, Any]:
        """JSON-able numbers (accuracies as fractions in [0, 1])."""
        d: dict[str, Any] = {
            "n_clips": self.n,
            "n_correct": self.correct,
            "accuracy": self.accuracy,
            "balanced_accuracy": self.balanced_accuracy,
            "fold_accuracy": {str(k): v for k, v in self.fold_accuracy.items()},
            "fold_counts": {str(k): v for k, v in self.fold_counts.items()},
            "fold_mean": self.fold_mean,
            "fold_std": self.fold_std,
            "class_accuracy": dict(zip(self.class_names, self.class_accuracy)),
            "class_counts": dict(zip(self.class_names, self.class_counts)),
            "classes": list(self.class_names),
            "confusion": self.confusion.tolist(),
        }
        if predictions:
            d["predictions"] = self.predictions.tolist()
            d["labels"] = self.labels.tolist()
        return d

    def summary(self) -> str:
        """A few human-readable lines."""
        lines = [
            f"accuracy: {100 * self.accuracy:.2f} % ({self.correct}/{self.n} clips; "
            f"balanced {100 * self.balanced_accuracy:.2f} %)"
        ]
        if self.fold_accuracy:
            per = "  ".join(f"{k}: {100 * v:.2f}" for k, v in self.fold_accuracy.items())
            lines.append(f"per fold (%): {per}")
            lines.append(
                f"fold mean ± std: {100 * (self.fold_mean or 0):.2f} ± {100 * (self.fold_std or 0):.2f} %"
            )
        ranked = sorted(
            ((a, c) for a, c in zip(self.class_accuracy, self.class_names) if a is not None),
            key=lambda t: t[0],
        )
        if len(ranked) > 1:
            worst = ", ".join(f"{c} {100 * a:.0f}%" for a, c in ranked[:3])
            best = ", ".join(f"{c} {100 * a:.0f}%" for a, c in ranked[::-1][:3])
            lines.append(f"best classes: {best}; worst: {worst}")
        return "\n".join(lines)


def _as_numpy(x: Any, dtype: Any = np.float32) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().float().cpu().numpy()
    return np.asarray(x, dtype=dtype)


def evaluate(
    audio_emb: Any,
    labels: Sequence[int] | np.ndarray,
    classifier: ZeroShotClassifier | np.ndarray,
    folds: Sequence[int | None] | np.ndarray | None = None,
    class_names: Sequence[str] | None = None,
) -> EvalReport:
    """Score (n, D) audio embeddings against a (C, D) class matrix: a pure function of its inputs.

    `classifier` is a `ZeroShotClassifier` or a plain (C, D) matrix (rows are normalised here). The
    prediction is the argmax of the cosine similarity (the logit scale does not change it; an adapted class
    file's example gains are added, `ZeroShotClassifier.scores`); on an exact
    tie the lower class index wins (numpy's argmax).
    """
    a = _as_numpy(audio_emb)  # (n, D)
    y = _as_numpy(labels, np.int64).reshape(-1)  # (n,)
    score: Any = None
    if isinstance(classifier, ZeroShotClassifier):
        w = classifier.weights  # (C, D), rows unit norm
        score = classifier.scores  # cosines, plus the examples' gains of an adapted class file
        names = list(class_names) if class_names is not None else list(classifier.labels)
    else:
        w = l2_normalize(_as_numpy(classifier), axis=1)
        names = list(class_names) if class_names is not None else [str(i) for i in range(w.shape[0])]
    if a.ndim != 2 or a.shape[0] != y.shape[0]:
        raise ValueError(f"audio embeddings {a.shape} do not match {y.shape[0]} labels")
    if a.shape[1] != w.shape[1]:
        raise ValueError(f"audio embeddings have {a.shape[1]} dims but the class matrix has {w.shape[1]}")
    n_cls = w.shape[0]
    if len(names) != n_cls:
        raise ValueError(f"{len(names)} class names for a class matrix of {n_cls} rows")
    if y.size and (y.min() < 0 or y.max() >= n_cls):
        raise ValueError(f"labels must be in 0..{n_cls - 1}, got {y.min()}..{y.max()}")

    a = l2_normalize(a, axis=1)
    pred = ((a @ w.T) if score is None else score(a)).argmax(axis=1) if a.shape[0] else np.zeros(0, np.int64)
    hit = pred == y
    confusion = np.zeros((n_cls, n_cls), dtype=np.int64)
    np.add.at(confusion, (y, pred), 1)
    counts = confusion.sum(axis=1)
    class_acc = [float(confusion[c, c] / counts[c]) if counts[c] else None for c in range(n_cls)]
    present = [v for v in class_acc if v is not None]

    fold_arr, fold_acc, fold_n = _fold_accuracy(folds, hit)
    accs = list(fold_acc.values())
    return EvalReport(
        class_names=names,
        labels=y,
        predictions=pred.astype(np.int64),
        folds=fold_arr,
        confusion=confusion,
        accuracy=float(hit.mean()) if hit.size else float("nan"),
        balanced_accuracy=float(np.mean(present)) if present else float("nan"),
        class_accuracy=class_acc,
        class_counts=[int(c) for c in counts],
        fold_accuracy=fold_acc,
        fold_counts=fold_n,
        fold_mean=float(np.mean(accs)) if accs else None,
        fold_std=float(np.std(accs)) if accs else None,
    )


def _fold_accuracy(
    folds: Sequence[int | None] | np.ndarray | None, hit: np.ndarray
) -> tuple[np.ndarray | None, dict[int, float], dict[int, int]]:
    """(fold per clip with -1 for none, accuracy per fold, clips per fold) from the (n,) hit vector."""
    if folds is None:
        return None, {}, {}
    fold_arr = np.asarray([-1 if f is None else int(f) for f in folds], dtype=np.int64)
    if fold_arr.shape != hit.shape:
        raise ValueError(f"{fold_arr.shape[0]} folds for {hit.shape[0]} clips")
    fold_acc: dict[int, float] = {}
    fold_n: dict[int, int] = {}
    for f in sorted(set(fold_arr.tolist()) - {-1}):
        m = fold_arr == f
        fold_acc[f] = float(hit[m].mean())
        fold_n[f] = int(m.sum())
    return fold_arr, fold_acc, fold_n


def save_confusion_png(
    confusion: np.ndarray | EvalReport,
    class_names: Sequence[str] | None,
    path: str | os.PathLike,
    title: str | None = None,
) -> Path:
    """Draw a confusion matrix (rows: true class, colour: fraction of the row) to a PNG.

    Uses matplotlib's Agg canvas directly (no pyplot, no global backend switch). Counts are written in the
    cells when there are at most 20 classes; the figure grows with the number of classes so labels stay
    readable.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    if isinstance(confusion, EvalReport):
        class_names = confusion.class_names if class_names is None else class_names
        confusion = confusion.confusion
    cm = np.asarray(confusion)
    n = cm.shape[0]
    names = list(class_names) if class_names is not None else [str(i) for i in range(n)]
    rows = cm.sum(axis=1, keepdims=True)
    frac = np.divide(cm, rows, out=np.zeros(cm.shape, dtype=np.float64), where=rows > 0)
    side = max(5.0, 0.32 * n + 3.0)
    font = 9 if n <= 15 else 8 if n <= 30 else 7
    fig = Figure(figsize=(side + 1.0, side), dpi=120)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    im = ax.imshow(frac, cmap="Blues", vmin=0.0, vmax=1.0, interpolation="nearest")
    ax.set_xticks(range(n), labels=names, rotation=90, fontsize=font)
    ax.set_yticks(range(n), labels=names, fontsize=font)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    if n <= 20:
        for i in range(n):
            for j in range(n):
                if cm[i, j]:
                    ax.text(
                        j,
                        i,
                        str(int(cm[i, j])),
                        ha="center",
                        va="center",
                        fontsize=font,
                        color="white" if frac[i, j] > 0.5 else "black",
                    )
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="fraction of the true class")
    if title:
        ax.set_title(title, fontsize=10)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    return path


def json_safe(x: Any) -> Any:
    """NaN and infinities -> None, recursively through dicts, lists and tuples, so a report is strict JSON."""
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, dict):
        return {k: json_safe(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [json_safe(v) for v in x]
    return x


def write_json(path: str | os.PathLike, obj: Any, **dumps_kw: Any) -> Path:
    """Write `obj` as indented strict JSON (see `json_safe`) to `path`, atomically."""
    return atomic_write_text(path, json.dumps(json_safe(obj), indent=2, **dumps_kw) + "\n")
