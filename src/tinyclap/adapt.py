"""Few-shot classes: class vectors from a handful of labelled clips of one's own (`tinyclap adapt`).

For class c with normalised audio embeddings e_1..e_n of its examples and (when a text side knows it) the
normalised text embedding t_c of its prompt, the class vector is

    m_c = normalize(mean_i e_i)                       (the audio prototype)
    v_c = normalize(alpha * t_c + (1 - alpha) * m_c)  (a class with text)
    v_c = m_c                                         (a class without text: examples only)

One `alpha` for all classes, either given or chosen by leave-one-out on the examples: each example is
classified against the class vectors built without it (its own class from its other examples, or from
its text alone when it has no other example), for each alpha on a grid; the alpha with the best
leave-one-out accuracy wins (ties: the better mean reciprocal rank of the true class, then the larger
alpha, i.e. the one closer to zero-shot). The grid is finer near 1 because audio-to-audio cosines are
several times larger than audio-to-text ones (CLAP's modality gap), so a small share of audio already
moves the scores a lot. The logit scale (the softmax temperature) is fitted the same way, by
leave-one-out log-likelihood at the chosen alpha, so the probabilities of blended vectors stay
calibrated. The result is an ordinary `ZeroShotClassifier`: `classes.npz` as `classify`, `export` and the
torch-free runtime read it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from tinyclap._util import l2_normalize
from tinyclap.zeroshot import ZeroShotClassifier

__all__ = ["ALPHA_GRID", "AdaptReport", "adapt_classes", "blend_classes", "class_prototypes", "leave_one_out"]

ALPHA_GRID = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.75, 0.8, 0.85, 0.9, 0.925, 0.95, 0.965, 0.98, 0.99, 1.0)
SCALE_GRID = tuple(float(x) for x in np.linspace(np.log(1.0), np.log(1000.0), 61))  # log logit scales
DEFAULT_LOGIT_SCALE = float(np.log(100.0))  # without text and without leave-one-out data


@dataclass
class AdaptReport:
    """How the classes were built: alpha (and how it was chosen), the leave-one-out accuracy per alpha,
    the logit scale, and per class its number of examples and whether it had a text embedding."""

    alpha: float
    chosen_by: str  # "leave-one-out", "fixed" or "no text"
    logit_scale: float
    loo_examples: int  # examples that could be scored leave-one-out
    loo_accuracy: dict[str, float] = field(default_factory=dict)  # alpha (as text) -> accuracy
    classes: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def class_prototypes(emb: np.ndarray, y: np.ndarray, n_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """(C, D) normalised means of each class's normalised embeddings, and (C,) example counts."""
    emb = l2_normalize(np.asarray(emb, dtype=np.float64))
    sums = np.zeros((n_classes, emb.shape[1]))
    np.add.at(sums, y, emb)
    counts = np.bincount(y, minlength=n_classes)
    return l2_normalize(sums), counts


def blend_classes(text: np.ndarray, has_text: np.ndarray, proto: np.ndarray, alpha: float) -> np.ndarray:
    """(C, D) class vectors: normalize(alpha t + (1 - alpha) m) where a class has text, else m."""
    mixed = l2_normalize(alpha * text + (1.0 - alpha) * proto)
    return np.where(has_text[:, None], mixed, proto)


def _loo_vectors(emb: np.ndarray, y: np.ndarray, sums: np.ndarray, counts: np.ndarray, text: np.ndarray,
                 has_text: np.ndarray, alpha: float) -> tuple[np.ndarray, np.ndarray]:
    """Each example's own-class vector without it (N, D), and which examples can be scored (N,)."""
    rest = sums[y] - emb  # (N, D): the sum of the other examples of the same class
    alone = counts[y] == 1
    proto = l2_normalize(np.where(alone[:, None], 0.0, rest))
    own = np.where(
        has_text[y][:, None],
        np.where(alone[:, None], text[y], l2_normalize(alpha * text[y] + (1.0 - alpha) * proto)),
        proto,
    )
    return own, ~(alone & ~has_text[y])


def leave_one_out(emb: np.ndarray, y: np.ndarray, text: np.ndarray, has_text: np.ndarray, alpha: float
                  ) -> tuple[np.ndarray, np.ndarray]:
    """(N, C) cosine scores of each example against the class vectors built without it, and the (N,) mask
    of examples that could be scored (an example that is its class's only one and has no text cannot)."""
    emb = l2_normalize(np.asarray(emb, dtype=np.float64))
    c = text.shape[0]
    proto, counts = class_prototypes(emb, y, c)
    sums = np.zeros_like(proto)
    np.add.at(sums, y, emb)
    scores = emb @ blend_classes(text, has_text, proto, alpha).T  # (N, C)
    own, ok = _loo_vectors(emb, y, sums, counts, text, has_text, alpha)
    scores[np.arange(len(y)), y] = np.einsum("nd,nd->n", emb, own)
    return scores, ok


def _loo_quality(scores: np.ndarray, y: np.ndarray, ok: np.ndarray) -> tuple[float, float]:
    """(accuracy, mean reciprocal rank of the true class) over the scorable examples."""
    s, t = scores[ok], y[ok]
    if len(t) == 0:
        return 0.0, 0.0
    true = s[np.arange(len(t)), t]
    rank = 1 + (s > true[:, None]).sum(axis=1)
    return float(np.mean(rank == 1)), float(np.mean(1.0 / rank))


def _fit_scale(scores: np.ndarray, y: np.ndarray, ok: np.ndarray) -> float | None:
    """The log logit scale with the best leave-one-out log-likelihood (None: nothing to fit on)."""
    s, t = scores[ok], y[ok]
    if len(t) == 0 or scores.shape[1] < 2:
        return None
    best, best_nll = None, np.inf
    for log_scale in SCALE_GRID:
        z = np.exp(log_scale) * s
        z = z - z.max(axis=1, keepdims=True)
        nll = float(np.mean(np.log(np.exp(z).sum(axis=1)) - z[np.arange(len(t)), t]))
        if nll < best_nll:
            best, best_nll = log_scale, nll
    return best


def _text_rows(labels: Sequence[str], text: ZeroShotClassifier | None, dim: int) -> tuple[np.ndarray, np.ndarray]:
    """(C, D) text vectors for `labels` from `text` (labels matched exactly, else ignoring case and _ vs
    space), zeros where it has none, and the (C,) mask of labels it has."""
    rows = np.zeros((len(labels), dim))
    has = np.zeros(len(labels), dtype=bool)
    if text is None:
        return rows, has
    if text.embed_dim != dim:
        raise ValueError(f"the text class matrix has {text.embed_dim} dims but the audio model gives {dim}")

    def norm(s: str) -> str:
        return " ".join(s.replace("_", " ").lower().split())

    exact = {lb: i for i, lb in enumerate(text.labels)}
    loose = {norm(lb): i for i, lb in enumerate(text.labels)}
    for c, lb in enumerate(labels):
        j = exact.get(lb, loose.get(norm(lb)))
        if j is not None:
            rows[c], has[c] = text.weights[j], True
    return rows, has


def adapt_classes(
    emb: np.ndarray,
    example_labels: Sequence[str],
    text: ZeroShotClassifier | None = None,
    *,
    alpha: float | None = None,
    labels: Sequence[str] | None = None,
) -> tuple[ZeroShotClassifier, AdaptReport]:
    """Class vectors from example embeddings (N, D) and their labels (see the module docstring).

    `text`: the text side's class matrix (labels it lacks become classes without text); `alpha`: fixed
    mixing weight in [0, 1] (None: leave-one-out); `labels`: the output's class order (default: first
    appearance in `example_labels`). Returns the classifier and a report.
    """
    emb = np.asarray(emb, dtype=np.float64)
    if emb.ndim != 2 or emb.shape[0] != len(example_labels) or emb.shape[0] == 0:
        raise ValueError(f"need (N, D) embeddings for N >= 1 labelled examples, got {emb.shape} and "
                         f"{len(example_labels)} labels")
    if not np.isfinite(emb).all():
        raise ValueError("example embeddings are not finite (a broken model)")
    if alpha is not None and not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    order = list(dict.fromkeys(labels if labels is not None else example_labels))
    index = {lb: i for i, lb in enumerate(order)}
    missing = sorted(set(example_labels) - set(index))
    if missing:
        raise ValueError(f"example labels {missing[:5]} are not among the classes")
    y = np.array([index[lb] for lb in example_labels])
    emb = l2_normalize(emb)
    proto, counts = class_prototypes(emb, y, len(order))
    if (counts == 0).any():
        raise ValueError(f"classes without examples: {[lb for lb, n in zip(order, counts) if n == 0][:5]}")
    text_rows, has_text = _text_rows(order, text, emb.shape[1])
    loo_acc: dict[str, float] = {}
    if not has_text.any():
        chosen, how = 0.0, "no text"
    elif alpha is not None:
        chosen, how = float(alpha), "fixed"
    else:
        best = None
        for a in ALPHA_GRID:
            acc, mrr = _loo_quality(*_loo_args(emb, y, text_rows, has_text, a))
            loo_acc[f"{a:g}"] = acc
            key = (acc, mrr, a)
            best = key if best is None or key > best else best
        chosen, how = float(best[2]), "leave-one-out"
    scores, y_, ok = _loo_args(emb, y, text_rows, has_text, chosen)
    fitted = _fit_scale(scores, y_, ok)
    scale = fitted if fitted is not None else (text.logit_scale if text is not None else DEFAULT_LOGIT_SCALE)
    weights = blend_classes(text_rows, has_text, proto, chosen).astype(np.float32)
    templates = list(text.templates) if text is not None else []
    clf = ZeroShotClassifier(order, weights, float(scale), templates or ["{}"])
    report = AdaptReport(chosen, how, float(scale), int(ok.sum()), loo_acc, [
        {"label": lb, "examples": int(n), "text": bool(h)} for lb, n, h in zip(order, counts, has_text)])
    return clf, report


def _loo_args(emb: np.ndarray, y: np.ndarray, text: np.ndarray, has_text: np.ndarray, alpha: float
              ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    scores, ok = leave_one_out(emb, y, text, has_text, alpha)
    return scores, y, ok
