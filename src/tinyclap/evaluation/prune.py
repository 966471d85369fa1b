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

import dataclasses
import json
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from tinyclap._util import atomic_write_text, l2_normalize, resolve_device
from tinyclap.data.spec import DatasetSpec, load_eval_dataset, parse_dataset_spec
from tinyclap.evaluation.embedding import Embedded, embed_dataset
from tinyclap.evaluation.metrics import evaluate, write_json
from tinyclap.evaluation.prune_report import PruneRow, format_pct, save_prune_plot, write_prune_tables
from tinyclap.evaluation.run import (
    build_classifier,
    embed_cache_dir,
    protocol_block,
    read_templates,
    resolve_text_model,
)
from tinyclap.models import StudentEmbedder, save_student
from tinyclap.models.fingerprint import describe_model, load_model_for_eval, model_fingerprint, recorded_teacher
from tinyclap.models.students import count_macs, count_params
from tinyclap.zeroshot import DEFAULT_TEMPLATE, ZeroShotClassifier

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
    a = l2_normalize(a)  # (n, D)
    if criterion == "variance":
        return a.var(axis=0)
    if criterion == "energy":
        return (a**2).mean(axis=0)
    if text_emb is None:
        raise ValueError("the contribution criterion needs the class text embeddings")
    t = _np(text_emb)
    if t.ndim != 2 or t.shape[1] != a.shape[1]:
        raise ValueError(f"text embeddings {t.shape} do not match audio embeddings {a.shape}")
    t = l2_normalize(t)  # (C, D)
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
    return l2_normalize(np.asarray(emb, dtype=np.float64)[:, idx]).astype(np.float32)


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
    from tinyclap._util import state_sha256
    from tinyclap.train.cache import CachedDataset, CacheStore
    from tinyclap.train.loop import train_stage

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


def _write_history(path: Path, history: Any) -> None:
    """A fine-tuning history (train_stage's result) as JSON; its repr when it does not serialise."""
    if dataclasses.is_dataclass(history) and not isinstance(history, type):
        history = dataclasses.asdict(history)
    try:
        write_json(path, history, default=float)
    except (TypeError, ValueError):
        atomic_write_text(path, json.dumps({"history": repr(history)}) + "\n")


# --------------------------------------------------------------------------------------------- sweep


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


@dataclass
class _EvalSet:
    """One evaluation dataset of the sweep: its label, clips, full-model embeddings and class matrix."""

    label: str
    dataset: Any
    emb: Embedded
    clf: ZeroShotClassifier


@dataclass
class _Sweep:
    """What every step of `run_prune` shares: the run's options, the model and its text side."""

    model_spec: str
    out: Path
    criterion: str
    long_clip: str
    cache_dir: Path | None
    dev: torch.device
    progress: bool
    verbose: bool
    tokenizer: str | None
    model: Any = None
    fingerprint: str = ""
    info: dict[str, Any] = field(default_factory=dict)
    text_model: Any = None
    text_source: str = ""
    text_path: str | None = None
    templates: list[str] = field(default_factory=list)
    evals: list[_EvalSet] = field(default_factory=list)

    @property
    def full(self) -> int:
        return int(self.model.embed_dim)

    def embed(self, model: Any, dataset: Any, model_id: str | None, progress: bool | None = None) -> Embedded:
        """`embed_dataset` with the sweep's long-clip mode, cache and device."""
        show = self.progress and len(dataset) > 20 if progress is None else progress
        return embed_dataset(model, dataset, self.long_clip, self.cache_dir, progress=show, model_id=model_id,
                             device=self.dev)  # fmt: skip


def _sizes(dims: Sequence[int], full: int, model_spec: str) -> list[int]:
    """The latent sizes of the sweep, largest first, starting with the unpruned `full` (the reference row)."""
    ks = sorted({int(k) for k in dims}, reverse=True)
    bad = [k for k in ks if not 1 <= k <= full]
    if bad:
        raise ValueError(f"dims {bad} are outside 1..{full} ({model_spec} has a {full}-d latent space)")
    return ks if full in ks else [full, *ks]


def _load_models(sw: _Sweep, seed: int, teacher: str | None, templates: Sequence[str] | None) -> None:
    """The pruned model (on the device) and the text model that encodes the class prompts."""
    sw.model, sw.fingerprint = load_model_for_eval(sw.model_spec, sw.tokenizer, seed)
    if isinstance(sw.model, nn.Module):
        sw.model.to(sw.dev)
    sw.info = describe_model(sw.model, sw.model_spec, sw.fingerprint)
    sw.text_model, sw.text_source, sw.text_path = resolve_text_model(
        sw.model, sw.model_spec, teacher=teacher, tokenizer=sw.tokenizer
    )
    if int(sw.text_model.embed_dim) != sw.full:
        raise ValueError(f"{sw.text_source} has a {sw.text_model.embed_dim}-d space but {sw.model_spec} has {sw.full}")
    if isinstance(sw.text_model, nn.Module) and sw.text_model is not sw.model:
        sw.text_model.to(sw.dev)
    sw.templates = read_templates(templates, getattr(sw.text_model, "template", DEFAULT_TEMPLATE))  # its style


def _calibrate(sw: _Sweep, calibration: str | DatasetSpec, audio: str) -> tuple[np.ndarray, dict[str, Any]]:
    """(scores (D,) of the latent entries on the calibration set, the report's calibration block)."""
    spec = parse_dataset_spec(calibration) if isinstance(calibration, str) else calibration
    ds = load_eval_dataset(spec.name, spec.root, folds=spec.folds, subset=spec.subset, limit=spec.limit)
    teacher_audio = hasattr(sw.text_model, "embed_waveform")
    use_teacher = audio == "teacher" or (audio == "auto" and teacher_audio)
    if use_teacher and not teacher_audio:
        raise ValueError(f"{sw.text_source} has no audio tower for the calibration embeddings")
    cal_model = sw.text_model if use_teacher else sw.model
    cal_id = model_fingerprint(sw.text_path) if (use_teacher and sw.text_path is not None) else None
    if cal_model is sw.model:
        cal_id = sw.fingerprint
    cal = sw.embed(cal_model, ds, cal_id)
    if not cal.kept:
        raise ValueError(f"{ds.root}: none of the calibration clips could be read")
    cal_text = build_classifier(ds.classes, text_model=sw.text_model, templates=sw.templates)
    block = {
        "dataset": ds.name,
        "root": os.fspath(ds.root),
        "n_clips": len(cal.kept),
        "n_skipped": len(cal.failed),
        "audio_source": "teacher" if cal_model is not sw.model else "pruned model",
        "note": "contribution = mean over (clip, class) of |a_k t_k| (normalised a, t); variance/energy "
        "over the calibration clips' audio embeddings a",
    }
    return dim_scores(cal.embeddings, cal_text.weights, sw.criterion), block


def _embed_evals(sw: _Sweep, evals: Sequence[str | DatasetSpec]) -> None:
    """Full-model embeddings of each evaluation set, computed once (or read from the cache)."""
    specs = [parse_dataset_spec(s) if isinstance(s, str) else s for s in evals]
    if not specs:
        raise ValueError("give at least one evaluation dataset")
    for label, s in zip(_unique_labels(specs), specs):
        ds = load_eval_dataset(s.name, s.root, folds=s.folds, subset=s.subset, limit=s.limit)
        emb = sw.embed(sw.model, ds, sw.fingerprint)
        if not emb.kept:
            raise ValueError(f"{ds.root}: none of the clips could be read")
        clf = build_classifier(ds.classes, text_model=sw.text_model, templates=sw.templates)
        sw.evals.append(_EvalSet(label, ds, emb, clf))


def _score(sw: _Sweep, embs: Sequence[Any], dims_k: np.ndarray | None) -> tuple[dict, dict]:
    """(accuracy, fold mean) per evaluation set of embeddings `embs`, class matrices sliced to `dims_k`."""
    acc, fold_mean = {}, {}
    for es, x in zip(sw.evals, embs):
        items = [es.dataset.items[i] for i in es.emb.kept]
        clf = es.clf if dims_k is None else es.clf.select(dims_k)
        r = evaluate(x, [it.label for it in items], clf, [it.fold for it in items], list(es.dataset.classes))
        acc[es.label], fold_mean[es.label] = r.accuracy, r.fold_mean
    return acc, fold_mean


@dataclass(frozen=True)
class _Finetune:
    """How the small students are fine-tuned (epochs 0: not at all) and whether unfine-tuned ones are scored."""

    epochs: int
    cache: str | os.PathLike | None
    lr: float
    kw: dict[str, Any]
    eval_small: bool


def _masked_row(sw: _Sweep, k: int, dims_k: np.ndarray, scores: np.ndarray, kdir: Path) -> PruneRow:
    """Accuracy of the masked model at size k (cached embeddings sliced); writes dims.json and class matrices."""
    masked_acc, masked_fm = _score(sw, [mask_embeddings(es.emb.embeddings, dims_k) for es in sw.evals], dims_k)
    for es in sw.evals:
        es.clf.select(dims_k).save(kdir / f"classes-{es.label}.npz")
    dims_doc = {"k": k, "criterion": sw.criterion, "dims": dims_k.tolist(), "scores": scores[dims_k].tolist()}
    atomic_write_text(kdir / "dims.json", json.dumps(dims_doc) + "\n")
    return PruneRow(k=k, params=None, macs=None, masked=masked_acc, masked_fold_mean=masked_fm, full=k == sw.full)


def _small_extras(sw: _Sweep, dims_k: np.ndarray) -> dict[str, Any]:
    """The config a small student records: where it came from and its teacher (for its own evaluation)."""
    extras: dict[str, Any] = {
        "pruned_from": sw.model_spec, "criterion": sw.criterion, "dims": dims_k.tolist(), "finetuned": False,
    }  # fmt: skip
    if sw.text_path is not None:
        tok = sw.tokenizer or (recorded_teacher(sw.model_spec) or (None, None))[1]
        extras["teacher"] = {
            "path": os.path.abspath(sw.text_path),
            **({"tokenizer": os.path.abspath(tok)} if tok else {}),
        }
    return extras


def _small_student(sw: _Sweep, row: PruneRow, dims_k: np.ndarray, kdir: Path, ft: _Finetune) -> None:
    """The physically smaller k-dim student: shrunk, optionally fine-tuned, saved and (optionally) scored."""
    k = row.k
    small = shrink_student(sw.model.student, dims_k).eval()
    row.params, row.macs = count_params(small), count_macs(small)
    extras = _small_extras(sw, dims_k)
    if ft.epochs > 0 and k < sw.full:
        if sw.verbose:
            print(f"k={k}: fine-tuning the projection for {ft.epochs} epoch(s) on {ft.cache}")
        assert ft.cache is not None  # checked by run_prune
        kw = {"device": sw.dev, "progress": sw.progress, **ft.kw}
        history = finetune_small_student(small, dims_k, ft.cache, epochs=ft.epochs, lr=ft.lr, teacher=sw.text_model,
                                         **kw)  # fmt: skip
        small.eval()
        extras["finetuned"] = row.finetuned = True
        _write_history(kdir / "finetune.json", history)
    ckpt = save_student(small, kdir / "student", **extras)
    row.small_checkpoint = os.fspath(ckpt)
    if not (row.finetuned or ft.eval_small or k == sw.full):
        return
    if k == sw.full:  # the same model as the full one
        embs = [es.emb.embeddings for es in sw.evals]
    else:
        embedder = StudentEmbedder(small).to(sw.dev)
        embs = [sw.embed(embedder, es.dataset, model_fingerprint(ckpt), progress=False).embeddings for es in sw.evals]
    row.small, _ = _score(sw, embs, dims_k)


def _audio_side_size(sw: _Sweep, row: PruneRow) -> None:
    """For a teacher: parameters and MACs of its audio side with the projection cut to k outputs."""
    full, k = sw.full, row.k
    proj = getattr(getattr(sw.model, "audio_encoder", None), "projection", None)
    if sw.info["audio_params"] is None or proj is None:
        return
    d_in = proj.linear1.in_features
    row.params = sw.info["audio_params"] - removed_params(full, k, d_in)
    if sw.info["macs"] is not None:  # count_macs counts linear layers as out * in per clip
        row.macs = sw.info["macs"] - (d_in * (full - k) + full * full - k * k)


def _print_row(sw: _Sweep, row: PruneRow) -> None:
    labels = [es.label for es in sw.evals]
    acc = ", ".join(f"{lb} {format_pct(row.masked[lb])}" for lb in labels)
    small = ("; small " + ", ".join(f"{lb} {format_pct(row.small[lb])}" for lb in labels)) if row.small else ""
    size = f" ({row.params:,} params)" if row.params is not None else ""
    print(f"k={row.k}{size}: masked {acc}{small}")


def _sweep_rows(sw: _Sweep, ks: Sequence[int], scores: np.ndarray, ft: _Finetune) -> list[PruneRow]:
    """One row per size k: the masked model, and for a student the physically smaller one."""
    rows: list[PruneRow] = []
    for k in ks:  # few sizes, each reported by a line when verbose (fine-tuning shows its own progress)
        dims_k = select_dims(scores, k)
        kdir = sw.out / f"k{k}"
        kdir.mkdir(exist_ok=True)
        row = _masked_row(sw, k, dims_k, scores, kdir)
        if sw.info["kind"] == "student":
            _small_student(sw, row, dims_k, kdir, ft)
        else:
            _audio_side_size(sw, row)
        rows.append(row)
        if sw.verbose:
            _print_row(sw, row)
    return rows


def _check_prune_args(criterion: str, calibration_audio: str, finetune_epochs: int, cache: Any) -> None:
    if criterion not in CRITERIA:
        raise ValueError(f"criterion must be one of {CRITERIA}, got {criterion!r}")
    if calibration_audio not in ("auto", "teacher", "student"):
        raise ValueError(f"calibration audio must be auto, teacher or student, got {calibration_audio!r}")
    if finetune_epochs > 0 and cache is None:
        raise ValueError("fine-tuning the small students needs --cache DIR (teacher targets of the training clips)")


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
    The output folder is created only once the models and datasets have loaded.
    """
    t0 = time.time()
    _check_prune_args(criterion, calibration_audio, finetune_epochs, cache)
    sw = _Sweep(model_spec, Path(out_dir), criterion, long_clip, embed_cache_dir(embed_cache, no_cache),
                resolve_device(device), progress, verbose, tokenizer)  # fmt: skip
    _load_models(sw, seed, teacher, templates)
    ks = _sizes(dims, sw.full, model_spec)
    scores, cal_block = _calibrate(sw, calibration, calibration_audio)
    _embed_evals(sw, evals)

    sw.out.mkdir(parents=True, exist_ok=True)
    np.save(sw.out / "scores.npy", scores.astype(np.float32))
    ft = _Finetune(finetune_epochs, cache, lr, dict(finetune_kw or {}), eval_small)
    rows = _sweep_rows(sw, ks, scores, ft)
    labels = [es.label for es in sw.evals]
    files = write_prune_tables(sw.out, rows, labels)
    png = save_prune_plot(rows, labels, sw.out / "prune.png", f"{sw.info['name']}: pruning by {criterion}")
    result = _prune_report(sw, rows, cal_block, ft, t0)
    result["files"] = {"csv": os.fspath(files["csv"]), "md": os.fspath(files["md"]), "png": os.fspath(png)}
    result["elapsed_s"] = round(time.time() - t0, 3)
    write_json(sw.out / "prune.json", result)
    if verbose:
        print(f"table: {files['md']}  plot: {png}")
    return result


def _prune_report(sw: _Sweep, rows: Sequence[PruneRow], cal_block: dict, ft: _Finetune, t0: float) -> dict[str, Any]:
    """prune.json without its `files` and `elapsed_s` (added by run_prune once they exist)."""
    import tinyclap

    return {
        "tinyclap_version": tinyclap.__version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "model": sw.info,
        "text": {"source": sw.text_source, "templates": sw.templates},
        "criterion": sw.criterion,
        "calibration": cal_block,
        "datasets": [
            {
                "label": es.label,
                "name": es.dataset.name,
                "root": os.fspath(es.dataset.root),
                "n_clips": len(es.emb.kept),
                "n_skipped": len(es.emb.failed),
                "n_missing": len(es.dataset.missing),
            }
            for es in sw.evals
        ],
        "protocol": protocol_block(sw.evals[0].dataset, sw.templates, sw.long_clip, 5.0, int(sw.model.sample_rate)),
        "finetune": {"epochs": ft.epochs, "cache": None if ft.cache is None else os.fspath(ft.cache), "lr": ft.lr},
        "rows": [r.to_dict() for r in rows],
    }
