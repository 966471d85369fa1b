"""Zero-shot evaluation of teachers and students with one code path (the tinyCLAP paper's protocol).

Protocol: every clip of the dataset (or of the selected folds) is embedded deterministically (a long clip is
the renormalised mean of its 5 s window embeddings, or its centre crop; never a random crop), each class is
the text embedding of "this is the sound of {class}" with underscores turned into spaces, and the prediction
is the class of highest cosine similarity. Accuracy is reported overall, per fold (mean ± std over folds)
and per class, with a confusion matrix.

Audio embeddings are the expensive part, so `embed_dataset` caches them per (model weights, dataset, clip
list, long-clip mode) as `.npy` + `.json`; `evaluate` is a pure function of embeddings, reused by pruning.

Reference protocol (fpaissan/tinyCLAP, `tinyclap.py` + `clap_datasets.py`): "this is the sound of " +
class name, argmax of softmax(clamp(exp(logit_scale) * cos, max=100)), random 5 s crops of longer clips
(TUT17) and underscores kept for UrbanSound8K. We differ on purpose in the last two (deterministic, and
underscores -> spaces everywhere) and take the plain argmax of the cosine (the clamp could only add ties).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import sys
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

import numpy as np
import torch
import torch.nn.functional as F

from tinyclap.zeroshot import DEFAULT_TEMPLATE, ZeroShotClassifier

__all__ = [
    "EMBED_CACHE_VERSION",
    "DatasetSpec",
    "EvalReport",
    "Embedded",
    "align_classifier",
    "build_classifier",
    "default_cache_dir",
    "describe_model",
    "embed_dataset",
    "evaluate",
    "limit_dataset",
    "load_eval_dataset",
    "load_model_for_eval",
    "model_fingerprint",
    "parse_dataset_spec",
    "read_templates",
    "recorded_dims",
    "recorded_teacher",
    "resolve_text_model",
    "run_eval",
    "save_confusion_png",
    "weights_fingerprint",
]

# Bump when the way clips become embeddings changes, so old cache entries are never reused.
EMBED_CACHE_VERSION = 1


# --------------------------------------------------------------------------------------------- metrics


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
    prediction is the argmax of the cosine similarity (the logit scale does not change it); on an exact
    tie the lower class index wins (numpy's argmax).
    """
    a = _as_numpy(audio_emb)  # (n, D)
    y = _as_numpy(labels, np.int64).reshape(-1)  # (n,)
    if isinstance(classifier, ZeroShotClassifier):
        w = classifier.weights  # (C, D), rows unit norm
        names = list(class_names) if class_names is not None else list(classifier.labels)
    else:
        w = _as_numpy(classifier)
        w = w / np.maximum(np.linalg.norm(w, axis=1, keepdims=True), 1e-12)
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

    a = a / np.maximum(np.linalg.norm(a, axis=1, keepdims=True), 1e-12)
    pred = (a @ w.T).argmax(axis=1) if a.shape[0] else np.zeros(0, np.int64)  # (n,)
    hit = pred == y
    confusion = np.zeros((n_cls, n_cls), dtype=np.int64)
    np.add.at(confusion, (y, pred), 1)
    counts = confusion.sum(axis=1)
    class_acc = [float(confusion[c, c] / counts[c]) if counts[c] else None for c in range(n_cls)]
    present = [v for v in class_acc if v is not None]

    fold_arr = None
    fold_acc: dict[int, float] = {}
    fold_n: dict[int, int] = {}
    if folds is not None:
        fold_arr = np.asarray([-1 if f is None else int(f) for f in folds], dtype=np.int64)
        if fold_arr.shape != y.shape:
            raise ValueError(f"{fold_arr.shape[0]} folds for {y.shape[0]} clips")
        for f in sorted(set(fold_arr.tolist()) - {-1}):
            m = fold_arr == f
            fold_acc[f] = float(hit[m].mean())
            fold_n[f] = int(m.sum())
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


# --------------------------------------------------------------------------------------------- models


def _checkpoint_file(spec: str | os.PathLike) -> Path | None:
    """The weights file `tinyclap.models.load_model(spec)` reads, or None for a student name."""
    from tinyclap.models import checkpoint_stem
    from tinyclap.models.checkpoint import resolve_checkpoint

    path = Path(spec)
    if not path.exists():
        return None
    if path.suffix in (".pth", ".pt", ".ckpt", ".bin"):
        return path
    return resolve_checkpoint(path, checkpoint_stem(path))


def _sha256_file(path: Path, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def model_fingerprint(spec: str | os.PathLike, seed: int | None = None) -> str:
    """A stable id of a model spec's weights: sha256 of its checkpoint file, or name + seed for a random
    student (whose weights are fixed by the seed passed to `load_model_for_eval`)."""
    ckpt = _checkpoint_file(spec)
    if ckpt is None:
        return f"random:{spec}:seed={seed}"
    return f"sha256:{_sha256_file(ckpt)}"


def weights_fingerprint(model: Any) -> str:
    """sha256 over a module's state dict (names, shapes, dtypes, bytes): for models not loaded from a file."""
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"cannot fingerprint a {type(model).__name__}; pass model_id= to embed_dataset")
    h = hashlib.sha256()
    for k, v in sorted(model.state_dict().items()):
        t = v.detach().cpu().contiguous()
        h.update(f"{k}:{tuple(t.shape)}:{t.dtype}".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return f"weights:{h.hexdigest()}"


def load_model_for_eval(
    spec: str | os.PathLike, tokenizer_dir: str | os.PathLike | None = None, seed: int = 0
) -> tuple[Any, str]:
    """`load_model(spec)` with a seeded initialisation for student names; returns (model, fingerprint)."""
    from tinyclap.models import load_model

    if _checkpoint_file(spec) is None:
        # a bare name means random weights: seed them (without touching the global RNG) so runs repeat
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = load_model(spec, tokenizer_dir=tokenizer_dir)
    else:
        model = load_model(spec, tokenizer_dir=tokenizer_dir)
    return model, model_fingerprint(spec, seed)


def model_kind(model: Any) -> str:
    from tinyclap.models import StudentEmbedder
    from tinyclap.models.teacher import CLAPTeacher

    if isinstance(model, StudentEmbedder):
        return "student"
    if isinstance(model, CLAPTeacher):
        return "teacher"
    if type(model).__name__ == "ProxyTeacher":
        return "proxy-teacher"
    return type(model).__name__


def describe_model(model: Any, spec: str | os.PathLike | None = None, fingerprint: str | None = None) -> dict:
    """Kind, name, size and cost of the audio side of a model (what runs at inference)."""
    from tinyclap.models.students import count_macs, count_params

    kind = model_kind(model)
    audio: Any = model
    if kind == "student":
        audio = model.student
    elif hasattr(model, "audio_encoder"):
        audio = model.audio_encoder
    elif hasattr(model, "audio_tower"):
        audio = model.audio_tower
    info: dict[str, Any] = {
        "spec": None if spec is None else os.fspath(spec),
        "kind": kind,
        "name": getattr(model, "name", None)
        or getattr(audio, "name", None)
        or (Path(spec).stem if spec is not None else type(model).__name__),
        "embed_dim": int(model.embed_dim),
        "sample_rate": int(model.sample_rate),
        "fingerprint": fingerprint,
        "audio_params": count_params(audio) if isinstance(audio, torch.nn.Module) else None,
        "macs": None,
    }
    if kind == "student":
        info["macs"] = _student_macs(model.student)
    elif kind == "teacher":  # its audio encoder takes a (1, T, 64) log-mel, which count_macs feeds
        try:
            info["macs"] = count_macs(audio)
        except (RuntimeError, ValueError, TypeError):  # an unusual model: the size is still reported
            info["macs"] = None
    if kind == "student":
        info["student"] = model.student.config()
    return info


_MACS: dict[str, int] = {}


def _student_macs(student: torch.nn.Module) -> int:
    """count_macs of a student, memoised by its config (MACs depend on the architecture only)."""
    from tinyclap.models.students import count_macs

    key = json.dumps(student.config(), sort_keys=True)
    if key not in _MACS:
        _MACS[key] = count_macs(student)
    return _MACS[key]


def _checkpoint_config(spec: str | os.PathLike) -> tuple[dict[str, Any], Path] | None:
    """(JSON config, safetensors path) of one of our checkpoints; None for names, .pth files, bad files."""
    from safetensors import SafetensorError, safe_open

    ckpt = _checkpoint_file(spec)
    if ckpt is None or ckpt.suffix != ".safetensors":
        return None
    try:  # the header only: no tensor is read
        with safe_open(str(ckpt), framework="pt") as f:
            text = (f.metadata() or {}).get("tinyclap")
        if text is None and ckpt.with_suffix(".json").is_file():
            text = ckpt.with_suffix(".json").read_text(encoding="utf-8")
        return (json.loads(text), ckpt) if text else None
    except (SafetensorError, OSError, ValueError):
        return None


def recorded_dims(spec: str | os.PathLike) -> list[int] | None:
    """The latent entries a pruned student keeps (`dims` in its config, written by `tinyclap prune`)."""
    found = _checkpoint_config(spec)
    dims = found[0].get("dims") if found else None
    return [int(d) for d in dims] if isinstance(dims, list) and dims else None


def recorded_teacher(spec: str | os.PathLike) -> tuple[str, str | None] | None:
    """(teacher path, tokenizer dir or None) recorded in a student checkpoint's config, if any.

    Accepted forms: `"teacher": "PATH"` or `"teacher": {"path": PATH, "tokenizer": DIR}`, plus an optional
    top-level `"tokenizer"`. Relative paths are tried as given, then against the checkpoint's folder.
    """
    found = _checkpoint_config(spec)
    if found is None:
        return None
    config, ckpt = found
    rec = config.get("teacher")
    tok = config.get("tokenizer")
    if isinstance(rec, dict):
        tok = rec.get("tokenizer", tok)
        rec = rec.get("path") or rec.get("checkpoint")
    if not isinstance(rec, str) or not rec:
        return None

    def locate(p: str) -> str:
        q = Path(os.path.expanduser(p))
        if not q.is_absolute() and not q.exists() and (ckpt.parent / q).exists():
            return str(ckpt.parent / q)
        return str(q)

    return locate(rec), (locate(tok) if isinstance(tok, str) and tok else None)


def resolve_text_model(
    model: Any,
    spec: str | os.PathLike | None = None,
    *,
    teacher: str | os.PathLike | None = None,
    tokenizer: str | os.PathLike | None = None,
) -> tuple[Any, str, str | None]:
    """(text model, where it came from, its checkpoint path or None when it is `model` itself).

    The text model's `encode_text` gives the class embeddings.

    Order: `teacher` when given, else the evaluated model's own text tower (teachers), else the teacher
    recorded in a student run's config. Raises ValueError saying what to pass when there is none.
    """
    from tinyclap.models import load_model

    path: str | None
    if hasattr(model, "encode_text") and teacher is None:
        text_model, source, path = model, "the evaluated model's own text tower", None
    elif teacher is not None:
        path = os.fspath(teacher)
        text_model, source = load_model(teacher, tokenizer_dir=tokenizer), f"teacher {path}"
    else:
        rec = recorded_teacher(spec) if spec is not None else None
        if rec is None:
            raise ValueError(
                f"{spec}: no text encoder for the class prompts: this model has no text tower and its "
                "config records no teacher. Pass --teacher CKPT --tokenizer DIR (the teacher it was "
                "distilled from; DIR holds BERT's uncased vocab.txt), or --classes FILE.npz (a class matrix "
                "saved by tinyclap)"
            )
        path, rec_tok = rec
        if not Path(path).exists():
            raise ValueError(
                f"{spec}: the recorded teacher {path} does not exist; pass --teacher CKPT --tokenizer DIR "
                "or --classes FILE.npz"
            )
        text_model = load_model(path, tokenizer_dir=tokenizer or rec_tok)
        source = f"teacher {path} (recorded in the student's config)"
    if getattr(text_model, "tokenizer", "n/a") is None:
        raise ValueError(
            f"{source} has no tokenizer, so it cannot encode the class prompts: pass --tokenizer DIR "
            "(a folder with BERT's uncased vocab.txt) or --classes FILE.npz"
        )
    return text_model, source, path


def read_templates(values: Sequence[str] | None) -> list[str]:
    """Prompt templates from the command line: each value is a template or a file of templates (one a
    line, blank lines and '#' comments skipped). Every template must contain one '{}'."""
    if not values:
        return [DEFAULT_TEMPLATE]
    out: list[str] = []
    for v in values:
        p = Path(os.path.expanduser(v))
        if "{}" not in v and p.is_file():
            lines = [ln.strip() for ln in p.read_text(encoding="utf-8").splitlines()]
            found = [ln for ln in lines if ln and not ln.startswith("#")]
            if not found:
                raise ValueError(f"{p}: no templates in this file")
            for t in found:
                if t.count("{}") != 1:
                    raise ValueError(f"{p}: template {t!r} must contain exactly one '{{}}'")
            out.extend(found)
        elif v.count("{}") == 1:
            out.append(v)
        else:
            raise ValueError(f"template {v!r} must contain exactly one '{{}}' (or be a file of templates)")
    return out


def align_classifier(
    clf: ZeroShotClassifier, class_names: Sequence[str], source: str = "class matrix"
) -> ZeroShotClassifier:
    """Reorder a saved class matrix to the dataset's classes (labels match with or without underscores)."""

    def key(s: str) -> str:
        return " ".join(s.replace("_", " ").lower().split())

    rows = {key(lb): i for i, lb in enumerate(clf.labels)}
    idx, absent = [], []
    for c in class_names:
        if key(c) in rows:
            idx.append(rows[key(c)])
        else:
            absent.append(c)
    if absent:
        raise ValueError(
            f"{source}: no row for class(es) {', '.join(map(repr, absent))} (it has: {', '.join(clf.labels)})"
        )
    return ZeroShotClassifier(list(class_names), clf.weights[idx], clf.logit_scale, clf.templates)


def build_classifier(
    class_names: Sequence[str],
    *,
    text_model: Any = None,
    classes_file: str | os.PathLike | None = None,
    templates: Sequence[str] = (DEFAULT_TEMPLATE,),
) -> ZeroShotClassifier:
    """The (C, D) class matrix of a dataset's classes: from a saved file, or encoded by `text_model`."""
    if classes_file is not None:
        return align_classifier(ZeroShotClassifier.load(classes_file), class_names, os.fspath(classes_file))
    if text_model is None:
        raise ValueError("need a text model or a class-matrix file for the class prompts")
    # labels stay the dataset's names; class_prompt turns underscores into spaces for the prompt
    return ZeroShotClassifier.from_teacher(text_model, list(class_names), list(templates))


# --------------------------------------------------------------------------------------------- datasets


@dataclass(frozen=True)
class DatasetSpec:
    """A dataset on the command line: `NAME:PATH[#folds=1,2&limit=N&subset=...]`."""

    name: str
    root: str
    folds: tuple[int, ...] | None = None
    limit: int | None = None
    subset: str | None = None  # TUT17: auto | development | evaluation

    def label(self) -> str:
        return self.name + (f"-f{'_'.join(map(str, self.folds))}" if self.folds else "")


def _parse_folds(text: str) -> tuple[int, ...]:
    try:
        folds = tuple(int(x) for x in text.replace("+", ",").split(",") if x.strip())
    except ValueError:
        raise ValueError(f"folds must be integers separated by commas, got {text!r}") from None
    if not folds:
        raise ValueError("empty fold list")
    return folds


def parse_dataset_spec(spec: str) -> DatasetSpec:
    """`esc50:/data/ESC-50-master`, `us8k:/data/UrbanSound8K#folds=1,2&limit=50`, `csv:/x/list.csv`, ..."""
    from tinyclap.data.datasets import DATASET_NAMES

    name, sep, rest = spec.partition(":")
    if not sep or name.lower() not in DATASET_NAMES:
        raise ValueError(
            f"dataset spec {spec!r} must be NAME:PATH with NAME one of {', '.join(DATASET_NAMES)} "
            "(options after '#', e.g. us8k:/data/UrbanSound8K#folds=1,2&limit=100)"
        )
    root, _, query = rest.partition("#")
    opts: dict[str, Any] = {}
    for k, v in parse_qsl(query, keep_blank_values=True, strict_parsing=bool(query)):
        if k == "folds":
            opts["folds"] = _parse_folds(v)
        elif k == "limit":
            opts["limit"] = int(v)
        elif k == "subset":
            opts["subset"] = v
        else:
            raise ValueError(f"dataset spec {spec!r}: unknown option {k!r} (valid: folds, limit, subset)")
    if not root:
        raise ValueError(f"dataset spec {spec!r}: empty path")
    return DatasetSpec(name.lower(), root, **opts)


def limit_dataset(dataset: Any, limit: int | None) -> Any:
    """A deterministic, evenly spread subset of `limit` clips (every (n/limit)-th item), for quick runs."""
    if limit is None or limit >= len(dataset.items):
        return dataset
    if limit < 1:
        raise ValueError(f"limit must be >= 1, got {limit}")
    n = len(dataset.items)
    idx = sorted({int(i * n / limit) for i in range(limit)})
    return replace(dataset, items=[dataset.items[i] for i in idx])


def load_eval_dataset(
    name: str,
    root: str | os.PathLike,
    *,
    folds: Iterable[int] | None = None,
    esc10: bool = False,
    subset: str | None = None,
    limit: int | None = None,
) -> Any:
    """`tinyclap.data.datasets.load_dataset` with the evaluation options (ESC-10, TUT17 subset, limit)."""
    from tinyclap.data.datasets import load_dataset

    kw: dict[str, Any] = {}
    if folds is not None:
        kw["folds"] = list(folds)
    key = name.lower()
    if esc10:
        if key not in ("esc50", "esc10"):
            raise ValueError(f"--esc10 only applies to ESC-50, not {name!r}")
        key = "esc10"
    if subset is not None:
        if not key.startswith("tut17"):
            raise ValueError(f"a subset only applies to tut17, not {name!r}")
        kw["subset"] = subset
    ds = load_dataset(key, root, **kw)
    if not ds.items:
        raise ValueError(
            f"{ds.root}: no clips to evaluate in {ds.name}" + (f" (folds {list(folds)})" if folds else "")
        )
    return limit_dataset(ds, limit)


# --------------------------------------------------------------------------------------------- embedding


@dataclass
class Embedded:
    """Result of `embed_dataset`; unpacks as `(embeddings, kept, failed)`."""

    embeddings: torch.Tensor  # (n_kept, D) float32, rows L2-normalised
    kept: list[int]  # indices into dataset.items of the clips that were embedded
    failed: list[tuple[str, str]]  # (path, reason) of the clips that could not be read
    cache_file: Path | None = None
    cache_hit: bool = False

    def __iter__(self) -> Iterator[Any]:
        return iter((self.embeddings, self.kept, self.failed))


def default_cache_dir() -> Path:
    """`$TINYCLAP_CACHE/embeddings`, else the user cache folder's `embeddings/` (platformdirs)."""
    env = os.environ.get("TINYCLAP_CACHE")
    if env:
        return Path(env) / "embeddings"
    from platformdirs import user_cache_path

    return user_cache_path("tinyclap") / "embeddings"


def _clip_stamp(path: Path) -> list[Any]:
    try:
        st = path.stat()
        return [os.fspath(path), st.st_size, st.st_mtime_ns]
    except OSError:
        return [os.fspath(path), None, None]


def _cache_key(model_id: str, model: Any, dataset: Any, mode: str, clip_seconds: float) -> tuple[str, dict]:
    # File size + mtime are in the key so that a re-encoded or repaired clip is embedded again.
    clips = [_clip_stamp(Path(it.path)) for it in dataset.items]
    clips_hash = hashlib.sha256(json.dumps(clips).encode()).hexdigest()
    desc = {
        "version": EMBED_CACHE_VERSION,
        "model": model_id,
        "sample_rate": int(model.sample_rate),
        "embed_dim": int(model.embed_dim),
        "dataset": dataset.name,
        "root": os.fspath(dataset.root),
        "long_clip": mode,
        "clip_seconds": float(clip_seconds),
        "n_clips": len(clips),
        "clips_sha256": clips_hash,
    }
    return hashlib.sha256(json.dumps(desc, sort_keys=True).encode()).hexdigest(), desc


def _cache_paths(cache_dir: Path, dataset: Any, key: str) -> tuple[Path, Path]:
    safe = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in dataset.name)
    stem = cache_dir / f"{safe}-{key[:24]}"
    return stem.with_suffix(".npy"), stem.with_suffix(".json")


def _load_cache(npy: Path, meta_path: Path, key: str, n_items: int) -> Embedded | None:
    if not (npy.is_file() and meta_path.is_file()):
        return None
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        emb = np.load(npy, allow_pickle=False)
    except (OSError, ValueError) as e:
        print(f"warning: ignoring unreadable embedding cache {npy} ({e})", file=sys.stderr)
        return None
    kept = [int(i) for i in meta.get("kept", [])]
    if (
        meta.get("key") != key
        or emb.ndim != 2
        or emb.shape[0] != len(kept)
        or any(not 0 <= i < n_items for i in kept)
    ):
        print(f"warning: embedding cache {npy} does not match its description; recomputing", file=sys.stderr)
        return None
    failed = [(str(p), str(r)) for p, r in meta.get("failed", [])]
    return Embedded(torch.from_numpy(emb.astype(np.float32)), kept, failed, npy, True)


def _save_cache(npy: Path, meta_path: Path, key: str, desc: dict, res: Embedded, dataset: Any) -> None:
    import io

    import tinyclap
    from tinyclap._util import atomic_write_bytes, atomic_write_text

    buf = io.BytesIO()
    np.save(buf, res.embeddings.numpy().astype(np.float32))
    atomic_write_bytes(npy, buf.getvalue())
    meta = {
        "key": key,
        **desc,
        "tinyclap_version": tinyclap.__version__,
        "paths": [os.fspath(it.path) for it in dataset.items],
        "kept": res.kept,
        "failed": [list(f) for f in res.failed],
    }
    atomic_write_text(meta_path, json.dumps(meta, indent=1) + "\n")


def _prefetch(fn: Callable[[Any], Any], items: Sequence[Any], workers: int) -> Iterator[Any]:
    """fn(item) for each item, in order, computed `workers` at a time ahead of the consumer.

    Decoding and resampling run in threads (libsndfile and soxr release the GIL) while the model runs.
    """
    if workers <= 1:
        yield from map(fn, items)
        return
    with ThreadPoolExecutor(max_workers=workers) as pool:
        it = iter(items)
        pending: deque = deque(pool.submit(fn, x) for _, x in zip(range(2 * workers), it))
        while pending:
            res = pending.popleft().result()
            nxt = next(it, _END)
            if nxt is not _END:
                pending.append(pool.submit(fn, nxt))
            yield res


_END = object()


def _model_device(model: Any) -> torch.device:
    if isinstance(model, torch.nn.Module):
        p = next(model.parameters(), None)
        if p is not None:
            return p.device
    return torch.device("cpu")


@torch.no_grad()
def _embed_items(
    model: Any,
    paths: Sequence[Path],
    mode: str,
    clip_seconds: float,
    batch_size: int,
    device: torch.device,
    progress: bool,
    workers: int,
) -> tuple[list[int], list[torch.Tensor], list[tuple[str, str]]]:
    """Embed clips with windows of several clips batched together; returns (kept, per-clip (D,), failed)."""
    from tqdm import tqdm

    from tinyclap.audio import AudioError, load_audio
    from tinyclap.evaluation.embedding import clip_windows

    sr = int(model.sample_rate)

    def load(path: Path) -> tuple[np.ndarray | None, str | None]:
        try:
            wave = load_audio(path, sr)
            return clip_windows(wave, sr, clip_seconds, mode), None  # (K, L)
        except AudioError as e:
            return None, e.problem

    kept: list[int] = []
    out: list[torch.Tensor] = []
    failed: list[tuple[str, str]] = []
    queue: list[tuple[int, np.ndarray]] = []  # (clip index, (K, L) windows) waiting for a batch
    parts: dict[int, list[torch.Tensor]] = {}
    n_queued = 0

    def flush() -> None:
        nonlocal n_queued
        if not queue:
            return
        x = torch.from_numpy(np.concatenate([w for _, w in queue])).to(device)  # (sum K, L)
        embs = [
            model.embed_waveform(x[i : i + batch_size]).float().cpu() for i in range(0, len(x), batch_size)
        ]
        e = torch.cat(embs)  # (sum K, D)
        start = 0
        for idx, w in queue:
            parts.setdefault(idx, []).append(e[start : start + len(w)])
            start += len(w)
        queue.clear()
        n_queued = 0

    bar = tqdm(total=len(paths), desc="embed", unit="clip", disable=not progress, file=sys.stderr)
    try:
        for i, (wins, problem) in enumerate(_prefetch(load, paths, workers)):
            bar.update(1)
            if wins is None:
                failed.append((os.fspath(paths[i]), str(problem)))
                continue
            kept.append(i)
            queue.append((i, wins))
            n_queued += len(wins)
            if n_queued >= batch_size:
                flush()
        flush()
    finally:
        bar.close()
    for i in kept:
        # a clip = renormalised mean of its window embeddings (as tinyclap.evaluation.embedding.embed_clip)
        out.append(F.normalize(torch.cat(parts.pop(i)).mean(0), dim=-1))  # (D,)
    return kept, out, failed


def embed_dataset(
    model: Any,
    dataset: Any,
    mode: str = "windows",
    cache_dir: str | os.PathLike | None = None,
    progress: bool = True,
    *,
    model_id: str | None = None,
    clip_seconds: float = 5.0,
    batch_size: int = 16,
    device: str | torch.device | None = None,
    workers: int | None = None,
) -> Embedded:
    """Embed every clip of `dataset` (a `LabelledDataset`) -> `Embedded` = (embeddings (n, D), kept, failed).

    Deterministic: `mode` "windows" (mean of all 5 s windows, renormalised) or "centre" (centre crop).
    Unreadable clips are skipped and listed in `failed`. With `cache_dir`, results are stored as `.npy` +
    `.json` under a key of (model_id, dataset name/root, clip list with sizes and mtimes, mode, clip length)
    and reused; `model_id` defaults to a hash of the model's weights (see `model_fingerprint` for a file).
    The model runs on `device` (default: where its parameters are), in eval mode for the call.
    """
    from tinyclap.evaluation.embedding import LONG_CLIP_MODES

    if mode not in LONG_CLIP_MODES:
        raise ValueError(f"long-clip mode must be one of {LONG_CLIP_MODES}, got {mode!r}")
    npy = meta_path = None
    key = ""
    desc: dict = {}
    if cache_dir is not None:
        model_id = model_id or weights_fingerprint(model)
        key, desc = _cache_key(model_id, model, dataset, mode, clip_seconds)
        npy, meta_path = _cache_paths(Path(cache_dir), dataset, key)
        hit = _load_cache(npy, meta_path, key, len(dataset.items))
        if hit is not None:
            return hit

    dev = torch.device(device) if device is not None else _model_device(model)
    was_training = getattr(model, "training", None)
    if isinstance(model, torch.nn.Module):
        model.eval()
    try:
        kept, rows, failed = _embed_items(
            model,
            [Path(it.path) for it in dataset.items],
            mode,
            clip_seconds,
            batch_size,
            dev,
            progress,
            workers if workers is not None else min(4, os.cpu_count() or 1),
        )
    finally:
        if isinstance(model, torch.nn.Module) and was_training:
            model.train()
    emb = torch.stack(rows) if rows else torch.zeros(0, int(model.embed_dim))
    res = Embedded(emb, kept, failed, npy, False)
    if npy is not None and meta_path is not None:
        _save_cache(npy, meta_path, key, desc, res, dataset)
    return res


# --------------------------------------------------------------------------------------------- CLI engine


def _pick_device(device: str | None) -> torch.device:
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def protocol_block(
    dataset: Any, templates: Sequence[str], mode: str, clip_seconds: float, sample_rate: int, **extra: Any
) -> dict[str, Any]:
    """What exactly was measured, for the JSON report."""
    block = {
        "prompt_templates": list(templates),
        "class_names": "underscores replaced by spaces for every dataset",
        "prediction": "argmax of cosine(audio, class text embedding)",
        "clips": "every clip of the selected folds, deterministic (no random crops)",
        "long_clip": mode,
        "long_clip_meaning": {
            "windows": "renormalised mean of the embeddings of all 5 s windows",
            "centre": "centre 5 s crop",
        }[mode],
        "clip_seconds": clip_seconds,
        "short_clips": "zero-padded to the clip length",
        "sample_rate": sample_rate,
        "fold_std": "population std over folds (ddof=0)",
        "differences_from_reference": [
            "the reference tinyCLAP code took a random 5 s crop of longer clips (e.g. TUT17's 10 s); "
            "we embed them deterministically (see long_clip)",
            "the reference took the argmax of softmax(clamp(scaled cosine, max=100)); the clamp can only "
            "create ties, we take the argmax of the cosine",
        ],
        **extra,
    }
    if dataset.name.startswith("us8k"):
        block["note"] = (
            "UrbanSound8K prompts use spaces (e.g. 'air conditioner'); the reference tinyCLAP code kept the "
            "underscores ('this is the sound of air_conditioner'), so its US8K numbers may differ slightly"
        )
    return block


def run_eval(
    model_spec: str,
    dataset_name: str,
    root: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    teacher: str | None = None,
    tokenizer: str | None = None,
    classes_file: str | None = None,
    templates: Sequence[str] | None = None,
    folds: Sequence[int] | None = None,
    esc10: bool = False,
    subset: str | None = None,
    limit: int | None = None,
    long_clip: str = "windows",
    embed_cache: str | os.PathLike | None = None,
    no_cache: bool = False,
    seed: int = 0,
    device: str | None = None,
    batch_size: int = 16,
    progress: bool = True,
    verbose: bool = True,
) -> dict[str, Any]:
    """Evaluate a model on a dataset and write `report.json`, `confusion.png`, `predictions.csv` to out_dir.

    Returns the JSON report (dict); prints a short summary when `verbose`.
    """
    import tinyclap

    t0 = time.time()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    dataset = load_eval_dataset(dataset_name, root, folds=folds, esc10=esc10, subset=subset, limit=limit)
    dev = _pick_device(device)
    model, fingerprint = load_model_for_eval(model_spec, tokenizer, seed)
    if isinstance(model, torch.nn.Module):
        model.to(dev)

    tpls = read_templates(templates)
    if classes_file is not None:
        clf = build_classifier(dataset.classes, classes_file=classes_file)
        text_source = f"class matrix {classes_file}"
    else:
        text_model, text_source, _ = resolve_text_model(
            model, model_spec, teacher=teacher, tokenizer=tokenizer
        )
        clf = build_classifier(dataset.classes, text_model=text_model, templates=tpls)
    dims = recorded_dims(model_spec)
    if clf.embed_dim != model.embed_dim and dims is not None and len(dims) == model.embed_dim:
        # a student pruned by `tinyclap prune`: its k entries are these entries of the teacher's space
        clf = clf.select(dims)
        text_source += f", sliced to the {len(dims)} entries the pruned student keeps"
    if clf.embed_dim != model.embed_dim:
        raise ValueError(
            f"the class matrix ({text_source}) has {clf.embed_dim} dims "
            f"but {model_spec} gives {model.embed_dim}"
        )

    cache_dir = None if no_cache else Path(embed_cache) if embed_cache is not None else default_cache_dir()
    emb = embed_dataset(
        model,
        dataset,
        long_clip,
        cache_dir,
        progress=progress and len(dataset.items) > 20,
        model_id=fingerprint,
        batch_size=batch_size,
        device=dev,
    )
    if not emb.kept:
        raise ValueError(f"{dataset.root}: none of the {len(dataset.items)} clips could be read")
    items = [dataset.items[i] for i in emb.kept]
    report = evaluate(
        emb.embeddings, [it.label for it in items], clf, [it.fold for it in items], list(dataset.classes)
    )

    info = describe_model(model, model_spec, fingerprint)
    title = f"{info['name']} on {dataset.name}: {100 * report.accuracy:.1f} %"
    png = save_confusion_png(report, None, out / "confusion.png", title=title)
    _write_predictions(out / "predictions.csv", items, report)
    result = {
        "tinyclap_version": tinyclap.__version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "model": info,
        "text": {"source": text_source, "templates": list(clf.templates), "logit_scale": clf.logit_scale},
        "dataset": {
            "name": dataset.name,
            "root": os.fspath(dataset.root),
            "folds": list(folds) if folds else dataset.folds,
            "limit": limit,
            "n_listed": len(dataset.items),
            "n_clips": report.n,
            "n_skipped": len(emb.failed),
            "skipped": [{"file": p, "error": e} for p, e in emb.failed],
            "n_missing": len(dataset.missing),
            "missing": [os.fspath(p) for p in dataset.missing],
            "classes": list(dataset.classes),
        },
        "protocol": protocol_block(
            dataset, clf.templates, long_clip, 5.0, int(model.sample_rate), esc10=esc10, seed=seed
        ),
        "results": report.to_dict(),
        "embed_cache": {
            "file": None if emb.cache_file is None else os.fspath(emb.cache_file),
            "reused": emb.cache_hit,
        },
        "files": {"confusion_png": os.fspath(png), "predictions_csv": os.fspath(out / "predictions.csv")},
        "elapsed_s": round(time.time() - t0, 3),
    }
    from tinyclap._util import atomic_write_text

    atomic_write_text(out / "report.json", json.dumps(_finite(result), indent=2) + "\n")
    if verbose:
        params = info["audio_params"]
        size = f", {params / 1e6:.2f} M params" if params else ""
        print(f"{info['name']} ({info['kind']}{size}) on {dataset.name} ({dataset.root})")
        print(
            f"clips: {report.n} evaluated, {len(emb.failed)} skipped (unreadable), "
            f"{len(dataset.missing)} missing" + (" [embeddings from cache]" if emb.cache_hit else "")
        )
        print(report.summary())
        print(f"report: {out / 'report.json'}  confusion: {png}")
    return result


def _finite(x: Any) -> Any:
    """NaN -> None so the report is strict JSON."""
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, dict):
        return {k: _finite(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_finite(v) for v in x]
    return x


def _write_predictions(path: Path, items: Sequence[Any], report: EvalReport) -> None:
    import csv
    import io

    from tinyclap._util import atomic_write_text

    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["path", "fold", "label", "predicted", "correct"])
    names = report.class_names
    for it, y, p in zip(items, report.labels, report.predictions):
        w.writerow([os.fspath(it.path), "" if it.fold is None else it.fold, names[y], names[p], int(y == p)])
    atomic_write_text(path, buf.getvalue())
