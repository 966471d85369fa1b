"""Real-recording proof: distil PhiNet students from a proxy teacher on UrbanSound8K, measure retention.

Stages (each reused when its output exists under `--out`, so a killed run resumes):

1. proxy teacher (`tinyclap.train.proxy.build_proxy`) on UrbanSound8K folds 1-2 (labelled, seeded);
2. teacher-target cache (`tinyclap.train.cache.build_cache`) on the AUDIO ONLY of all of UrbanSound8K (folds 1-3)
   and animals-cc0: fold 3's audio is used for distillation without its labels (the paper's unlabelled
   setting), although fold 3 was held out from the teacher's projection training;
3. two-stage distillation of each student on the cache (`tinyclap.train.distill.distill`), on shorter random
   training crops (`train_crop_seconds`) to fit a CPU budget;
4. evaluation on fold 3 (zero-shot, `tinyclap.evaluation.run`): accuracy, retention, top-1 agreement and mean
   cosine to the teacher, and text-free k-NN accuracy with folds 1-2 as the reference set, plus an untrained
   student as a baseline row;
5. the latent pruning sweep (`tinyclap.evaluation.prune.run_prune`, masked models) of one student;
6. `summary.json` (+ a Markdown table printed, `--json` prints the JSON).

    python bench/real_retention.py --out runs/real            # the full CPU run (~1 h on 2 cores)
    python bench/real_retention.py --out runs/real-q --quick  # the CI-sized version (~1 min)
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data"
STUDENTS = (
    "phinet_alpha_1.50_beta_0.75_t0_6_N_7",
    "phinet_alpha_0.75_beta_0.75_t0_4_N_4",
    "phinet_alpha_3.00_beta_0.75_t0_4_N_7",
)
PRUNE_DIMS = (768, 512, 256, 128, 64, 32)


@dataclass
class StudentPlan:
    """How one student is distilled: name, epochs per stage, training-crop length (s)."""

    name: str
    epochs1: int
    epochs2: int
    crop_seconds: float | None = 2.5
    tag: str | None = None  # a second run of the same architecture: students/<name>-<tag>

    @property
    def label(self) -> str:
        return self.name if self.tag is None else f"{self.name}-{self.tag}"


@dataclass
class Options:
    out: str = "runs/real"
    us8k: str = str(DATA / "UrbanSound8K")
    animals: str | None = str(DATA / "animals-cc0")
    teacher_folds: tuple[int, ...] = (1, 2)
    eval_folds: tuple[int, ...] = (3,)
    teacher_epochs: int = 20
    teacher_max_per_class: int | None = None  # quick runs: the first N clips per class of the teacher folds
    cache_max_per_class: int | None = None  # quick runs: clips per class of every fold for the cache
    eval_max_per_class: int | None = None  # quick runs: clips per class of the evaluation folds
    # k-NN reference set: an evenly spread subset of the teacher folds (tinyclap.data.spec.limit_dataset);
    # it is also the pruning calibration set, so its student embeddings are computed once
    ref_limit: int | None = 400
    students: list[StudentPlan] = field(
        default_factory=lambda: [
            StudentPlan(STUDENTS[0], 2, 1),
            StudentPlan(STUDENTS[1], 4, 1),
            StudentPlan(STUDENTS[2], 1, 1, 2.0),
        ]
    )
    untrained: str = STUDENTS[1]  # the random-init baseline row
    prune_student: str | None = STUDENTS[0]
    prune_dims: tuple[int, ...] = PRUNE_DIMS
    batch_size: int = 16
    lr1: float = 3e-3
    lr2: float = 1e-3
    val_fraction: float = 0.1
    knn_k: tuple[int, ...] = (1, 5)
    check_clips: int = 24  # clips embedded by the evaluation code path to check the cache-target reuse
    seed: int = 0
    threads: int = 2  # torch CPU threads (set by main(), not by run())
    device: str = "auto"  # training, cache and student evaluation ("auto": CUDA when available)
    progress: bool = False


def quick_options(out: str) -> Options:
    """The CI version: 4 clips per class for teacher and cache, one small student, a fold-3 subset."""
    return Options(
        out=out,
        animals=None,
        teacher_epochs=20,
        teacher_max_per_class=3,
        cache_max_per_class=3,
        eval_max_per_class=2,
        check_clips=6,
        students=[StudentPlan(STUDENTS[1], 6, 1, 2.0)],
        prune_student=None,
        ref_limit=None,
        val_fraction=0.25,
        knn_k=(1, 3),
    )


# --------------------------------------------------------------------------------------------- helpers


def _device(opt: Options) -> str:
    if opt.device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return opt.device


def _log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def per_class(dataset: Any, n: int | None) -> Any:
    """The first `n` items of each class (CSV order): a deterministic class-balanced subset."""
    from dataclasses import replace

    if n is None:
        return dataset
    seen: dict[int, int] = {}
    keep = []
    for it in dataset.items:
        seen[it.label] = seen.get(it.label, 0) + 1
        if seen[it.label] <= n:
            keep.append(it)
    return replace(dataset, items=keep)


def knn_accuracy(
    ref: np.ndarray, ref_y: np.ndarray, query: np.ndarray, query_y: np.ndarray, k: int
) -> float:
    """Cosine k-NN accuracy: each query takes the majority label of its k nearest reference rows.

    ref (R, D), query (Q, D) (normalised here). Ties between labels go to the one with the larger summed
    similarity. Uses no text: it measures how well the embedding space separates the classes.
    """
    r = ref / np.maximum(np.linalg.norm(ref, axis=1, keepdims=True), 1e-12)
    q = query / np.maximum(np.linalg.norm(query, axis=1, keepdims=True), 1e-12)
    sims = q @ r.T  # (Q, R)
    k = min(k, r.shape[0])
    nn_idx = np.argsort(-sims, axis=1)[:, :k]  # (Q, k)
    n_cls = int(max(ref_y.max(), query_y.max())) + 1
    votes = np.zeros((q.shape[0], n_cls))
    weight = np.zeros((q.shape[0], n_cls))
    rows = np.arange(q.shape[0])[:, None]
    np.add.at(votes, (rows, ref_y[nn_idx]), 1.0)
    np.add.at(weight, (rows, ref_y[nn_idx]), sims[rows, nn_idx])
    pred = np.argmax(votes + 1e-6 * weight, axis=1)  # (Q,)
    return float((pred == query_y).mean())


def _mean_cosine(a: np.ndarray, b: np.ndarray) -> float:
    a = a / np.maximum(np.linalg.norm(a, axis=1, keepdims=True), 1e-12)
    b = b / np.maximum(np.linalg.norm(b, axis=1, keepdims=True), 1e-12)
    return float((a * b).sum(axis=1).mean())


def _write_json(path: Path, obj: Any) -> None:
    from tinyclap._util import atomic_write_text

    atomic_write_text(path, json.dumps(obj, indent=2, default=str) + "\n")


# ---------------------------------------------------------------------------------------------- stages


def build_teacher(opt: Options, out: Path) -> Path:
    """Stage 1: the proxy teacher on the teacher folds; returns its checkpoint path (reused if present)."""
    from tinyclap.train.proxy import build_proxy

    path = out / "teacher" / "proxy_teacher.safetensors"
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        build_proxy(
            opt.us8k, opt.teacher_folds, seed=opt.seed, epochs=opt.teacher_epochs, out=path,
            max_clips_per_class=opt.teacher_max_per_class, progress=opt.progress,
        )  # fmt: skip
    return path


def cache_sources(opt: Options, out: Path) -> list[str]:
    """Data specs of the distillation audio: all of US8K (+ animals-cc0); a manifest in quick runs."""
    from tinyclap.data.spec import load_eval_dataset

    if opt.cache_max_per_class is None:
        specs = [f"us8k:{opt.us8k}"]
    else:  # quick: the first clips per class of the teacher folds + the evaluation clips (audio only)
        train = per_class(load_eval_dataset("us8k", opt.us8k, folds=opt.teacher_folds), opt.cache_max_per_class)
        ev = per_class(load_eval_dataset("us8k", opt.us8k, folds=opt.eval_folds), opt.eval_max_per_class)
        paths = dict.fromkeys(str(it.path) for it in [*train.items, *ev.items])
        manifest = out / "cache_manifest.csv"
        manifest.parent.mkdir(parents=True, exist_ok=True)
        manifest.write_text("path\n" + "".join(f"{p}\n" for p in paths))
        specs = [f"manifest:{manifest}"]
    if opt.animals:
        specs.append(f"folder:{opt.animals}")
    return specs


def build_targets(opt: Options, out: Path, teacher: Any) -> Path:
    """Stage 2: the teacher-target cache (audio only, 5 s crops; reused when complete)."""
    from tinyclap.train.cache import build_cache

    cache_dir = out / "cache"
    if not (cache_dir / "report.json").is_file():
        rep = build_cache(
            teacher, cache_sources(opt, out), cache_dir, val_fraction=opt.val_fraction, seed=1234,
            batch_size=16, workers=1, device=_device(opt), progress=opt.progress, overwrite=True,
        )  # fmt: skip
        _log(rep.summary())
    return cache_dir


def train_student(opt: Options, out: Path, cache_dir: Path, plan: StudentPlan) -> tuple[Path, dict]:
    """Stage 3: distil one student (both stages); reused when `student.safetensors` exists."""
    from tinyclap.train.distill import DistillConfig, distill

    run_dir = out / "students" / plan.label
    t0 = time.time()
    if not (run_dir / "student.safetensors").is_file():
        res = distill(DistillConfig(
            out=str(run_dir), student=plan.name, cache=str(cache_dir), epochs1=plan.epochs1,
            epochs2=plan.epochs2, lr1=opt.lr1, lr2=opt.lr2, batch_size=opt.batch_size, seed=1234,
            workers=0, ckpt_every=0, device=_device(opt), progress=opt.progress, tensorboard=False,
            train_crop_seconds=plan.crop_seconds, resume=run_dir.is_dir(),
        ))  # fmt: skip
        info = {"val_cosine": res.val_cosine, "train_s": round(time.time() - t0, 1),
                "stages": {s: {"best_val_cosine": r.best_val_cosine, "best_epoch": r.best_epoch,
                               "elapsed_s": round(r.elapsed_s, 1)} for s, r in res.stages.items()}}
        _write_json(run_dir / "train_summary.json", info)
    info = json.loads((run_dir / "train_summary.json").read_text())
    return run_dir, info


@dataclass
class Embeds:
    """One model's normalised embeddings of the reference (folds 1-2) and evaluation (fold 3) clips."""

    ref: np.ndarray  # (R, D)
    ev: np.ndarray  # (Q, D)
    seconds: float = 0.0


def teacher_from_cache(cache_dir: Path, datasets: Sequence[Any]) -> list[np.ndarray] | None:
    """The teacher's protocol embeddings read from the cache targets, or None if a clip is missing there.

    Valid because every US8K clip is <= 4 s: the cache holds one crop per clip, zero-padded to 5 s, which
    is exactly the evaluation protocol's single window (checked by `check_teacher_reuse`).
    """
    from tinyclap.train.cache import CacheStore

    store = CacheStore(cache_dir)
    row_of: dict[str, int] = {}
    for i, it in enumerate(store.items):
        if it["crop"] == 0:
            row_of[os.path.abspath(it["path"])] = i
    out = []
    for ds in datasets:
        rows = [row_of.get(os.path.abspath(it.path)) for it in ds.items]
        if any(r is None for r in rows):
            return None
        out.append(np.stack([store.target(r) for r in rows]).astype(np.float32))
    return out


def check_teacher_reuse(teacher: Any, dataset: Any, cached: np.ndarray, n: int = 24) -> dict[str, float]:
    """Embed `n` clips with the evaluation code path and compare them to the cache targets."""
    from dataclasses import replace

    from tinyclap.evaluation.embedding import embed_dataset

    step = max(1, len(dataset.items) // n)
    idx = list(range(0, len(dataset.items), step))[:n]
    sub = replace(dataset, items=[dataset.items[i] for i in idx])
    emb = embed_dataset(teacher, sub, "windows", None, progress=False).embeddings.numpy()  # (n, D)
    cos = (emb * cached[idx]).sum(axis=1) / (
        np.linalg.norm(emb, axis=1) * np.linalg.norm(cached[idx], axis=1)
    )
    return {"clips": len(idx), "min_cosine": float(cos.min()), "mean_cosine": float(cos.mean())}


def embed_model(
    spec: str, datasets: Sequence[Any], cache_dir: Path, seed: int = 0, device: str = "cpu"
) -> list[np.ndarray]:
    """A model's protocol embeddings (evaluation.embedding.embed_dataset, cached by weights) of each dataset."""
    from tinyclap.evaluation.embedding import embed_dataset
    from tinyclap.models.fingerprint import load_model_for_eval

    model, fp = load_model_for_eval(spec, None, seed)
    if isinstance(model, torch.nn.Module):
        model.to(device)
    return [
        embed_dataset(model, ds, "windows", cache_dir, progress=False, model_id=fp).embeddings.numpy()
        for ds in datasets
    ]


def model_row(
    name: str, kind: str, emb: Embeds, teacher: Embeds, ref_y: np.ndarray, ev_y: np.ndarray, clf: Any,
    ks: Sequence[int], params: int | None, macs: int | None,
) -> dict[str, Any]:
    """Zero-shot accuracy, agreement and cosine to the teacher, and k-NN accuracies of one model."""
    from tinyclap.evaluation.metrics import evaluate

    rep = evaluate(emb.ev, ev_y, clf)
    t_rep = evaluate(teacher.ev, ev_y, clf)
    row = {
        "model": name,
        "kind": kind,
        "params": params,
        "macs": macs,
        "zero_shot_acc": rep.accuracy,
        "retention": rep.accuracy / t_rep.accuracy if t_rep.accuracy else float("nan"),
        "top1_agreement": float((rep.predictions == t_rep.predictions).mean()),
        "cosine_to_teacher": _mean_cosine(emb.ev, teacher.ev),
        "embed_s": round(emb.seconds, 1),
    }
    t_knn = {k: knn_accuracy(teacher.ref, ref_y, teacher.ev, ev_y, k) for k in ks}
    for k in ks:
        acc = knn_accuracy(emb.ref, ref_y, emb.ev, ev_y, k)
        row[f"knn{k}_acc"] = acc
        row[f"knn{k}_retention"] = acc / t_knn[k] if t_knn[k] else float("nan")
    return row


def _teacher_audio_params(teacher: Any) -> int:
    parts = (teacher.audio_tower, teacher.head.audio_projection)
    return sum(p.numel() for m in parts for p in m.parameters())


def _teacher_macs(teacher: Any, seconds: float = 5.0) -> int | None:
    """MACs of the teacher's audio path for one 5 s clip (conv + linear layers, via forward hooks)."""
    total = 0

    def hook(mod: torch.nn.Module, inp: Any, outp: torch.Tensor) -> None:
        nonlocal total
        if isinstance(mod, torch.nn.Conv2d):
            k = mod.kernel_size[0] * mod.kernel_size[1] * mod.in_channels // mod.groups
            total += int(outp.numel() * k)
        elif isinstance(mod, torch.nn.Linear):
            total += int(outp.numel() * mod.in_features)

    mods = [m for m in teacher.audio_tower.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))]
    mods += [m for m in teacher.head.audio_projection.modules() if isinstance(m, torch.nn.Linear)]
    handles = [m.register_forward_hook(hook) for m in mods]
    try:
        with torch.no_grad():
            teacher.embed_waveform(torch.zeros(1, int(seconds * teacher.sample_rate)))
    finally:
        for h in handles:
            h.remove()
    return total


# ----------------------------------------------------------------------------------------------- run


def run(opt: Options, log: Callable[[str], None] = _log) -> dict[str, Any]:
    """Every stage; returns (and writes to `<out>/summary.json`) the measured numbers."""
    from tinyclap.data.spec import load_eval_dataset
    from tinyclap.evaluation.run import build_classifier, read_templates
    from tinyclap.models.proxy import load_proxy_teacher
    from tinyclap.models.students import count_macs, count_params, create_student

    t_start = time.time()
    out = Path(opt.out)
    out.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}
    prev = {}
    if (out / "timings.json").is_file():  # a resumed run keeps the stage times it measured before
        prev = json.loads((out / "timings.json").read_text())

    def timed(name: str, fn: Callable[[], Any]) -> Any:
        t0 = time.time()
        log(f"stage: {name}")
        res = fn()
        took = round(time.time() - t0, 1)
        timings[name] = max(took, prev.get(name, 0.0)) if took < 5 else took  # 5 s: reused, keep old time
        _write_json(out / "timings.json", {**prev, **timings})
        log(f"stage: {name} done in {took:.0f} s")
        return res

    teacher_path = timed("teacher", lambda: build_teacher(opt, out))
    teacher = load_proxy_teacher(teacher_path)
    cache_dir = timed("cache", lambda: build_targets(opt, out, teacher))

    ref_ds = per_class(
        load_eval_dataset("us8k", opt.us8k, folds=opt.teacher_folds, limit=opt.ref_limit), opt.eval_max_per_class
    )
    ev_ds = per_class(load_eval_dataset("us8k", opt.us8k, folds=opt.eval_folds), opt.eval_max_per_class)
    ref_y = np.array([it.label for it in ref_ds.items])
    ev_y = np.array([it.label for it in ev_ds.items])
    clf = build_classifier(list(ev_ds.classes), text_model=teacher, templates=read_templates(None))
    emb_dir = out / "embeddings"

    def teacher_embeds() -> tuple[Embeds, dict[str, Any]]:
        t0 = time.time()
        reuse = teacher_from_cache(cache_dir, [ref_ds, ev_ds])
        check: dict[str, Any] = {"reused_cache_targets": False}
        if reuse is not None:
            check.update(check_teacher_reuse(teacher, ev_ds, reuse[1], opt.check_clips))
            check["reused_cache_targets"] = check["min_cosine"] > 0.999
        if not check["reused_cache_targets"]:
            reuse = embed_model(str(teacher_path), [ref_ds, ev_ds], emb_dir)
        return Embeds(reuse[0], reuse[1], time.time() - t0), check

    t_emb, reuse_check = timed("eval: teacher", teacher_embeds)
    log(f"teacher embeddings: {reuse_check}")
    ks = opt.knn_k
    rows = [model_row(
        "proxy teacher (aiSFX + trained projection)", "teacher", t_emb, t_emb, ref_y, ev_y, clf, ks,
        _teacher_audio_params(teacher), _teacher_macs(teacher),
    )]  # fmt: skip

    def student_row(spec: str, name: str, kind: str, extra: dict[str, Any]) -> dict[str, Any]:
        t0 = time.time()
        ref, ev = embed_model(spec, [ref_ds, ev_ds], emb_dir, seed=opt.seed, device=_device(opt))
        s = create_student(name)
        row = model_row(name, kind, Embeds(ref, ev, time.time() - t0), t_emb, ref_y, ev_y, clf, ks,
                        count_params(s), count_macs(s, 690))
        return {**row, **extra}

    rows.append(timed(f"eval: untrained {opt.untrained}",
                      lambda: student_row(opt.untrained, opt.untrained, "untrained (random init)", {})))
    trained: dict[str, Path] = {}
    for plan in opt.students:
        run_dir, info = timed(f"distill: {plan.label}", lambda p=plan: train_student(opt, out, cache_dir, p))
        trained[plan.name] = run_dir  # pruning: the last (with --extra-student: the longest) run
        extra = {"val_cosine": info["val_cosine"], "train_s": info["train_s"], "epochs1": plan.epochs1,
                 "epochs2": plan.epochs2, "crop_seconds": plan.crop_seconds, "run": plan.label}
        rows.append(timed(f"eval: {plan.label}",
                          lambda p=plan, r=run_dir, e=extra: student_row(str(r), p.name, "distilled", e)))
        _write_json(out / "rows.json", rows)

    prune_rows = None
    if opt.prune_student and opt.prune_student in trained:
        prune_rows = timed("prune", lambda: prune_sweep(opt, out, trained[opt.prune_student], teacher_path))

    summary = {
        "options": asdict(opt),
        "teacher": str(teacher_path),
        "teacher_training": teacher.config.get("training", {}),
        "cache": json.loads((cache_dir / "report.json").read_text()).get("store_rows"),
        "reference_clips": len(ref_ds.items),
        "eval_clips": len(ev_ds.items),
        "teacher_reuse_check": reuse_check,
        "rows": rows,
        "prune": prune_rows,
        "timings_s": {**prev, **timings},
        "this_run_s": round(time.time() - t_start, 1),
        "machine": f"{os.cpu_count()} CPU cores, torch {torch.__version__}, {opt.threads} threads",
    }
    _write_json(out / "summary.json", summary)
    return summary


def prune_sweep(opt: Options, out: Path, run_dir: Path, teacher_path: Path) -> list[dict[str, Any]]:
    """Stage 5: masked-model latent pruning of one student (criterion from its own folds 1-2 audio)."""
    from tinyclap.evaluation.prune import run_prune

    folds = ",".join(map(str, opt.teacher_folds))
    ev = ",".join(map(str, opt.eval_folds))
    cal = f"us8k:{opt.us8k}#folds={folds}" + (f"&limit={opt.ref_limit}" if opt.ref_limit else "")
    rep = run_prune(
        str(run_dir), list(opt.prune_dims), cal, [f"us8k:{opt.us8k}#folds={ev}"],
        out / "prune", teacher=str(teacher_path), calibration_audio="student", embed_cache=out / "embeddings",
        progress=False, verbose=False,
    )  # fmt: skip
    return [{"k": r["k"], "params": r.get("params"), "masked_accuracy": next(iter(r["masked"].values()), None)}
            for r in rep["rows"]]


def format_table(summary: dict[str, Any]) -> str:
    """The Markdown results table."""
    def pct(x: Any) -> str:
        return f"{100 * x:.1f}" if isinstance(x, (int, float)) and not math.isnan(x) else "n/a"

    ks = [k for k in summary["options"]["knn_k"]]
    head = ["model", "params", "MMACs/5 s", "zero-shot acc %", "retention %", "top-1 agree %", "cos to teacher"]
    head += [f"{k}-NN acc %" for k in ks] + ["val cos (cache)"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in summary["rows"]:
        cells = [
            f"{r.get('run', r['model'])} ({r['kind']}"
            + (f", {r['epochs1']}+{r['epochs2']} ep, {r['crop_seconds']} s crops)" if "epochs1" in r else ")")
            if r["kind"] != "teacher" else r["model"],
            f"{r['params'] / 1e6:.2f} M" if r.get("params") else "n/a",
            f"{r['macs'] / 1e6:.0f}" if r.get("macs") else "n/a",
            pct(r["zero_shot_acc"]), pct(r["retention"]), pct(r["top1_agreement"]),
            f"{r['cosine_to_teacher']:.3f}",
        ]
        cells += [pct(r[f"knn{k}_acc"]) for k in ks]
        cells.append(f"{r['val_cosine']:.3f}" if "val_cosine" in r else "")
        lines.append("| " + " | ".join(cells) + " |")
    if summary.get("prune"):
        lines += ["", "| latent k | masked zero-shot acc % |", "|---|---|"]
        lines += [f"| {p['k']} | {pct(p['masked_accuracy'])} |" for p in summary["prune"]]
    return "\n".join(lines)


def parse_plan(text: str) -> StudentPlan:
    """NAME:EPOCHS1:EPOCHS2[:CROP_SECONDS] -> StudentPlan (CROP_SECONDS 0 = whole 5 s clips)."""
    from tinyclap.models.students import parse_student_name

    parts = text.split(":")
    if len(parts) not in (3, 4, 5):
        raise ValueError(f"--student {text!r}: expected NAME:EPOCHS1:EPOCHS2[:CROP_SECONDS[:TAG]]")
    parse_student_name(parts[0])  # a clear error for a bad name, before any work
    crop = float(parts[3]) if len(parts) >= 4 else 2.5
    tag = parts[4] if len(parts) == 5 else None
    return StudentPlan(parts[0], int(parts[1]), int(parts[2]), crop or None, tag)


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default="runs/real", help="output folder (stages reused from it)")
    ap.add_argument("--quick", action="store_true", help="the CI-sized version")
    ap.add_argument("--json", action="store_true", help="print the summary as JSON")
    ap.add_argument("--us8k", default=None, help="UrbanSound8K root (default ../shared/data/UrbanSound8K)")
    ap.add_argument("--animals", default=None, help="extra unlabelled audio folder (default animals-cc0)")
    ap.add_argument(
        "--student", action="append", default=None, metavar="NAME:EPOCHS1:EPOCHS2[:CROP_S]",
        help="a student to distil (repeatable; replaces the default three), e.g. "
        f"{STUDENTS[0]}:3:1:2.5",
    )
    ap.add_argument(
        "--extra-student", action="append", default=[], metavar="NAME:EPOCHS1:EPOCHS2:CROP_S:TAG",
        help="a further student run added to the default ones (repeatable), e.g. a longer run with a tag",
    )
    ap.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    ap.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    ap.add_argument("--batch-size", type=int, default=None, help="distillation batch (default 16)")
    ap.add_argument("--lr1", type=float, default=None, help="stage-1 learning rate (default 3e-3)")
    ap.add_argument("--lr2", type=float, default=None, help="stage-2 learning rate (default 1e-3)")
    ap.add_argument(
        "--ref-limit", type=int, default=None,
        help="k-NN reference / pruning calibration clips of folds 1-2 (default 400; 0 = all)",
    )
    ap.add_argument("--progress", action="store_true")
    args = ap.parse_args(argv)
    opt = quick_options(args.out) if args.quick else Options(out=args.out)
    if args.us8k:
        opt.us8k = args.us8k
    if args.animals:
        opt.animals = args.animals
    opt.threads, opt.progress, opt.device = args.threads, args.progress, args.device
    for key in ("batch_size", "lr1", "lr2"):
        if getattr(args, key) is not None:
            setattr(opt, key, getattr(args, key))
    if args.ref_limit is not None:
        opt.ref_limit = args.ref_limit or None
    torch.set_num_threads(opt.threads)
    if args.student:
        opt.students = [parse_plan(p) for p in args.student]
        if opt.prune_student not in {p.name for p in opt.students}:
            opt.prune_student = opt.students[0].name
    opt.students += [parse_plan(p) for p in args.extra_student]
    summary = run(opt)
    print(json.dumps(summary, indent=2, default=str) if args.json else format_table(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
