"""Pruning of the shared audio-text latent space (tinyCLAP paper, Eq. 8).

The zero-shot score of a clip and a class is the cosine s = sum_k a_k t_k of the normalised audio embedding
`a` and class text embedding `t`. Entries k that contribute little to s on a calibration set can be dropped:
the kept entries, renormalised, still rank classes almost as the full space does. The reference repository
(fpaissan/tinyCLAP) has no pruning code; this follows the paper's description.

Criteria (scores per entry k, computed on the calibration clips; keep the k highest):

* `contribution`: mean over (clip, class) pairs of |a_k t_k|, with the teacher's normalised audio embeddings
  and class text embeddings. It factorises as mean_clips |a_k| * mean_classes |t_k|.
* `variance`: variance of a_k over the clips.
* `energy`: mean of a_k^2 over the clips.

`a` is the TEACHER's audio embedding of the calibration clips when a teacher with an audio tower is at hand
(the space the student imitates), else the pruned model's own; the choice is recorded in the report.

Two products per size k:

1. the MASKED model: the full model, its output restricted to the kept entries and renormalised, with the
   class matrix sliced the same way (`ZeroShotClassifier.select(dims)`). Needs no new audio forward pass:
   cached full embeddings are sliced.
2. a PHYSICALLY SMALLER student (`shrink_student`): the projection head cut to k outputs (linear1 rows,
   linear2 rows and columns, LayerNorm entries). Its LayerNorm now normalises over k entries, so it is
   fine-tuned (projection only) against the masked teacher targets before use.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from tinyclap.evaluation.evaluate import (
    DatasetSpec,
    Embedded,
    build_classifier,
    default_cache_dir,
    describe_model,
    embed_dataset,
    evaluate,
    load_eval_dataset,
    load_model_for_eval,
    model_fingerprint,
    parse_dataset_spec,
    protocol_block,
    read_templates,
    recorded_teacher,
    resolve_text_model,
)

__all__ = [
    "CRITERIA",
    "MaskedEmbedder",
    "PruneRow",
    "dim_scores",
    "finetune_small_student",
    "mask_embeddings",
    "projection_params",
    "removed_params",
    "run_prune",
    "save_prune_plot",
    "select_dims",
    "shrink_student",
]

CRITERIA = ("contribution", "variance", "energy")


def _np(x: Any) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().float().cpu().numpy()
    return np.asarray(x, dtype=np.float64)


def _unit_rows(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def dim_scores(audio_emb: Any, text_emb: Any = None, criterion: str = "contribution") -> np.ndarray:
    """(D,) importance of each latent entry on a calibration set; higher = keep.

    `audio_emb` (n, D) and `text_emb` (C, D) are normalised here (rows); `text_emb` is needed only for
    `contribution`.
    """
    if criterion not in CRITERIA:
        raise ValueError(f"criterion must be one of {CRITERIA}, got {criterion!r}")
    a = _np(audio_emb)
    if a.ndim != 2 or a.shape[0] == 0:
        raise ValueError(f"need a non-empty (n, D) matrix of calibration audio embeddings, got {a.shape}")
    a = _unit_rows(a)  # (n, D)
    if criterion == "variance":
        return a.var(axis=0)
    if criterion == "energy":
        return (a**2).mean(axis=0)
    if text_emb is None:
        raise ValueError("the contribution criterion needs the class text embeddings")
    t = _np(text_emb)
    if t.ndim != 2 or t.shape[1] != a.shape[1]:
        raise ValueError(f"text embeddings {t.shape} do not match audio embeddings {a.shape}")
    t = _unit_rows(t)  # (C, D)
    # mean_{i,c} |a_ik t_ck| = mean_i |a_ik| * mean_c |t_ck|: no (n, C, D) tensor needed
    return np.abs(a).mean(axis=0) * np.abs(t).mean(axis=0)


def select_dims(scores: Any, k: int) -> np.ndarray:
    """Indices of the `k` highest scores, in increasing index order (ties: the lower index is kept)."""
    s = _np(scores).reshape(-1)
    if not 1 <= k <= s.shape[0]:
        raise ValueError(f"k must be in 1..{s.shape[0]}, got {k}")
    order = np.argsort(-s, kind="stable")  # stable: equal scores keep index order
    return np.sort(order[:k]).astype(np.int64)


def mask_embeddings(emb: Any, dims: Sequence[int] | np.ndarray) -> Any:
    """(n, D) embeddings -> (n, k): the kept entries, renormalised (numpy in, numpy out; torch likewise)."""
    idx = np.asarray(dims, dtype=np.int64)
    if isinstance(emb, torch.Tensor):
        return F.normalize(emb[:, torch.from_numpy(idx).to(emb.device)], dim=-1)
    return _unit_rows(np.asarray(emb, dtype=np.float64)[:, idx]).astype(np.float32)


class MaskedEmbedder(nn.Module):
    """An audio model whose output keeps only the latent entries `dims`, renormalised (an `AudioEmbedder`)."""

    def __init__(self, model: Any, dims: Sequence[int] | np.ndarray) -> None:
        super().__init__()
        self.model = model
        self.register_buffer("dims", torch.as_tensor(np.asarray(dims, dtype=np.int64)), persistent=False)
        self.sample_rate = int(model.sample_rate)
        self.embed_dim = int(len(self.dims))

    def embed_waveform(self, wave: torch.Tensor) -> torch.Tensor:  # (B, N) -> (B, k)
        return F.normalize(self.model.embed_waveform(wave)[:, self.dims.to(wave.device)], dim=-1)

    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        return self.embed_waveform(wave)


# --------------------------------------------------------------------------------------------- small student


def projection_params(d_in: int, d_out: int) -> int:
    """Parameters of tinyclap.models.layers.Projection(d_in, d_out): linear1 + linear2 (no biases) + LayerNorm."""
    return d_in * d_out + d_out * d_out + 2 * d_out


def removed_params(full_dim: int, k: int, d_in: int = 2048) -> int:
    """Parameters removed by cutting a Projection(d_in, full_dim) to k outputs."""
    return projection_params(d_in, full_dim) - projection_params(d_in, k)


def shrink_student(student: nn.Module, dims: Sequence[int] | np.ndarray) -> nn.Module:
    """A new student with the projection reduced to the entries `dims` (weights copied, nothing shared).

    linear1 keeps rows `dims` (its output features), linear2 keeps rows and columns `dims`, the LayerNorm
    keeps weight/bias `dims`; the base encoder is copied as it is.
    """
    from tinyclap.models.checkpoint import load_state_dict_checked
    from tinyclap.models.students import create_student

    full = int(student.embed_dim)
    idx = np.asarray(dims, dtype=np.int64)
    if (
        idx.ndim != 1
        or idx.size == 0
        or len(set(idx.tolist())) != idx.size
        or idx.min() < 0
        or idx.max() >= full
    ):
        raise ValueError(f"dims must be distinct indices in 0..{full - 1}, got {idx.size} entries")
    sel = torch.from_numpy(np.sort(idx))
    small = create_student(student.name, embed_dim=int(sel.numel()), n_mels=int(student.n_mels))
    state = {}
    for key, v in student.state_dict().items():
        if key == "projection.linear1.weight":  # (D, d_in) -> (k, d_in)
            v = v[sel]
        elif key == "projection.linear2.weight":  # (D, D) -> (k, k)
            v = v[sel][:, sel]
        elif key in ("projection.layer_norm.weight", "projection.layer_norm.bias"):  # (D,) -> (k,)
            v = v[sel]
        state[key] = v.detach().clone()
    load_state_dict_checked(small, state, source=f"{student.name} sliced to {sel.numel()} dims")
    return small.to(next(student.parameters()).device).train(student.training)


def finetune_small_student(
    small: nn.Module,
    dims: Sequence[int] | np.ndarray,
    cache_dir: str | os.PathLike,
    *,
    epochs: int,
    lr: float = 1e-3,
    teacher: Any = None,
    **kw: Any,
) -> Any:
    """Projection-only fine-tuning of a shrunk student against the MASKED teacher targets of a cache.

    Runs `tinyclap.train.distill.train_stage(small, train, val, stage=2, target_dims=dims, ...)` on
    `CachedDataset(cache_dir, "train")`, validating on the cache's "val" split (on "train" when the cache
    has no validation rows). `kw` go to train_stage (batch_size, device, seed, progress, ...). The student
    ends with the weights of the best validation epoch. With `teacher`, warns when the cache's targets came
    from other weights. Returns train_stage's `StageResult`.
    """
    import sys

    from tinyclap.train.cache import CachedDataset, CacheStore, state_sha256
    from tinyclap.train.distill import train_stage

    store = CacheStore(cache_dir)
    idx = np.sort(np.asarray(dims, dtype=np.int64))
    if idx.size and int(idx.max()) >= store.embed_dim:
        raise ValueError(
            f"{cache_dir}: targets have {store.embed_dim} entries, but dims go up to {idx.max()}"
        )
    if teacher is not None:
        cached = (store.config.get("teacher") or {}).get("sha256")
        ours = state_sha256(teacher)
        if cached and ours and cached != ours:
            print(
                f"warning: the targets in {cache_dir} come from another teacher than the one that ranked the "
                "latent entries",
                file=sys.stderr,
            )
    train_ds = CachedDataset(store, "train")
    val_ds = CachedDataset(store, "val")
    if len(val_ds) == 0:  # a tiny calibration cache may have no validation rows
        val_ds = train_ds
    return train_stage(
        small, train_ds, val_ds, stage=2, epochs=epochs, lr=lr, target_dims=[int(d) for d in idx], **kw
    )


# --------------------------------------------------------------------------------------------- sweep


@dataclass
class PruneRow:
    """One size of the sweep: masked and (optionally) small-student accuracy per evaluation dataset."""

    k: int
    params: int | None  # of the k-dim student (None when the pruned model is not a student)
    macs: int | None
    masked: dict[str, float] = field(default_factory=dict)
    masked_fold_mean: dict[str, float | None] = field(default_factory=dict)
    small: dict[str, float] | None = None
    small_checkpoint: str | None = None
    finetuned: bool = False
    full: bool = False

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def _unique_labels(specs: Sequence[DatasetSpec]) -> list[str]:
    labels: list[str] = []
    for s in specs:
        lb = s.label()
        n = 2
        while lb in labels:
            lb = f"{s.label()}-{n}"
            n += 1
        labels.append(lb)
    return labels


def _pct(x: float | None) -> str:
    return "" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{100 * x:.2f}"


def save_prune_plot(
    rows: Sequence[PruneRow], datasets: Sequence[str], path: str | os.PathLike, title: str
) -> Path:
    """Accuracy against parameters (of the k-dim student), one line per dataset and product."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7.5, 5), dpi=120)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    use_params = all(r.params is not None for r in rows)
    xs = [(r.params / 1e6 if use_params else r.k) for r in rows]  # type: ignore[operator]
    for j, ds in enumerate(datasets):
        colour = f"C{j}"
        ax.plot(xs, [100 * r.masked[ds] for r in rows], "o--", color=colour, label=f"{ds} masked")
        if any(r.small is not None for r in rows):
            pts = [(x, 100 * r.small[ds]) for x, r in zip(xs, rows) if r.small is not None]
            ax.plot(*zip(*pts), "s-", color=colour, label=f"{ds} small student")
    for x, r in zip(xs, rows):
        ax.annotate(
            str(r.k),
            (x, 100 * r.masked[datasets[0]]),
            textcoords="offset points",
            xytext=(0, 6),
            ha="center",
            fontsize=7,
        )
    ax.set_xlabel("parameters of the k-dim model (M)" if use_params else "latent entries kept (k)")
    ax.set_ylabel("zero-shot accuracy (%)")
    ax.set_title(title, fontsize=10)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    return path


def _write_tables(out: Path, rows: Sequence[PruneRow], labels: Sequence[str]) -> dict[str, Path]:
    from tinyclap._util import atomic_write_text

    any_small = any(r.small is not None for r in rows)
    head = ["k", "params", "macs"] + [f"masked_acc_{d}" for d in labels]
    if any_small:
        head += [f"small_acc_{d}" for d in labels] + ["finetuned"]
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(head)
    md = [
        "| "
        + " | ".join(
            ["k", "params", "MACs"]
            + [f"{d} masked %" for d in labels]
            + ([f"{d} small %" for d in labels] if any_small else [])
        )
        + " |"
    ]
    md.append("|" + "---|" * (3 + len(labels) * (2 if any_small else 1)))
    for r in rows:
        vals = [r.k, "" if r.params is None else r.params, "" if r.macs is None else r.macs]
        vals += [f"{r.masked[d]:.6f}" for d in labels]
        cells = [
            str(r.k) + (" (full)" if r.full else ""),
            "" if r.params is None else f"{r.params:,}",
            "" if r.macs is None else f"{r.macs / 1e6:.1f} M",
        ]
        cells += [_pct(r.masked[d]) for d in labels]
        if any_small:
            vals += [("" if r.small is None else f"{r.small[d]:.6f}") for d in labels] + [int(r.finetuned)]
            cells += [("" if r.small is None else _pct(r.small[d])) for d in labels]
        w.writerow(vals)
        md.append("| " + " | ".join(cells) + " |")
    md.append("")
    md.append(
        "params / MACs: the physically pruned k-dim model (its projection cut to k outputs; for a teacher, "
        "its audio side). The masked model runs the full model and keeps k entries of its output."
    )
    files = {"csv": out / "prune.csv", "md": out / "prune.md"}
    atomic_write_text(files["csv"], buf.getvalue())
    atomic_write_text(files["md"], "\n".join(md) + "\n")
    return files


def run_prune(
    model_spec: str,
    dims: Sequence[int],
    calibration: str | DatasetSpec,
    evals: Sequence[str | DatasetSpec],
    out_dir: str | os.PathLike,
    *,
    criterion: str = "contribution",
    teacher: str | None = None,
    tokenizer: str | None = None,
    calibration_audio: str = "auto",
    templates: Sequence[str] | None = None,
    long_clip: str = "windows",
    embed_cache: str | os.PathLike | None = None,
    no_cache: bool = False,
    seed: int = 0,
    device: str | None = None,
    finetune_epochs: int = 0,
    cache: str | os.PathLike | None = None,
    lr: float = 1e-3,
    finetune_kw: dict[str, Any] | None = None,
    eval_small: bool = False,
    progress: bool = True,
    verbose: bool = True,
) -> dict[str, Any]:
    """Sweep latent sizes `dims`: masked-model accuracy (and small students) on each evaluation dataset.

    Writes prune.json / prune.csv / prune.md / prune.png, `k<k>/dims.json`, sliced class matrices and, for
    a student, `k<k>/student.safetensors` (fine-tuned when `finetune_epochs` > 0, which needs `cache`).
    """
    import tinyclap
    from tinyclap._util import atomic_write_text
    from tinyclap.evaluation.evaluate import _finite, _pick_device
    from tinyclap.models import StudentEmbedder, save_student
    from tinyclap.models.students import count_macs, count_params

    t0 = time.time()
    if criterion not in CRITERIA:
        raise ValueError(f"criterion must be one of {CRITERIA}, got {criterion!r}")
    if calibration_audio not in ("auto", "teacher", "student"):
        raise ValueError(f"calibration audio must be auto, teacher or student, got {calibration_audio!r}")
    if finetune_epochs > 0 and cache is None:
        raise ValueError(
            "fine-tuning the small students needs --cache DIR (teacher targets of the training clips)"
        )
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    dev = _pick_device(device)
    cache_dir = None if no_cache else Path(embed_cache) if embed_cache is not None else default_cache_dir()

    model, fingerprint = load_model_for_eval(model_spec, tokenizer, seed)
    if isinstance(model, nn.Module):
        model.to(dev)
    full = int(model.embed_dim)
    ks = sorted({int(k) for k in dims}, reverse=True)
    bad = [k for k in ks if not 1 <= k <= full]
    if bad:
        raise ValueError(f"dims {bad} are outside 1..{full} ({model_spec} has a {full}-d latent space)")
    if full not in ks:
        ks.insert(0, full)  # the unpruned model is the reference row
    info = describe_model(model, model_spec, fingerprint)
    is_student = info["kind"] == "student"

    text_model, text_source, text_path = resolve_text_model(
        model, model_spec, teacher=teacher, tokenizer=tokenizer
    )
    if int(text_model.embed_dim) != full:
        raise ValueError(f"{text_source} has a {text_model.embed_dim}-d space but {model_spec} has {full}")
    if isinstance(text_model, nn.Module) and text_model is not model:
        text_model.to(dev)
    tpls = read_templates(templates)

    # ---- criterion on the calibration set
    cal_spec = parse_dataset_spec(calibration) if isinstance(calibration, str) else calibration
    cal_ds = load_eval_dataset(
        cal_spec.name, cal_spec.root, folds=cal_spec.folds, subset=cal_spec.subset, limit=cal_spec.limit
    )
    teacher_audio = hasattr(text_model, "embed_waveform")
    use_teacher = calibration_audio == "teacher" or (calibration_audio == "auto" and teacher_audio)
    if use_teacher and not teacher_audio:
        raise ValueError(f"{text_source} has no audio tower for the calibration embeddings")
    cal_model = text_model if use_teacher else model
    cal_id = model_fingerprint(text_path) if (use_teacher and text_path is not None) else None
    if cal_model is model:
        cal_id = fingerprint
    cal = embed_dataset(
        cal_model,
        cal_ds,
        long_clip,
        cache_dir,
        progress=progress and len(cal_ds) > 20,
        model_id=cal_id,
        device=dev,
    )
    if not cal.kept:
        raise ValueError(f"{cal_ds.root}: none of the calibration clips could be read")
    cal_text = build_classifier(cal_ds.classes, text_model=text_model, templates=tpls)
    scores = dim_scores(cal.embeddings, cal_text.weights, criterion)
    np.save(out / "scores.npy", scores.astype(np.float32))

    # ---- full embeddings of each evaluation set, computed once (or read from the cache)
    specs = [parse_dataset_spec(s) if isinstance(s, str) else s for s in evals]
    if not specs:
        raise ValueError("give at least one evaluation dataset")
    labels = _unique_labels(specs)
    ev: list[tuple[Any, Embedded, Any]] = []
    for s in specs:
        ds = load_eval_dataset(s.name, s.root, folds=s.folds, subset=s.subset, limit=s.limit)
        emb = embed_dataset(
            model,
            ds,
            long_clip,
            cache_dir,
            progress=progress and len(ds) > 20,
            model_id=fingerprint,
            device=dev,
        )
        if not emb.kept:
            raise ValueError(f"{ds.root}: none of the clips could be read")
        ev.append((ds, emb, build_classifier(ds.classes, text_model=text_model, templates=tpls)))

    def score_all(embs: Sequence[Any], dims_k: np.ndarray | None) -> tuple[dict, dict]:
        acc, fold_mean = {}, {}
        for lb, (ds, e, clf), x in zip(labels, ev, embs):
            items = [ds.items[i] for i in e.kept]
            c = clf if dims_k is None else clf.select(dims_k)
            r = evaluate(x, [it.label for it in items], c, [it.fold for it in items], list(ds.classes))
            acc[lb], fold_mean[lb] = r.accuracy, r.fold_mean
        return acc, fold_mean

    rows: list[PruneRow] = []
    for k in ks:
        dims_k = select_dims(scores, k)
        kdir = out / f"k{k}"
        kdir.mkdir(exist_ok=True)
        masked_acc, masked_fm = score_all([mask_embeddings(e.embeddings, dims_k) for _, e, _ in ev], dims_k)
        for lb, (_, _, clf) in zip(labels, ev):
            clf.select(dims_k).save(kdir / f"classes-{lb}.npz")
        kept_scores = scores[dims_k]
        atomic_write_text(
            kdir / "dims.json",
            json.dumps(
                {"k": k, "criterion": criterion, "dims": dims_k.tolist(), "scores": kept_scores.tolist()}
            )
            + "\n",
        )
        row = PruneRow(
            k=k, params=None, macs=None, masked=masked_acc, masked_fold_mean=masked_fm, full=k == full
        )
        if is_student:
            small = shrink_student(model.student, dims_k).eval()
            row.params, row.macs = count_params(small), count_macs(small)
            extras = {
                "pruned_from": model_spec,
                "criterion": criterion,
                "dims": dims_k.tolist(),
                "finetuned": False,
            }
            if text_path is not None:
                tok = tokenizer or (recorded_teacher(model_spec) or (None, None))[1]
                extras["teacher"] = {
                    "path": os.path.abspath(text_path),
                    **({"tokenizer": os.path.abspath(tok)} if tok else {}),
                }
            if finetune_epochs > 0 and k < full:
                if verbose:
                    print(f"k={k}: fine-tuning the projection for {finetune_epochs} epoch(s) on {cache}")
                history = finetune_small_student(
                    small,
                    dims_k,
                    cache,
                    epochs=finetune_epochs,
                    lr=lr,
                    teacher=text_model,
                    **{"device": dev, "progress": progress, **(finetune_kw or {})},
                )
                small.eval()
                extras["finetuned"] = True
                row.finetuned = True
                _write_history(kdir / "finetune.json", history)
            ckpt = save_student(small, kdir / "student", **extras)
            row.small_checkpoint = os.fspath(ckpt)
            if row.finetuned or eval_small or k == full:
                emb_small = (
                    [
                        embed_dataset(
                            StudentEmbedder(small).to(dev),
                            ds,
                            long_clip,
                            cache_dir,
                            progress=False,
                            model_id=model_fingerprint(ckpt),
                            device=dev,
                        ).embeddings
                        for ds, _, _ in ev
                    ]
                    if k < full
                    else [e.embeddings for _, e, _ in ev]
                )  # k == full: the same model
                row.small, _ = score_all(emb_small, dims_k)
        else:
            proj = getattr(getattr(model, "audio_encoder", None), "projection", None)
            if info["audio_params"] is not None and proj is not None:
                d_in = proj.linear1.in_features
                row.params = info["audio_params"] - removed_params(full, k, d_in)
                if info["macs"] is not None:  # count_macs counts linear layers as out * in per clip
                    row.macs = info["macs"] - (d_in * (full - k) + full * full - k * k)
        rows.append(row)
        if verbose:
            acc = ", ".join(f"{lb} {_pct(row.masked[lb])}" for lb in labels)
            small_txt = (
                ("; small " + ", ".join(f"{lb} {_pct(row.small[lb])}" for lb in labels)) if row.small else ""
            )
            size = f" ({row.params:,} params)" if row.params is not None else ""
            print(f"k={k}{size}: masked {acc}{small_txt}")

    files = _write_tables(out, rows, labels)
    png = save_prune_plot(rows, labels, out / "prune.png", f"{info['name']}: pruning by {criterion}")
    result = {
        "tinyclap_version": tinyclap.__version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "model": info,
        "text": {"source": text_source, "templates": tpls},
        "criterion": criterion,
        "calibration": {
            "dataset": cal_ds.name,
            "root": os.fspath(cal_ds.root),
            "n_clips": len(cal.kept),
            "n_skipped": len(cal.failed),
            "audio_source": "teacher" if cal_model is not model else "pruned model",
            "note": "contribution = mean over (clip, class) of |a_k t_k| (normalised a, t); variance/energy "
            "over the calibration clips' audio embeddings a",
        },
        "datasets": [
            {
                "label": lb,
                "name": ds.name,
                "root": os.fspath(ds.root),
                "n_clips": len(e.kept),
                "n_skipped": len(e.failed),
                "n_missing": len(ds.missing),
            }
            for lb, (ds, e, _) in zip(labels, ev)
        ],
        "protocol": protocol_block(ev[0][0], tpls, long_clip, 5.0, int(model.sample_rate)),
        "finetune": {
            "epochs": finetune_epochs,
            "cache": None if cache is None else os.fspath(cache),
            "lr": lr,
        },
        "rows": [r.to_dict() for r in rows],
        "files": {"csv": os.fspath(files["csv"]), "md": os.fspath(files["md"]), "png": os.fspath(png)},
        "elapsed_s": round(time.time() - t0, 3),
    }
    atomic_write_text(out / "prune.json", json.dumps(_finite(result), indent=2) + "\n")
    if verbose:
        print(f"table: {files['md']}  plot: {png}")
    return result


def _write_history(path: Path, history: Any) -> None:
    import dataclasses

    from tinyclap._util import atomic_write_text
    from tinyclap.evaluation.evaluate import _finite

    if dataclasses.is_dataclass(history) and not isinstance(history, type):
        history = dataclasses.asdict(history)
    try:
        text = json.dumps(_finite(history), indent=2, default=float)
    except (TypeError, ValueError):
        text = json.dumps({"history": repr(history)})
    atomic_write_text(path, text + "\n")
