"""Few-shot classes: class vectors from a handful of labelled clips of one's own (`tinyclap adapt`).

Examples of one recording are not independent. How much two examples of a class are *one recording* is
their overlap k_ij in [0, 1] (`overlap`, class by class): given per example (the CSV's group: 1 within a
group, 0 across), or else found from the examples themselves as the larger of two ramps, one on the cosine of
their embeddings (`cosine_ramp`: 0 up to where examples of *different* classes reach (their 90th percentile, at least
COS_INDEPENDENT), 1 four fifths of the way from there to 1: the same file twice, one event recorded twice;
calibrated on the examples because a weakly trained model puts everything closer together: the 90th
percentile of cross-class cosines was 0.74 for a well-trained student of bench/adapt.py, 0.91 for a weak one)
and one on their *long-term spectra* (`recording_spectrum`, the mean log-mel spectrum of a clip: the
microphone, room, gain and background a recording imposes on all of its slices; 1 when the mean absolute
difference over the mel bands is at most SAME_SPECTRUM_DB, 0 from OTHER_SPECTRUM_DB). The spectra tell slices
of one recording apart without resting on one cosine for every model: on UrbanSound8K folds 1-3, pairs of
same-class clips from one recording differ by 1.9 dB (median), from two recordings by 10.2 dB. Each example
weighs w_i = 1 / sum_j k_ij (a recording sliced five ways weighs 1/5 per slice), and a class counts
g_c = sum of its w_i independent examples: exactly its number of groups when the overlaps are 0 or 1. With
normalised example embeddings e_i and (when a text side knows the label) the normalised text embedding t_c
of its prompt:

    m_c = normalize(sum_i w_i e_i)                   (the audio prototype: each recording counts once)
    a_c = lam / (lam + g_c)                          (the text weight: shrinkage toward the text vector)
    v_c = normalize(a_c * t_c + (1 - a_c) * m_c)     (a class with text)
    v_c = m_c                                        (a class without text: examples only)

and the examples themselves become *affinities* (`example_affinity`, a training-free cache in the style of
Tip-Adapter, Zhang et al. 2022, with each recording counting once): a clip x scores

    s_c(x) = cos(x, v_c) + sum_{i of class c} A * spread * w_i * exp(-beta * (1 - cos(x, e_i)))

A = AFFINITY (1: an independent example close to x adds about the gap between the best and the median
class cosine, `spread`, measured on the examples); beta = SHARPNESS / (1 - z), z the cosine ramp's zero, so
the gain is gone a fraction of the cosines that tell classes apart away: it lifts clips like an example
(its recording, its source) and leaves the rest to the class vectors. With affinities lam defaults to
infinity: the class vectors stay the text's, and a handful of slices of one recording can only help the clips
that sound like them (bench/adapt.py: the best student +8.8 points from five diverse recordings, +4.4 from
five slices of one, and +1.4 and +0.6 on average on recordings none of the examples came from). `affinity=0` makes
a plain class matrix (the MCU head takes nothing else), with lam = PRIOR by default.

The *groups* leave-one-group-out holds out are the connected parts of overlaps >= 1/2 (`find_groups`).

`lam` is the text side's strength in independent examples: a class with more independent recordings leans
more on its audio, one recording sliced ten ways counts once. Without affinities lam = PRIOR (3: the text
counts as three recordings), picked with the overlap ramps by bench/adapt.py (README, "Why this rule"): it
kept the blend above zero-shot both with diverse examples and with slices of one recording, where choosing
lam from the examples was too noisy. With `prior="auto"` it is chosen by leave-one-group-out: each group of a class
with at least two groups is classified against the class vectors built without it (its class from its
other examples, with the weights they have among all examples), for each lam of LAMBDA_GRID; the largest
lam (the closest to zero-shot) whose accuracy is within SE_RULE binomial standard errors (over the scored
groups) of the best accuracy wins: with a few groups the accuracy is noisy, and doubt goes to the text side.
Leaving out one example at a time instead would judge a prototype by slices of the recording it was made
from, which it always recognises: that is how a blend leant on one recording and fell far below zero-shot.
When no class has two groups nothing can judge an audio prototype, and lam = PRIOR. The grid
reaches far up because audio-to-audio cosines are several times larger than audio-to-text ones (CLAP's
modality gap): a small share of audio already moves the scores a lot. The logit scale (softmax
temperature) is fitted by leave-one-group-out log-likelihood at the chosen lam, each scored example's
affinities taken from the other groups only. The result is an ordinary `ZeroShotClassifier` whose file
carries the affinities: `classes.npz` as `classify`, `export` and the torch-free runtime read it.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from tinyclap._util import l2_normalize
from tinyclap.zeroshot import MAX_SHARPNESS, ExampleAffinity, ZeroShotClassifier

__all__ = [
    "AFFINITY", "COS_INDEPENDENT", "CROSS_QUANTILE", "DUPLICATE_SHARE", "LAMBDA_GRID", "MAX_CLASS_EXAMPLES",
    "OTHER_SPECTRUM_DB", "PRIOR", "SAME_SPECTRUM_DB", "SE_RULE", "SHARPNESS", "AdaptReport", "adapt_classes",
    "class_vectors", "cosine_ramp", "example_affinity", "file_spectrum", "find_groups", "leave_one_group_out",
    "overlap", "recording_spectrum", "text_weights",
]

LAMBDA_GRID = (0.0, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, math.inf)
PRIOR = 3.0  # the text side's weight, in independent examples (class vectors without affinities)
AFFINITY = 1.0  # an independent example's largest gain, in units of the class scores' spread
SHARPNESS = 2.0  # the gain falls e-fold over 1/SHARPNESS of the cosines above the cosine ramp's zero
MAX_AFFINITY = 100.0
SE_RULE = 0.5  # how many standard errors of accuracy a larger lam (closer to zero-shot) may give up
COS_INDEPENDENT = 0.75  # cosine up to which two examples' embeddings say nothing of one recording, at least
CROSS_QUANTILE = 0.9  # ... or up to this quantile of the cosines between examples of different classes
DUPLICATE_SHARE = 0.8  # overlap 1 this share of the way from there to cosine 1 (0.95 from 0.75)
SAME_SPECTRUM_DB = 2.5  # mean |difference| (dB) of long-term spectra at or below which they are one recording
OTHER_SPECTRUM_DB = 8.0  # ... at or above which their spectra say nothing of it
RAMP_SAMPLE = 2048  # examples the cross-class cosine quantile is estimated on, at most
MAX_CLASS_EXAMPLES = 5000  # examples of one class adapt takes (its overlaps are a square of them)
_SILENT_DB = -99.0  # a log-mel frame whose loudest band is below this is digital silence (padding)
SCALE_GRID = tuple(float(x) for x in np.linspace(np.log(1.0), np.log(1000.0), 61))  # log logit scales
DEFAULT_LOGIT_SCALE = float(np.log(100.0))  # without text and without leave-one-group-out data


@dataclass
class AdaptReport:
    """How the classes were built: the text prior `lam` (None: infinite, i.e. text only) and how it was
    chosen, the leave-one-group-out accuracy per lam, the logit scale, how groups were formed, per class
    its examples, independent examples (g_c), text weight, whether it had text and whether it looks like one
    recording (g_c < 1.5), and the example affinities (strength, one independent example's gain, sharpness;
    None without)."""

    lam: float | None
    chosen_by: str  # "prior", "leave-one-group-out", "prior (nothing to judge)", "fixed alpha" or "no text"
    logit_scale: float
    scored_examples: int  # examples that could be scored leave-one-group-out
    grouping: str  # "given", "found" (find_groups) or "given + found"
    loo_accuracy: dict[str, float] = field(default_factory=dict)  # lam (as text) -> accuracy
    classes: list[dict[str, Any]] = field(default_factory=list)
    affinity: dict[str, float] | None = None  # strength, weight (of one independent example), sharpness

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def recording_spectrum(logmel: np.ndarray) -> np.ndarray:
    """(T, n_mels) log-mel in dB -> (n_mels,) its long-term spectrum: the mean over the frames that are not
    digital silence (all frames when every one is)."""
    logmel = np.asarray(logmel, dtype=np.float64)
    sound = _sound_frames(logmel)
    return (sound if len(sound) else logmel).mean(axis=0)


def _sound_frames(logmel: np.ndarray) -> np.ndarray:
    """The frames of a (T, n_mels) log-mel in dB whose loudest band is above digital silence."""
    return logmel[logmel.max(axis=1) > _SILENT_DB]


def file_spectrum(path: str | os.PathLike) -> np.ndarray:
    """(n_mels,) `recording_spectrum` of an audio file at the CLAP front end's settings, decoded in blocks
    (memory bounded for a file of any length; frames across block edges are left out). NaN where the file
    cannot be read: such an example joins nothing by its spectrum."""
    from tinyclap.audio.io import stream_audio
    from tinyclap.audio.mel import NumpyLogMel

    lm = NumpyLogMel()
    total, count = np.zeros(lm.n_mels), 0
    try:
        for block in stream_audio(path, lm.sample_rate):
            if block.shape[0] >= lm.n_fft:
                sound = _sound_frames(lm.frames(block).astype(np.float64))
                total, count = total + sound.sum(axis=0), count + sound.shape[0]
    except (OSError, ValueError, RuntimeError):
        return np.full(lm.n_mels, np.nan)
    return total / count if count else np.full(lm.n_mels, np.nan)


def _ramp(x: np.ndarray, zero: float, one: float) -> np.ndarray:
    """0 at `zero`, 1 at `one`, linear between (either order), clipped."""
    return np.clip((x - zero) / (one - zero), 0.0, 1.0)


def cosine_ramp(emb: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """(zero, one): the cosines where the embedding ramp of `overlap` starts and reaches 1, from the examples'
    (N, D) normalised embeddings: zero at CROSS_QUANTILE of the cosines between examples of different classes
    (COS_INDEPENDENT at least, and without such pairs; on at most RAMP_SAMPLE evenly spread examples), one
    DUPLICATE_SHARE of the way from zero to 1."""
    pick = np.linspace(0, len(y) - 1, min(len(y), RAMP_SAMPLE)).astype(int)
    e, c = emb[pick], np.asarray(y)[pick]
    cross = (e @ e.T)[c[:, None] != c[None]]
    zero = max(COS_INDEPENDENT, float(np.quantile(cross, CROSS_QUANTILE)) if cross.size else COS_INDEPENDENT)
    zero = min(zero, 0.99)
    return zero, zero + DUPLICATE_SHARE * (1.0 - zero)


def overlap(emb: np.ndarray, ramp: tuple[float, float], spectra: np.ndarray | None = None,
            given: Sequence[str | None] | None = None) -> np.ndarray:
    """(n, n) how much each two examples *of one class* are one recording, in [0, 1] (module docstring), from
    their (n, D) normalised embeddings and the class set's `cosine_ramp`: 1 on the diagonal; between two
    examples with a given group 1 (same group) or 0; between two without, the larger of the cosine ramp and,
    with their (n, n_mels) long-term `spectra` in dB, the spectrum ramp; 0 between an example with a given group
    and one without."""
    k = _ramp(emb @ emb.T, *ramp)
    if spectra is not None:
        diff = np.abs(spectra[:, None] - spectra[None]).mean(-1)
        k = np.maximum(k, np.nan_to_num(_ramp(diff, OTHER_SPECTRUM_DB, SAME_SPECTRUM_DB)))  # NaN: unreadable
    if given is not None:
        named = np.array([g is not None for g in given])
        code = np.unique([str(g) for g in given], return_inverse=True)[1]
        k = np.where(named[:, None] & named[None], (code[:, None] == code[None]).astype(float),
                     np.where(named[:, None] | named[None], 0.0, k))
    np.fill_diagonal(k, 1.0)
    return k


def _weights(emb: np.ndarray, y: np.ndarray, ramp: tuple[float, float], spectra: np.ndarray | None,
             given: Sequence[str | None] | None) -> tuple[np.ndarray, np.ndarray]:
    """(N,) each example's weight 1 / (sum of its overlaps) and (N,) its group (`find_groups`), class by class,
    with the examples' `cosine_ramp`."""
    n = len(y)
    if spectra is not None:
        spectra = np.asarray(spectra, dtype=np.float64)
        if spectra.ndim != 2 or spectra.shape[0] != n:
            raise ValueError(f"need one spectrum per example, got {spectra.shape} for {n} examples")
    if given is not None and len(given) != n:
        raise ValueError(f"{len(given)} groups for {n} examples")
    w, groups, offset = np.zeros(n), np.zeros(n, dtype=int), 0
    for c in np.unique(y):
        idx = np.flatnonzero(y == c)
        if len(idx) > MAX_CLASS_EXAMPLES:
            raise ValueError(f"{len(idx)} examples of one class; adapt takes at most {MAX_CLASS_EXAMPLES} per "
                             "class (a few-shot method: pick a sample of them)")
        k = overlap(emb[idx], ramp, None if spectra is None else spectra[idx],
                    None if given is None else [given[i] for i in idx])
        w[idx], groups[idx] = 1.0 / k.sum(axis=1), find_groups(k) + offset
        offset = int(groups[idx].max()) + 1
    return w, groups


def find_groups(k: np.ndarray) -> np.ndarray:
    """(N,) group ids: the connected parts of overlaps >= 1/2 (the given groups when overlaps are 0 or 1)."""
    parent = np.arange(k.shape[0])

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return int(i)

    for a, b in np.argwhere(np.triu(k >= 0.5, k=1)):
        parent[root(a)] = root(b)
    return np.unique([root(i) for i in range(k.shape[0])], return_inverse=True)[1]


def _weighted_sums(emb: np.ndarray, y: np.ndarray, w: np.ndarray, n_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """Each class's sum of w_i e_i (C, D) and of w_i (C,): its unnormalised prototype and independent count."""
    sums = np.zeros((n_classes, emb.shape[1]))
    np.add.at(sums, y, emb * w[:, None])
    return sums, np.bincount(y, weights=w, minlength=n_classes)


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
                        has_text: np.ndarray, lam: float, alpha: float | None = None,
                        weights: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(N, C) cosine scores of each example against the class vectors built without its group, and the (N,)
    mask of examples that can be scored (those whose class has at least two groups). `weights`: each
    example's w_i (default 1 / its group's size: each group counts once)."""
    emb = l2_normalize(np.asarray(emb, dtype=np.float64))
    groups = np.asarray(groups)
    w = 1.0 / np.bincount(groups)[groups] if weights is None else np.asarray(weights, dtype=np.float64)
    sums, g = _weighted_sums(emb, y, w, text.shape[0])
    scores = emb @ class_vectors(text, has_text, sums, text_weights(g, has_text, lam, alpha)).T
    gsum = np.zeros((int(groups.max()) + 1, emb.shape[1]))
    np.add.at(gsum, groups, emb * w[:, None])
    gw = np.bincount(groups, weights=w)
    a = text_weights(g[y] - gw[groups], has_text[y], lam, alpha)
    own = class_vectors(text[y], has_text[y], sums[y] - gsum[groups], a)  # the class from its other groups
    scores[np.arange(len(y)), y] = np.einsum("nd,nd->n", emb, own)
    n_groups = np.array([len(np.unique(groups[y == c])) for c in range(text.shape[0])])
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


def _choose_lam(emb: np.ndarray, y: np.ndarray, groups: np.ndarray, w: np.ndarray, text_rows: np.ndarray,
                has_text: np.ndarray) -> tuple[float, str, dict[str, float]]:
    """lam by leave-one-group-out over LAMBDA_GRID (PRIOR when nothing can be scored): the largest
    lam whose accuracy is within SE_RULE standard errors (binomial, over the scored groups) of the best one."""
    accuracy: dict[str, float] = {}
    keys = []
    for lam in LAMBDA_GRID:
        scores, ok = leave_one_group_out(emb, y, groups, text_rows, has_text, lam, weights=w)
        if not ok.any():
            return PRIOR, "prior (nothing to judge)", {}
        acc = _accuracy(scores, y, ok)
        accuracy[f"{lam:g}"] = acc
        keys.append((acc, -round(_fit_scale(scores, y, ok)[1], 6), lam))
    best = max(keys)
    n = len(np.unique(groups[ok]))
    margin = SE_RULE * math.sqrt(best[0] * (1.0 - best[0]) / n)
    return float(max(k[2] for k in keys if k[0] >= best[0] - margin - 1e-12)), "leave-one-group-out", accuracy


def _check_inputs(emb: np.ndarray, example_labels: Sequence[str], alpha: float | None, prior: float | str,
                  affinity: float) -> None:
    if emb.ndim != 2 or emb.shape[0] != len(example_labels) or emb.shape[0] == 0:
        raise ValueError(f"need (N, D) embeddings for N >= 1 labelled examples, got {emb.shape} and "
                         f"{len(example_labels)} labels")
    if not np.isfinite(emb).all():
        raise ValueError("example embeddings are not finite (a broken model)")
    if alpha is not None and not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    if prior != "auto" and not (isinstance(prior, (int, float)) and prior >= 0):  # NaN fails too
        raise ValueError(f"prior must be a number >= 0 or 'auto', got {prior!r}")
    if not (isinstance(affinity, (int, float)) and 0 <= affinity <= MAX_AFFINITY):
        raise ValueError(f"affinity must be a number in [0, {MAX_AFFINITY:g}], got {affinity!r}")


def adapt_classes(
    emb: np.ndarray,
    example_labels: Sequence[str],
    text: ZeroShotClassifier | None = None,
    *,
    alpha: float | None = None,
    labels: Sequence[str] | None = None,
    groups: Sequence[str | None] | None = None,
    prior: float | str | None = None,
    spectra: np.ndarray | None = None,
    affinity: float = AFFINITY,
) -> tuple[ZeroShotClassifier, AdaptReport]:
    """Class vectors and example affinities from example embeddings (N, D) and their labels (see the module
    docstring).

    `text`: the text side's class matrix (labels it lacks become classes without text); `affinity`: the
    examples' largest gain in units of the class scores' spread (0: none, a plain class matrix); `prior`: lam
    (None: math.inf with affinities, PRIOR without; "auto": by leave-one-group-out); `alpha`: one fixed text
    weight in [0, 1] for every class instead; `labels`: the output's class order (default: first appearance
    in `example_labels`); `groups`: each example's recording (None entries, or None: found from the
    embeddings and, given, the (N, n_mels) long-term `spectra` of `recording_spectrum` / `file_spectrum`; see
    `overlap`). Needs two classes or more. Returns the classifier and a report.
    """
    emb = np.asarray(emb, dtype=np.float64)
    if prior is None:
        prior = math.inf if affinity > 0 else PRIOR
    _check_inputs(emb, example_labels, alpha, prior, affinity)
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
    ramp = cosine_ramp(emb, y)
    w, gid = _weights(emb, y, ramp, spectra, groups)
    named = 0 if groups is None else sum(g is not None for g in groups)
    grouping = "found" if named == 0 else "given" if named == len(y) else "given + found"
    text_rows, has_text = _text_rows(order, text, emb.shape[1])
    lam, how, loo_acc = PRIOR if prior == "auto" else float(prior), "prior", {}
    if not has_text.any() or alpha is not None:
        how = "no text" if not has_text.any() else "fixed alpha"
    elif prior == "auto":
        lam, how, loo_acc = _choose_lam(emb, y, gid, w, text_rows, has_text)
    sums, independent = _weighted_sums(emb, y, w, len(order))
    a = text_weights(independent, has_text, lam, alpha)
    vectors = class_vectors(text_rows, has_text, sums, a)
    aff = example_affinity(emb, y, w, vectors, affinity, ramp[0])
    scores, ok = leave_one_group_out(emb, y, gid, text_rows, has_text, lam, alpha, w)
    if aff is not None:
        rows = np.flatnonzero(ok)[np.linspace(0, ok.sum() - 1, min(int(ok.sum()), RAMP_SAMPLE)).astype(int)]
        scores[rows] += _held_out_gains(emb[rows], gid[rows], gid, aff, len(order))
        ok = np.zeros(len(y), dtype=bool)
        ok[rows] = True
    fitted = _fit_scale(scores, y, ok)[0]
    scale = fitted if fitted is not None else (text.logit_scale if text is not None else DEFAULT_LOGIT_SCALE)
    clf = ZeroShotClassifier(order, vectors.astype(np.float32), float(scale),
                             (list(text.templates) if text is not None else []) or ["{}"], aff)
    report = AdaptReport(None if math.isinf(lam) else lam, how, float(scale), int(ok.sum()), grouping, loo_acc, [
        {"label": lb, "examples": int(n), "independent": round(float(g), 2), "text_weight": float(t),
         "text": bool(h), "one_recording": bool(n > 1 and g < 1.5)}
        for lb, n, g, t, h in zip(order, counts, independent, a, has_text)],
        None if aff is None else {"strength": float(affinity), "weight": round(float(aff.weights.max() / w.max()), 4),
                                  "sharpness": round(aff.sharpness, 3)})
    return clf, report


def example_affinity(emb: np.ndarray, y: np.ndarray, w: np.ndarray, vectors: np.ndarray, strength: float,
                     ramp_zero: float) -> ExampleAffinity | None:
    """The examples' affinities (module docstring) from their (N, D) normalised embeddings, classes, weights
    w_i and the (C, D) class vectors: gain weights strength * spread * w_i, where spread is the mean over the
    examples of (best - median) of their class-vector cosines (the scale of the scores the gains add to), and
    sharpness SHARPNESS / (1 - ramp_zero), the zero of the examples' `cosine_ramp` (an e-fold fall over a
    fraction of the cosines that tell classes apart). None for strength 0."""
    if strength <= 0:
        return None
    s = emb @ vectors.T
    spread = float(np.mean(s.max(axis=1) - np.median(s, axis=1)))
    spread = spread if spread > 1e-6 else 1.0  # every class vector alike (e.g. one class's examples only)
    return ExampleAffinity(emb.astype(np.float32), y.astype(np.int64), (strength * spread * w).astype(np.float32),
                           min(SHARPNESS / (1.0 - ramp_zero), MAX_SHARPNESS))


def _held_out_gains(rows_emb: np.ndarray, rows_group: np.ndarray, groups: np.ndarray, aff: ExampleAffinity,
                    n_classes: int) -> np.ndarray:
    """(R, C) each scored example's gains from the examples outside its own group (leave-one-group-out)."""
    out = []
    for i in range(0, len(rows_emb), 256):
        gain = aff.example_gains(rows_emb[i : i + 256])
        gain[rows_group[i : i + 256, None] == groups[None]] = 0.0
        out.append(aff.class_sums(gain, n_classes))
    return np.concatenate(out) if out else np.zeros((0, n_classes))
