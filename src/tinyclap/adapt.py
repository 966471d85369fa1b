"""Few-shot classes: class vectors from a handful of labelled clips of one's own (`tinyclap adapt`).

Examples fall into *groups*, the independent recordings they come from: given per example (a recording, a
file, a session), or else found from the examples themselves (examples of one class whose embeddings are
near-duplicates, cosine >= NEAR_DUPLICATE, joined transitively, are one group: slices of one file, one
event recorded twice, the same file listed twice). For class c with g_c groups, normalised example
embeddings e_i and (when a text side knows the label) the normalised text embedding t_c of its prompt:

    m_c = normalize(sum_i e_i / |group(i)|)          (the audio prototype: each group counts once)
    a_c = lam / (lam + g_c)                          (the text weight: shrinkage toward the text vector)
    v_c = normalize(a_c * t_c + (1 - a_c) * m_c)     (a class with text)
    v_c = m_c                                        (a class without text: examples only)

`lam` is the text side's strength in independent examples: a class with more independent recordings leans
more on its audio, one recording sliced ten ways counts once. By default lam = PRIOR (4: the text counts as
four recordings), picked by bench/adapt.py: on held-out recordings it kept the blend above zero-shot both
with diverse examples and with slices of one recording, where choosing lam from the examples was too noisy.
With `prior="auto"` it is chosen by leave-one-group-out: each
group of a class with at least two groups is classified against the class vectors built without it (its
class from its other groups, g_c - 1 of them), for each lam of LAMBDA_GRID; the largest lam (the closest to
zero-shot) whose accuracy is within SE_RULE binomial standard errors (over the scored groups) of the best
accuracy wins: with a few groups the accuracy is noisy, and doubt goes to the text side.
Leaving out one example at a time instead would judge a prototype by slices of the recording it was made
from, which it always recognises: that is how a blend leant on one recording and fell far below zero-shot.
When no class has two groups nothing can judge an audio prototype, and lam = PRIOR. The grid
reaches far up because audio-to-audio cosines are several times larger than audio-to-text ones (CLAP's
modality gap): a small share of audio already moves the scores a lot. The logit scale (softmax
temperature) is fitted by leave-one-group-out log-likelihood at the chosen lam. The result is an ordinary
`ZeroShotClassifier`: `classes.npz` as `classify`, `export` and the torch-free runtime read it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from tinyclap._util import l2_normalize
from tinyclap.zeroshot import ZeroShotClassifier

__all__ = ["LAMBDA_GRID", "NEAR_DUPLICATE", "PRIOR", "SE_RULE", "AdaptReport", "adapt_classes",
           "class_vectors", "find_groups", "leave_one_group_out", "text_weights"]

LAMBDA_GRID = (0.0, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, math.inf)
PRIOR = 4.0  # the text side's weight, in independent examples
SE_RULE = 0.5  # how many standard errors of accuracy a larger lam (closer to zero-shot) may give up
NEAR_DUPLICATE = 0.95  # cosine at or above which two examples of one class count as one recording
SCALE_GRID = tuple(float(x) for x in np.linspace(np.log(1.0), np.log(1000.0), 61))  # log logit scales
DEFAULT_LOGIT_SCALE = float(np.log(100.0))  # without text and without leave-one-group-out data


@dataclass
class AdaptReport:
    """How the classes were built: the text prior `lam` (None: infinite, i.e. text only) and how it was
    chosen, the leave-one-group-out accuracy per lam, the logit scale, how groups were formed, and per class
    its examples, independent groups, text weight, whether it had text and whether it looks like one recording."""

    lam: float | None
    chosen_by: str  # "prior", "leave-one-group-out", "prior (nothing to judge)", "fixed alpha" or "no text"
    logit_scale: float
    scored_examples: int  # examples that could be scored leave-one-group-out
    grouping: str  # "given", "near-duplicates" or "given + near-duplicates"
    loo_accuracy: dict[str, float] = field(default_factory=dict)  # lam (as text) -> accuracy
    classes: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def find_groups(emb: np.ndarray, y: np.ndarray, threshold: float = NEAR_DUPLICATE) -> np.ndarray:
    """(N,) group ids: examples of one class joined (transitively) when their cosine is >= threshold."""
    emb = l2_normalize(np.asarray(emb, dtype=np.float64))
    parent = np.arange(len(y))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return int(i)

    for c in np.unique(y):
        idx = np.flatnonzero(y == c)
        close = np.argwhere(np.triu(emb[idx] @ emb[idx].T >= threshold, k=1))
        for a, b in close:
            parent[root(idx[a])] = root(idx[b])
    return np.unique([root(i) for i in range(len(y))], return_inverse=True)[1]


def _group_sums(emb: np.ndarray, y: np.ndarray, groups: np.ndarray, n_classes: int
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Each group's mean embedding (G, D), each class's sum of them (C, D) and its number of groups (C,)."""
    n_groups = int(groups.max()) + 1
    size = np.bincount(groups, minlength=n_groups)
    gmeans = np.zeros((n_groups, emb.shape[1]))
    np.add.at(gmeans, groups, emb / size[groups, None])
    gclass = np.zeros(n_groups, dtype=int)
    gclass[groups] = y
    sums = np.zeros((n_classes, emb.shape[1]))
    np.add.at(sums, gclass, gmeans)
    return gmeans, sums, np.bincount(gclass, minlength=n_classes)


def text_weights(n_groups: np.ndarray, has_text: np.ndarray, lam: float, alpha: float | None = None) -> np.ndarray:
    """(C,) text weights: lam / (lam + g) (1 for an infinite lam), a fixed `alpha` when given; 0 without text."""
    g = np.asarray(n_groups, dtype=np.float64)
    if alpha is not None:
        a = np.full(len(g), float(alpha))
    elif math.isinf(lam):
        a = np.ones(len(g))
    else:
        a = np.divide(lam, lam + g, out=np.ones(len(g)), where=lam + g > 0)
    return np.where(has_text, a, 0.0)


def class_vectors(text: np.ndarray, has_text: np.ndarray, sums: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """(C, D) class vectors normalize(a t + (1 - a) normalize(sums)) (rows of sums may be any scale)."""
    return l2_normalize(weights[:, None] * text + (1.0 - weights[:, None]) * l2_normalize(sums))


def leave_one_group_out(emb: np.ndarray, y: np.ndarray, groups: np.ndarray, text: np.ndarray,
                        has_text: np.ndarray, lam: float, alpha: float | None = None
                        ) -> tuple[np.ndarray, np.ndarray]:
    """(N, C) cosine scores of each example against the class vectors built without its group, and the (N,)
    mask of examples that can be scored (those whose class has at least two groups)."""
    emb = l2_normalize(np.asarray(emb, dtype=np.float64))
    gmeans, sums, n_groups = _group_sums(emb, y, groups, text.shape[0])
    scores = emb @ class_vectors(text, has_text, sums, text_weights(n_groups, has_text, lam, alpha)).T
    rest = sums[y] - gmeans[groups]  # (N, D): the class's other groups
    a = text_weights(n_groups[y] - 1, has_text[y], lam, alpha)
    own = class_vectors(text[y], has_text[y], rest, a)
    scores[np.arange(len(y)), y] = np.einsum("nd,nd->n", emb, own)
    return scores, n_groups[y] >= 2


def _accuracy(scores: np.ndarray, y: np.ndarray, ok: np.ndarray) -> float:
    """Top-1 accuracy over the scorable examples (a tie with another class counts as a miss)."""
    s, t = scores[ok], y[ok]
    true = s[np.arange(len(t)), t]
    return float(np.mean((s >= true[:, None]).sum(axis=1) == 1)) if len(t) else 0.0


def _fit_scale(scores: np.ndarray, y: np.ndarray, ok: np.ndarray) -> tuple[float | None, float]:
    """The log logit scale with the best leave-one-group-out log-likelihood, and its mean negative
    log-likelihood (None, inf: nothing to fit on)."""
    s, t = scores[ok], y[ok]
    best, best_nll = None, np.inf
    if len(t) == 0 or scores.shape[1] < 2:
        return best, best_nll
    for log_scale in SCALE_GRID:
        z = np.exp(log_scale) * s
        z = z - z.max(axis=1, keepdims=True)
        nll = float(np.mean(np.log(np.exp(z).sum(axis=1)) - z[np.arange(len(t)), t]))
        if nll < best_nll:
            best, best_nll = log_scale, nll
    return best, best_nll


def _norm_label(s: str) -> str:
    return " ".join(s.replace("_", " ").casefold().split())


def _text_rows(labels: Sequence[str], text: ZeroShotClassifier | None, dim: int) -> tuple[np.ndarray, np.ndarray]:
    """(C, D) text vectors for `labels` from `text` (labels matched exactly, else ignoring case and _ vs
    space), zeros where it has none, and the (C,) mask of labels it has."""
    rows = np.zeros((len(labels), dim))
    has = np.zeros(len(labels), dtype=bool)
    if text is None:
        return rows, has
    if text.embed_dim != dim:
        raise ValueError(f"the text class matrix has {text.embed_dim} dims but the audio model gives {dim}")
    exact = {lb: i for i, lb in enumerate(text.labels)}
    loose = {_norm_label(lb): i for i, lb in enumerate(text.labels)}
    for c, lb in enumerate(labels):
        j = exact.get(lb, loose.get(_norm_label(lb)))
        if j is not None:
            rows[c], has[c] = text.weights[j], True
    return rows, has


def _groups(emb: np.ndarray, y: np.ndarray, given: Sequence[str | None] | None, threshold: float
            ) -> tuple[np.ndarray, str]:
    """(N,) group ids and how they were formed: the given names (per class), near-duplicates for the rest."""
    if given is None or all(g is None for g in given):
        return find_groups(emb, y, threshold), "near-duplicates"
    if len(given) != len(y):
        raise ValueError(f"{len(given)} groups for {len(y)} examples")
    free = np.array([g is None for g in given])
    auto = np.zeros(len(y), dtype=int)
    if free.any():
        auto[free] = find_groups(emb[free], y[free], threshold)
    keys = [(int(c), "n", str(g)) if g is not None else (int(c), "a", str(a)) for c, g, a in zip(y, given, auto)]
    ids = {k: i for i, k in enumerate(dict.fromkeys(keys))}
    return np.array([ids[k] for k in keys]), "given + near-duplicates" if free.any() else "given"


def _choose_lam(emb: np.ndarray, y: np.ndarray, groups: np.ndarray, text_rows: np.ndarray, has_text: np.ndarray
                ) -> tuple[float, str, dict[str, float]]:
    """lam by leave-one-group-out over LAMBDA_GRID (PRIOR when nothing can be scored): the largest
    lam whose accuracy is within SE_RULE standard errors (binomial, over the scored groups) of the best one."""
    accuracy: dict[str, float] = {}
    keys = []
    for lam in LAMBDA_GRID:
        scores, ok = leave_one_group_out(emb, y, groups, text_rows, has_text, lam)
        if not ok.any():
            return PRIOR, "prior (nothing to judge)", {}
        acc = _accuracy(scores, y, ok)
        accuracy[f"{lam:g}"] = acc
        keys.append((acc, -round(_fit_scale(scores, y, ok)[1], 6), lam))
    best = max(keys)
    n = len(np.unique(groups[ok]))
    margin = SE_RULE * math.sqrt(best[0] * (1.0 - best[0]) / n)
    return float(max(k[2] for k in keys if k[0] >= best[0] - margin - 1e-12)), "leave-one-group-out", accuracy


def _check_inputs(emb: np.ndarray, example_labels: Sequence[str], alpha: float | None, prior: float | str) -> None:
    if emb.ndim != 2 or emb.shape[0] != len(example_labels) or emb.shape[0] == 0:
        raise ValueError(f"need (N, D) embeddings for N >= 1 labelled examples, got {emb.shape} and "
                         f"{len(example_labels)} labels")
    if not np.isfinite(emb).all():
        raise ValueError("example embeddings are not finite (a broken model)")
    if alpha is not None and not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    if prior != "auto" and not (isinstance(prior, (int, float)) and prior >= 0):  # NaN fails too
        raise ValueError(f"prior must be a number >= 0 or 'auto', got {prior!r}")


def adapt_classes(
    emb: np.ndarray,
    example_labels: Sequence[str],
    text: ZeroShotClassifier | None = None,
    *,
    alpha: float | None = None,
    labels: Sequence[str] | None = None,
    groups: Sequence[str | None] | None = None,
    prior: float | str = PRIOR,
    near_duplicate: float = NEAR_DUPLICATE,
) -> tuple[ZeroShotClassifier, AdaptReport]:
    """Class vectors from example embeddings (N, D) and their labels (see the module docstring).

    `text`: the text side's class matrix (labels it lacks become classes without text); `alpha`: one fixed
    text weight in [0, 1] for every class (None: shrinkage, lam = `prior`, or "auto": by leave-one-group-out,
    math.inf: zero-shot); `labels`: the
    output's class order (default: first appearance in `example_labels`); `groups`: each example's recording
    (None entries, or None: found as near-duplicates at cosine `near_duplicate`). Needs two classes or more.
    Returns the classifier and a report.
    """
    emb = np.asarray(emb, dtype=np.float64)
    _check_inputs(emb, example_labels, alpha, prior)
    order = list(dict.fromkeys(labels if labels is not None else example_labels))
    if len(order) < 2:
        raise ValueError(f"need examples of at least two classes, got only {order[0]!r}")
    index = {lb: i for i, lb in enumerate(order)}
    missing = sorted(set(example_labels) - set(index))
    if missing:
        raise ValueError(f"example labels {missing[:5]} are not among the classes")
    y = np.array([index[lb] for lb in example_labels])
    emb = l2_normalize(emb)
    counts = np.bincount(y, minlength=len(order))
    if (counts == 0).any():
        raise ValueError(f"classes without examples: {[lb for lb, n in zip(order, counts) if n == 0][:5]}")
    gid, grouping = _groups(emb, y, groups, near_duplicate)
    text_rows, has_text = _text_rows(order, text, emb.shape[1])
    lam, how, loo_acc = PRIOR if prior == "auto" else float(prior), "prior", {}
    if not has_text.any() or alpha is not None:
        how = "no text" if not has_text.any() else "fixed alpha"
    elif prior == "auto":
        lam, how, loo_acc = _choose_lam(emb, y, gid, text_rows, has_text)
    scores, ok = leave_one_group_out(emb, y, gid, text_rows, has_text, lam, alpha)
    fitted = _fit_scale(scores, y, ok)[0]
    scale = fitted if fitted is not None else (text.logit_scale if text is not None else DEFAULT_LOGIT_SCALE)
    _, sums, n_groups = _group_sums(emb, y, gid, len(order))
    a = text_weights(n_groups, has_text, lam, alpha)
    clf = ZeroShotClassifier(order, class_vectors(text_rows, has_text, sums, a).astype(np.float32), float(scale),
                             (list(text.templates) if text is not None else []) or ["{}"])
    report = AdaptReport(None if math.isinf(lam) else lam, how, float(scale), int(ok.sum()), grouping, loo_acc, [
        {"label": lb, "examples": int(n), "independent": int(g), "text_weight": float(w), "text": bool(h),
         "one_recording": bool(n > 1 and g == 1)}
        for lb, n, g, w, h in zip(order, counts, n_groups, a, has_text)])
    return clf, report
