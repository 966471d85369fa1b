"""A microcontroller student on real recordings: clip-level zero-shot on UrbanSound8K's held-out fold 3 with its
device window, next to the 0.75 PhiNet student distilled with the same budget, plus TFLM int8 parity.

Inputs are two run folders of `tinyclap distill` on the same teacher-target cache (folds 1-2) and that teacher.
Rows (each against the teacher's zero-shot decision on the same clips; prompt "this is the sound of {class}",
class matrix from the teacher's text tower):

- teacher, whole clip (the protocol's 5 s window; US8K clips are at most 4 s);
- the 0.75 student, whole clip;
- the MCU student with its device window (`tinyclap.deploy.mcu.graphs`: the clip cut into back-to-back
  `--window` s windows, the last aligned to the clip's end, backbone per window, pooled features averaged,
  head once), torch fp32, all latent entries;
- the same, as exported (`--dims`: the latent entries the TFLM export kept, read from its manifest);
- the MCU student on the whole clip (one 5 s window), for reference.

Then (`--tflm-python`, a Python with the `mcu` extra) `tinyclap export --target tflm` on the MCU run, with
calibration clips from fold 1 and `--tflm-clips` fold-3 clips for parity (TFLM int8 vs torch fp32, same windows).

Every stage is reused when its output exists under `--out` (embeddings by model fingerprint, the export by its
manifest), so a killed run resumes. Writes `<out>/results.json` and prints a Markdown table.

    python bench/mcu_real.py --teacher T --mcu runs/mcu-l --student runs/s075 --out runs/mcu-real \
        --tflm-python /work/venv-mcu/bin/python
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
US8K = REPO.parent / "shared" / "data" / "UrbanSound8K"
TARGET = 0.90  # the MCU student's top-1 agreement >= 90 % of the 0.75 student's


def _log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def protocol_embeddings(spec: str, dataset: Any, cache_dir: Path, loaded: tuple[Any, str] | None = None) -> np.ndarray:
    """A model's whole-clip protocol embeddings (embed_dataset, cached by weights), one row per item."""
    from tinyclap.evaluation.embedding import embed_dataset
    from tinyclap.models.fingerprint import load_model_for_eval

    model, fp = loaded or load_model_for_eval(spec)
    res = embed_dataset(model, dataset, "windows", cache_dir, progress=False, model_id=fp)
    if len(res.kept) != len(dataset.items):
        raise RuntimeError(f"{spec}: {len(dataset.items) - len(res.kept)} clips failed to decode")
    return res.embeddings.numpy()


@torch.no_grad()
def device_window_embeddings(run: str, dataset: Any, window: float, cache_dir: Path) -> np.ndarray:
    """The MCU student's clip embeddings as the device computes them (torch fp32), cached by fingerprint."""
    from tinyclap._util import atomic_write_bytes
    from tinyclap.audio import load_audio
    from tinyclap.deploy.mcu import graphs
    from tinyclap.deploy.onnx import student_of
    from tinyclap.models.fingerprint import load_model_for_eval

    model, fp = load_model_for_eval(run)
    clips = "\n".join(str(it.path) for it in dataset.items)
    key = hashlib.sha256(f"{fp}\n{window!r}\n{clips}".encode()).hexdigest()[:24]
    path = cache_dir / f"mcu-window-{key}.npy"
    if path.is_file():
        return np.load(path)
    student = student_of(model).eval()
    lm = model.frontend
    samples, _ = graphs.window_frames(student, lm, window)
    norm = graphs.input_norm(student)
    backbone = graphs.Backbone(student).eval()
    rows = []
    for it in dataset.items:
        wins = graphs.window_logmels(load_audio(it.path, lm.sample_rate), samples, lm, norm)
        feats = backbone(torch.from_numpy(wins)).mean(0, keepdim=True)  # (1, F): mean over the clip's windows
        rows.append(torch.nn.functional.normalize(student.projection(feats), dim=-1)[0].numpy())
    emb = np.stack(rows).astype(np.float32)
    cache_dir.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    np.save(buf, emb)
    atomic_write_bytes(path, buf.getvalue())
    return emb


def teacher_stage(spec: str, dataset: Any, out: Path, classes: Path) -> tuple[np.ndarray, str]:
    """The teacher's clip embeddings and class matrix (prompt "this is the sound of {class}", its text tower),
    written once to `<out>/teacher.npz` and `classes` and reused from there (the teacher is not loaded again)."""
    from tinyclap.evaluation.run import build_classifier, read_templates
    from tinyclap.models.fingerprint import load_model_for_eval

    path = out / "teacher.npz"
    paths = np.array([str(it.path) for it in dataset.items])
    if path.is_file() and classes.is_file():
        with np.load(path, allow_pickle=False) as z:
            if np.array_equal(z["paths"], paths):
                return z["embeddings"].astype(np.float32), str(z["fingerprint"])
        raise ValueError(f"{path}: made for other clips; remove it (and {classes.name}) to embed these")
    teacher, fp = load_model_for_eval(spec)
    clf = build_classifier(list(dataset.classes), text_model=teacher, templates=read_templates(None))
    emb = protocol_embeddings(spec, dataset, out / "embeddings", (teacher, fp))
    clf.save(classes)
    buf = io.BytesIO()
    np.savez(buf, embeddings=emb, fingerprint=np.array(fp), paths=paths)
    from tinyclap._util import atomic_write_bytes

    atomic_write_bytes(path, buf.getvalue())
    return emb, fp


def scores(emb: np.ndarray, weights: np.ndarray) -> np.ndarray:
    return emb @ weights.T


def row(name: str, emb: np.ndarray, weights: np.ndarray, y: np.ndarray, teacher_pred: np.ndarray,
        teacher_acc: float, teacher_emb: np.ndarray | None, **extra: Any) -> dict[str, Any]:
    """Zero-shot accuracy, retention, top-1 agreement (and mean cosine) against the teacher."""
    pred = np.argmax(scores(emb, weights), 1)
    acc = float(np.mean(pred == y))
    out = {"model": name, "accuracy": acc, "retention": acc / teacher_acc if teacher_acc else float("nan"),
           "top1_agreement": float(np.mean(pred == teacher_pred)), "clips": int(len(y))}
    if teacher_emb is not None:
        out["cosine_to_teacher"] = float(np.mean(np.sum(emb * teacher_emb, 1)))
    return {**out, **extra}


def export_tflm(opt: argparse.Namespace, classes: Path, out: Path) -> dict[str, Any] | None:
    """`tinyclap export --target tflm` on the MCU run (reused when its manifest exists); its manifest."""
    from tinyclap._util import read_json

    manifest = out / "manifest.json"
    if not manifest.is_file():
        cmd = [opt.tflm_python, "-m", "tinyclap.cli", "export", "--target", "tflm", "--model", opt.mcu,
               "--classes", str(classes), "--window", str(opt.window),
               "--calibration", f"us8k:{opt.us8k}#folds=1", "--calibration-size", str(opt.calibration_size),
               "--parity-audio", f"us8k:{opt.us8k}#folds={opt.folds}", "--eval-size", str(opt.tflm_clips),
               "--out", str(out), "--overwrite"]
        _log("tflm: " + " ".join(cmd))
        env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
        res = subprocess.run(cmd, env=env, capture_output=True, text=True)
        if res.returncode != 0:
            _log(f"tflm export failed ({res.returncode}): {res.stderr.strip().splitlines()[-1:]}")
            return None
        _log(res.stdout.strip())
    return read_json(manifest, expect=dict)


def _model_facts(spec: str, window: float | None) -> dict[str, Any]:
    from tinyclap.deploy.onnx import student_of
    from tinyclap.models import load_model
    from tinyclap.models.students import count_macs, count_params

    model = load_model(spec)
    student = student_of(model)
    frames = model.frontend.n_frames(int(round((window or 5.0) * model.frontend.sample_rate)))
    return {"student": student.name, "params": count_params(student), "frames": frames,
            "macs_per_run": count_macs(student, frames)}


def run(opt: argparse.Namespace) -> dict[str, Any]:
    from tinyclap.data.spec import load_eval_dataset
    from tinyclap.zeroshot import ZeroShotClassifier

    t0 = time.time()
    out = Path(opt.out)
    out.mkdir(parents=True, exist_ok=True)
    emb_dir = out / "embeddings"
    folds = [int(f) for f in str(opt.folds).split(",")]
    ds = load_eval_dataset("us8k", opt.us8k, folds=folds, limit=opt.limit)
    y = np.array([it.label for it in ds.items])
    classes = out / "classes.npz"
    _log(f"{len(ds.items)} clips of fold(s) {opt.folds}; teacher")
    t_emb, t_fp = teacher_stage(opt.teacher, ds, out, classes)
    clf = ZeroShotClassifier.load(classes)
    w = clf.weights
    t_pred = np.argmax(scores(t_emb, w), 1)
    t_acc = float(np.mean(t_pred == y))
    rows = [row("teacher (whole clip)", t_emb, w, y, t_pred, t_acc, t_emb)]
    _log("0.75 student, whole clip")
    s_emb = protocol_embeddings(opt.student, ds, emb_dir)
    rows.append(row("0.75 student, whole clip", s_emb, w, y, t_pred, t_acc, t_emb, window="clip (5 s)",
                    **_model_facts(opt.student, None)))
    _log(f"MCU student, {opt.window:g} s windows")
    m_emb = device_window_embeddings(opt.mcu, ds, opt.window, emb_dir)
    mcu_facts = _model_facts(opt.mcu, opt.window)
    rows.append(row(f"MCU student, {opt.window:g} s windows", m_emb, w, y, t_pred, t_acc, t_emb,
                    window=f"{opt.window:g} s", **mcu_facts))
    tflm = export_tflm(opt, classes, out / "tflm") if opt.tflm_python else None
    if tflm and tflm.get("latent_dims"):
        keep = np.asarray(tflm["latent_dims"], dtype=np.int64)
        sub = m_emb[:, keep] / np.maximum(np.linalg.norm(m_emb[:, keep], axis=1, keepdims=True), 1e-12)
        rows.append(row(f"MCU student, {opt.window:g} s windows, k={len(keep)} (as exported)", sub,
                        clf.select(keep).weights, y, t_pred, t_acc, None, window=f"{opt.window:g} s", **mcu_facts))
    _log("MCU student, whole clip")
    rows.append(row("MCU student, whole clip (reference)", protocol_embeddings(opt.mcu, ds, emb_dir), w, y, t_pred,
                    t_acc, t_emb, window="clip (5 s)"))
    ratio = rows[2]["top1_agreement"] / rows[1]["top1_agreement"] if rows[1]["top1_agreement"] else float("nan")
    summary = {
        "teacher": opt.teacher, "teacher_fingerprint": t_fp, "mcu_run": opt.mcu, "student_run": opt.student,
        "folds": opt.folds,
        "clips": len(ds.items), "window_s": opt.window, "rows": rows,
        "target": {"agreement_ratio": ratio, "needed": TARGET, "met": bool(ratio >= TARGET)},
        "tflm": _tflm_block(tflm), "seconds": round(time.time() - t0, 1),
        "machine": f"{os.cpu_count()} CPU cores, torch {torch.__version__}, {torch.get_num_threads()} threads",
    }
    from tinyclap._util import atomic_write_text

    atomic_write_text(out / "results.json", json.dumps(summary, indent=2) + "\n")
    return summary


def _tflm_block(m: dict[str, Any] | None) -> dict[str, Any] | None:
    if not m:
        return None
    parity = {k: v for k, v in m["parity"].items() if k not in ("files", "windows_per_clip")}
    parity["mean_windows_per_clip"] = float(np.mean(m["parity"].get("windows_per_clip") or [0]))
    return {"parity": parity, "arena_bytes": m["arena_bytes"],
            "flash_bytes": m["flash_bytes"], "latent_dims": len(m.get("latent_dims") or []) or None,
            "window": m["window"], "export_seconds": m.get("export_seconds")}


def format_table(s: dict[str, Any]) -> str:
    def pct(x: Any) -> str:
        return "" if x is None else f"{100 * x:.1f} %"

    lines = ["| model | window | params | MACs per run | accuracy | retention | top-1 agreement | cosine |",
             "|---|---|---|---|---|---|---|---|"]
    for r in s["rows"]:
        params = f"{r['params'] / 1e6:.2f} M" if r.get("params") else ""
        macs = f"{r['macs_per_run'] / 1e6:.1f} M" if r.get("macs_per_run") else ""
        cos = f"{r['cosine_to_teacher']:.3f}" if r.get("cosine_to_teacher") is not None else ""
        lines.append(f"| {r['model']} | {r.get('window', 'clip (5 s)')} | {params} | {macs} | {pct(r['accuracy'])} "
                     f"| {pct(r['retention'])} | {pct(r['top1_agreement'])} | {cos} |")
    t = s["target"]
    lines.append(f"\nMCU / 0.75 top-1 agreement: {t['agreement_ratio']:.3f} (target >= {t['needed']}: "
                 f"{'met' if t['met'] else 'not met'}); {s['clips']} clips of fold {s['folds']}")
    if s.get("tflm"):
        p, a, f = s["tflm"]["parity"], s["tflm"]["arena_bytes"], s["tflm"]["flash_bytes"]
        lines.append(f"TFLM int8 vs torch fp32 on {p['clips']} fold-{s['folds']} clips: mean cosine "
                     f"{p['mean_cosine']:.4f} (min {p['min_cosine']:.4f}), top-1 agreement {pct(p['top1_agreement'])} "
                     f"(int8 class matrix {pct(p['top1_agreement_int8_classes'])}); arena {a['total'] / 1024:.1f} KiB, "
                     f"flash {f['total'] / 1024:.1f} KiB")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--teacher", required=True, help="teacher checkpoint the students were distilled from")
    p.add_argument("--mcu", required=True, help="run folder of the distilled MCU student")
    p.add_argument("--student", required=True, help="run folder of the 0.75 student (same cache and budget)")
    p.add_argument("--out", required=True)
    p.add_argument("--us8k", default=str(US8K))
    p.add_argument("--folds", default="3", help="held-out fold(s) (default: 3)")
    p.add_argument("--limit", type=int, default=None, help="evenly spread subset of N clips (quick checks)")
    p.add_argument("--window", type=float, default=1.0, help="device window in seconds (default: 1)")
    p.add_argument("--tflm-python", default=None, help="a Python with the mcu extra: also run the TFLM export")
    p.add_argument("--tflm-clips", type=int, default=96, help="fold clips for the TFLM parity (default: 96)")
    p.add_argument("--calibration-size", type=int, default=32)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--json", action="store_true", help="print results.json instead of the table")
    opt = p.parse_args(argv)
    torch.set_num_threads(opt.threads)
    summary = run(opt)
    print(json.dumps(summary, indent=2) if opt.json else format_table(summary))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
