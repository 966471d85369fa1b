"""`tinyclap demo`: the whole pipeline, offline, in a few minutes on a laptop CPU.

With no arguments it makes everything it needs: a small labelled set of synthetic sounds (six classes
that differ in ways a log-mel sees: tones, noise, chirps, clicks, hum, sirens), a small CLAP teacher
trained contrastively on them (tiny Cnn14 + tiny BERT with the real BERT uncased vocabulary), the
teacher-target cache, a two-stage distilled PhiNet student, zero-shot evaluation of teacher and student,
a latent-space pruning sweep, an ONNX export with its parity check, and one classification through the
torch-free runtime. Given a real teacher and dataset (`--teacher CKPT --tokenizer DIR --dataset esc50
--root PATH`) it runs the same stages on them instead.

Everything lands in `--out` (default `runs/demo`): a finished stage is reused on a rerun.
"""

from __future__ import annotations

import contextlib
import csv
import json
import math
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf

from tinyclap._util import read_json

SR = 44100
DEMO_CLASSES = ("sine_tone", "white_noise", "rising_chirp", "clicks", "low_hum", "siren")
DEMO_STUDENT = "phinet_alpha_0.75_beta_0.75_t0_4_N_4"


# ---------------------------------------------------------------- synthetic sounds
def synth(label: str, rng: np.random.Generator, seconds: float = 5.0, sr: int = SR) -> np.ndarray:
    """One random instance of a demo class: (N,) float32 in [-1, 1]. Random pitch, rate and level."""
    n = int(seconds * sr)
    t = np.arange(n) / sr
    if label == "sine_tone":
        x = np.sin(2 * np.pi * rng.uniform(400, 2500) * t)
    elif label == "white_noise":
        x = rng.normal(size=n) * 0.5
    elif label == "rising_chirp":
        f0, f1 = rng.uniform(200, 800), rng.uniform(3000, 8000)
        period = rng.uniform(0.5, 1.5)  # repeated sweeps, so any crop holds several
        tau = np.mod(t, period) / period  # 0 -> 1 within each sweep
        x = np.sin(2 * np.pi * np.cumsum(f0 + (f1 - f0) * tau) / sr)  # phase = integral of frequency
    elif label == "clicks":
        x = np.zeros(n)
        step = int(sr / rng.uniform(4, 20))
        x[rng.integers(0, step) :: step] = 1.0
        x = np.convolve(x, np.exp(-np.arange(200) / 30.0), mode="same")
    elif label == "low_hum":
        f = rng.uniform(50, 120)
        x = sum(np.sin(2 * np.pi * f * k * t + rng.uniform(0, 2 * np.pi)) / k for k in (1, 2, 3))
    elif label == "siren":
        fc, dev, rate = rng.uniform(700, 1200), rng.uniform(200, 500), rng.uniform(0.3, 2.0)
        x = np.sin(2 * np.pi * np.cumsum(fc + dev * np.sin(2 * np.pi * rate * t)) / sr)
    else:
        raise ValueError(f"unknown demo class {label!r}; valid: {', '.join(DEMO_CLASSES)}")
    x = np.asarray(x, dtype=np.float64)
    x = x / max(np.abs(x).max(), 1e-9) * rng.uniform(0.2, 0.8)
    x = x + rng.normal(size=n) * 0.003  # a little background noise, as in any recording
    return np.clip(x, -1, 1).astype(np.float32)


def make_dataset(out: str | os.PathLike, per_class: int = 12, folds: int = 4, seed: int = 0) -> Path:
    """Write `per_class` WAVs per demo class and `labels.csv` (path,label,fold); returns the CSV path.

    Also writes `train.csv` (the clips of every fold but the last, a manifest with a `path` column): the
    teacher and the student learn from those, and the last fold is held out for evaluation.
    """
    out = Path(out)
    csv_path = out / "labels.csv"
    if csv_path.is_file():
        return csv_path
    rng = np.random.default_rng(seed)
    (out / "audio").mkdir(parents=True, exist_ok=True)
    rows = []
    for label in DEMO_CLASSES:
        for i in range(per_class):
            rel = f"audio/{label}-{i:02d}.wav"
            sf.write(out / rel, synth(label, rng), SR, subtype="PCM_16")
            rows.append((rel, label, i % folds + 1))
    for name, keep in (("train.csv", [r for r in rows if r[2] != folds]), ("labels.csv", rows)):
        tmp = out / f".{name}.tmp"  # labels.csv last: its presence marks a finished data set
        with open(tmp, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["path", "label", "fold"])
            w.writerows(keep)
        os.replace(tmp, out / name)
    return csv_path


# ---------------------------------------------------------------- a small teacher
def build_demo_teacher(train_csv: Path, out: Path, *, epochs: int = 60, seed: int = 0) -> Path:
    """A proxy CLAP teacher for the demo sounds: frozen pretrained towers (aiSFX audio, MiniLM text, both
    shipped inside PyPI wheels) with projections trained contrastively on the clips' class captions.

    A from-scratch tiny CLAP cannot learn in the demo's time budget (its random towers map every clip
    and every caption to nearly the same vector); pretrained towers separate the classes at once.
    """
    from tinyclap.train.proxy import train_proxy

    with open(train_csv, newline="") as f:
        clips = [(train_csv.parent / r["path"], r["label"]) for r in csv.DictReader(f)]
    train_proxy(clips, seed=seed, epochs=epochs, out=out, embed_dim=1024, batch_size=32, lr=3e-3,
                source={"dataset": "tinyclap demo sounds", "csv": str(train_csv)})
    return out


# ---------------------------------------------------------------- the pipeline
@dataclass
class DemoOptions:
    out: str = "runs/demo"
    per_class: int = 12
    epochs1: int = 8
    epochs2: int = 2
    batch_size: int = 16
    student: str = DEMO_STUDENT
    dims: tuple[int, ...] = (512, 256, 128, 64, 32)
    export: bool = True
    seed: int = 0
    # the real pipeline instead of the built-in default
    teacher: str | None = None
    tokenizer: str | None = None
    dataset: str | None = None
    root: str | None = None
    data: tuple[str, ...] = ()


@dataclass
class _Inputs:
    """What the stages run on: the teacher, the distillation data and the evaluation set."""

    teacher: str
    tokenizer: str | None
    dataset: str
    root: str
    data: list[str]
    eval_folds: list[int] | None


class _Stages:
    """Logs each stage's name as it starts and records its duration."""

    def __init__(self, log: Callable[[str], None]) -> None:
        self.log, self.timings = log, {}

    @contextlib.contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        t0 = time.time()
        self.log(f"[{name}]")
        yield
        self.timings[name] = round(time.time() - t0, 1)


def run_demo(opt: DemoOptions, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Run every stage; returns (and writes to `<out>/summary.json`) the summary table's numbers."""
    from tinyclap.models import load_model

    t_start = time.time()
    out = Path(opt.out)
    out.mkdir(parents=True, exist_ok=True)
    stage = _Stages(log)
    inp = _inputs(opt, out, stage)
    teacher = load_model(inp.teacher, tokenizer_dir=inp.tokenizer)
    run_dir, val_cos = _cache_and_distill(opt, inp, teacher, out, stage)
    with stage("eval: teacher and student, zero-shot"):
        kw = dict(teacher=inp.teacher, tokenizer=inp.tokenizer, embed_cache=out / "embeddings", progress=False,
                  verbose=False, folds=inp.eval_folds)
        from tinyclap.evaluation.run import run_eval

        rep_t = run_eval(inp.teacher, inp.dataset, inp.root, out / "eval-teacher", **kw)
        rep_s = run_eval(str(run_dir), inp.dataset, inp.root, out / "eval-student", **kw)
    with stage("prune: latent-space sweep"):
        prune_rep = _prune(opt, inp, teacher, run_dir, out)
    exported = None
    if opt.export:
        with stage("export: ONNX + parity, runtime classification"):
            exported = _export_and_classify(run_dir, teacher, inp.root, inp.dataset, out, log, inp.eval_folds)
    summary = _summary(opt, inp, teacher, rep_t, rep_s, out, val_cos, prune_rep, exported)
    summary.update(timings_s=stage.timings, total_s=round(time.time() - t_start, 1))
    (out / "summary.json").write_text(json.dumps(summary, indent=2, default=str) + "\n")
    log(format_summary(summary))
    return summary


def _inputs(opt: DemoOptions, out: Path, stage: _Stages) -> _Inputs:
    """The given teacher and dataset (the real pipeline), or generated sounds and a proxy teacher built on them."""
    if opt.teacher:
        if not (opt.dataset and opt.root):
            raise ValueError("with --teacher, also give --dataset NAME --root PATH (the evaluation set)")
        data = list(opt.data) or [f"{opt.dataset}:{opt.root}"]
        return _Inputs(opt.teacher, opt.tokenizer, opt.dataset, opt.root, data, None)
    with stage("data: synthetic sounds"):
        csv_path = make_dataset(out / "data", opt.per_class, seed=opt.seed)
        train_csv = csv_path.parent / "train.csv"
    with stage("teacher: proxy CLAP (frozen aiSFX + MiniLM towers, trained projections)"):
        teacher_file = out / "teacher" / "proxy_teacher.safetensors"
        if not teacher_file.is_file():
            build_demo_teacher(train_csv, teacher_file, seed=opt.seed)
    # fold 4 is held out: the teacher's projections and the student never saw it
    return _Inputs(str(teacher_file), opt.tokenizer, "csv", str(csv_path), [f"manifest:{train_csv}"], [4])


def _cache_and_distill(opt: DemoOptions, inp: _Inputs, teacher: Any, out: Path, stage: _Stages) -> tuple[Path, float]:
    """Cache the teacher's targets (audio only), then distil both stages; a finished stage is reused."""
    from tinyclap.train.cache import build_cache
    from tinyclap.train.distill import DistillConfig, distill

    with stage("cache: teacher targets"):
        cache_dir = out / "cache"
        if not (cache_dir / "cache.json").is_file() or not any((cache_dir / "shards").glob("*")):
            # the teacher's path, not the loaded model: the cache, and so the run, records it (its labels)
            build_cache(inp.teacher, inp.data, cache_dir, val_fraction=0.25, seed=1234, batch_size=16, workers=0,
                        progress=False, overwrite=True)
    run_dir = out / "student"
    with stage(f"distill: {opt.student}, stages 1+2"):
        if (run_dir / "student.safetensors").is_file():
            return run_dir, read_json(run_dir / "student.json", finite=False).get("val_cosine", float("nan"))
        res = distill(DistillConfig(
            out=str(run_dir), student=opt.student, cache=str(cache_dir), epochs1=opt.epochs1, epochs2=opt.epochs2,
            batch_size=opt.batch_size, workers=0, ckpt_every=0, device="auto", progress=False, tensorboard=False,
            lr1=3e-3, lr2=1e-3, seed=1234,
        ))
    return run_dir, res.val_cosine


def _prune(opt: DemoOptions, inp: _Inputs, teacher: Any, run_dir: Path, out: Path) -> dict[str, Any]:
    """Masked-model sweep of the shared latent space, calibrated on the training folds."""
    from tinyclap.evaluation.prune import run_prune

    folds = inp.eval_folds
    dims = [d for d in opt.dims if d < teacher.embed_dim]
    held_out = f"{inp.dataset}:{inp.root}" + (f"#folds={','.join(map(str, folds))}" if folds else "")
    calibration = f"{inp.dataset}:{inp.root}" + ("#folds=1,2,3" if folds else "")
    return run_prune(str(run_dir), dims, calibration, [held_out], out / "prune", teacher=inp.teacher,
                     tokenizer=inp.tokenizer, embed_cache=out / "embeddings", progress=False, verbose=False)


def _summary(opt: DemoOptions, inp: _Inputs, teacher: Any, rep_t: dict, rep_s: dict, out: Path, val_cos: float,
             prune_rep: dict, exported: Any) -> dict[str, Any]:
    from tinyclap.models.students import count_macs, count_params, create_student

    student = create_student(opt.student, embed_dim=teacher.embed_dim)
    acc_t, acc_s = rep_t["results"]["accuracy"], rep_s["results"]["accuracy"]
    return {
        "teacher": inp.teacher,
        "student": opt.student,
        "dataset": f"{inp.dataset}:{inp.root}" + (f" (held-out folds {inp.eval_folds})" if inp.eval_folds else ""),
        "eval_clips": rep_s["results"]["n_clips"],
        "teacher_accuracy": acc_t,
        "student_accuracy": acc_s,
        "retention": _ratio(acc_s, acc_t),
        "top1_agreement": _agreement(out / "eval-teacher", out / "eval-student"),
        "heldout_cosine": val_cos,
        "student_params": count_params(student),
        "student_macs": count_macs(student, 690),  # 690 frames: a 5 s clip
        "teacher_audio_params": _audio_params(teacher),
        "prune": _prune_rows(prune_rep),
        "export": exported,
    }


def _ratio(a: float, b: float) -> float:
    return a / b if b else float("nan")


def _audio_params(teacher: Any) -> int | None:
    """Parameters of the teacher's audio path (tower + projection), where it has one."""
    if hasattr(teacher, "audio_encoder"):  # MS CLAP: Cnn14 + projection
        return sum(p.numel() for p in teacher.audio_encoder.parameters())
    if hasattr(teacher, "audio_tower"):  # proxy: aiSFX + trained projection
        parts = (teacher.audio_tower, teacher.head.audio_projection)
        return sum(p.numel() for m in parts for p in m.parameters())
    return None


def _agreement(dir_a: Path, dir_b: Path) -> float:
    """Fraction of clips where the two models' top-1 predictions agree (from predictions.csv)."""
    def preds(d: Path) -> dict[str, str]:
        with open(d / "predictions.csv") as f:
            rows = list(csv.DictReader(f))
        return {r["path"]: r["predicted"] for r in rows}

    a, b = preds(dir_a), preds(dir_b)
    common = sorted(set(a) & set(b))
    return sum(a[k] == b[k] for k in common) / max(len(common), 1)


def _prune_rows(rep: dict[str, Any]) -> list[dict[str, Any]]:
    """k, params and masked accuracy (first evaluation set) per sweep size."""
    return [{"k": r["k"], "params": r["params"], "masked_accuracy": next(iter(r["masked"].values()), None)}
            for r in rep["rows"]]


def _export_and_classify(run_dir: Path, teacher: Any, root: str, dataset: str, out: Path,
                         log: Callable[[str], None], eval_folds: list[int] | None) -> dict[str, Any]:
    from tinyclap.classifier import Classifier
    from tinyclap.data import load_dataset
    from tinyclap.deploy.export import export
    from tinyclap.models import load_model
    from tinyclap.zeroshot import ZeroShotClassifier

    ds = load_dataset(dataset, root)
    clf = ZeroShotClassifier.from_teacher(teacher, ds.classes)
    files = [str(it.path) for it in ds.items]
    manifest = export(load_model(str(run_dir)), out / "export", clf, parity_audio=files[:: max(1, len(files) // 6)][:6],
                      source=str(run_dir))
    clip = str((ds.select_folds(eval_folds) if eval_folds else ds).items[0].path)  # a held-out clip
    ranked = Classifier.from_export(out / "export").classify_files([clip], top=3)[0].ranked
    log(f"  runtime (onnxruntime, no torch) on {Path(clip).name}: " + ", ".join(f"{lb} {p:.2f}" for lb, p in ranked))
    parity = manifest.get("parity", {})
    return {"dir": str(out / "export"), "parity": parity, "classified": clip, "top3": ranked}


def format_summary(s: dict[str, Any]) -> str:
    """The demo's closing table."""
    def pct(x: Any) -> str:
        return f"{100 * x:.1f} %" if isinstance(x, (int, float)) and not math.isnan(x) else "n/a"

    lines = [
        "",
        f"tinyclap demo — zero-shot on {s['eval_clips']} clips of {s['dataset']}",
        f"  {'teacher zero-shot accuracy':32s} {pct(s['teacher_accuracy'])}",
        f"  {'student zero-shot accuracy':32s} {pct(s['student_accuracy'])}  (retention {pct(s['retention'])})",
        f"  {'top-1 agreement teacher/student':32s} {pct(s['top1_agreement'])}",
        f"  {'validation cosine to teacher':32s} {s['heldout_cosine']:.4f}",
        f"  {'student':32s} {s['student']}: {s['student_params']:,} params, {s['student_macs'] / 1e6:.1f} M MACs / 5 s",
    ]
    if s.get("teacher_audio_params"):
        lines.append(f"  {'teacher audio tower':32s} {s['teacher_audio_params']:,} params")
    for r in s.get("prune", []):
        params = f", student {r['params']:,} params" if r.get("params") else ""
        lines.append(f"  {'latent pruned to k=' + str(r['k']):32s} masked accuracy {pct(r['masked_accuracy'])}{params}")
    if s.get("export"):
        lines.append(f"  {'export':32s} {s['export']['dir']}")
    stages = ", ".join(f"{k.split(':')[0]} {v:.0f}s" for k, v in s["timings_s"].items())
    lines.append(f"  {'total time':32s} {s['total_s']:.0f} s ({stages})")
    return "\n".join(lines)
