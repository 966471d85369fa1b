"""The distillation ablation of issue 12: which loss terms and views make a student copy its teacher best.

On the proxy-teacher setup (`tinyclap teacher build-proxy`, UrbanSound8K folds 1-2), each row distils a student
from ONE cache of folds 1-2 (fold 3's audio is never in it) and evaluates it zero-shot on fold 3 against the
teacher (`tinyclap eval --against-teacher`): accuracy, retention, top-1 agreement, mean cosine.

Rows (every row at the same budget: the same epochs over the same clips, i.e. the same number of student forward
passes and optimiser steps; with views an epoch still visits each clip once, drawing one of its views):

    paper       Eq. 7 only (the paper)             +kl         paper + text-anchored KL over the cache's text bank
    +views      paper + augmented views (the teacher embedded the same view) + SpecAugment on the student's input
    +cosine     paper with `--schedule cosine` (warm-up, then a per-step cosine decay to 0) for the plateau schedule
    plus        the `plus` recipe: paper + the in-batch relational term (what this ablation kept)
    plus+views  plus + views + SpecAugment          plus+kl     every term: plus + views + SpecAugment + text KL
    plus+kl-x   plus+kl with the bank's texts naming the evaluation's classes, or a near-synonym, removed (`EXCLUDE`)

`paper`, `plus` and `+cosine` run with `--seeds` seeds (95 % t-interval over seeds; each against `paper` paired
by seed too), the others with the first seed. Every
stage is reused from `--out` (teacher, caches, finished rows), so an interrupted run resumes; `--quick` is the
CI size (tests/test_ablation.py). Results: OUT/results.json (one record per row and seed), OUT/table.md and
OUT/ablation.png (agreement per row: seeds, mean, 95 % interval).

    python bench/ablation.py --out runs/ablation --teacher runs/i13-proxy --views 2 \\
        --student phinet_alpha_0.75_beta_0.75_t0_4_N_4 --student phinet_alpha_1.50_beta_0.75_t0_6_N_7
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from tinyclap._util import atomic_write_bytes, atomic_write_text, read_json

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"

# name -> DistillConfig overrides; "bank": which cache ("" = generic bank, "x" = class names excluded)
ROWS: dict[str, dict[str, Any]] = {
    "paper": {"recipe": "paper"},
    "+kl": {"recipe": "paper", "kl_weight": 1.0},
    "+views": {"recipe": "paper", "views": True, "spec_augment": True},
    "+cosine": {"recipe": "paper", "schedule": "cosine"},
    "plus": {"recipe": "plus"},  # = paper + the relational term (the "+rel" row)
    "plus+views": {"recipe": "plus", "views": True, "spec_augment": True},
    "plus+kl": {"recipe": "plus", "views": True, "spec_augment": True, "kl_weight": 1.0},  # every term
    "plus+kl-x": {"recipe": "plus", "views": True, "spec_augment": True, "kl_weight": 1.0, "bank": "x"},
}
SEEDED_ROWS = ("paper", "plus", "+cosine")
# plus-x's bank: texts naming a US8K class (`us8k`), and also their near-synonyms and head words, which the
# whole-phrase match of the class names alone keeps ("dog barking", "a power drill", "a gunshot", "a truck horn")
EXCLUDE = ["us8k", "dog,barking,drill,engine,gun,gunshot,horn,siren,jackhammer,children,child,music,conditioner"]
# two-sided 95 % Student-t quantiles by degrees of freedom (scipy-free)
T975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262, 10: 2.228}


@dataclass
class Options:
    out: str = "runs/ablation"
    us8k: str = str(SHARED / "UrbanSound8K")
    teacher: str | None = None  # an existing proxy teacher folder; None = build one into OUT/teacher
    teacher_limit_per_class: int | None = None
    cache_limit: int | None = None  # clips of folds 1-2 in the cache (None = all)
    eval_limit: int | None = None  # clips of fold 3 evaluated (None = all)
    views: int = 2
    students: list[str] = field(default_factory=lambda: ["phinet_alpha_0.75_beta_0.75_t0_4_N_4"])
    rows: list[str] = field(default_factory=lambda: list(ROWS))
    seeds: int = 3
    epochs1: int = 3
    epochs2: int = 1
    lr1: float = 3e-3
    lr2: float = 1e-3
    batch_size: int = 16
    crop_seconds: float | None = 2.5
    device: str = "cpu"
    threads: int = 2


def quick_options(out: str) -> Options:
    """The CI size: a proxy teacher on 3 clips per class, a cache of 60 clips of folds 1-2 with 2 views each and
    a text bank, the 0.75 student for 3 + 1 epochs, paper vs plus, 2 seeds each, 60 fold-3 clips."""
    return Options(out=out, teacher_limit_per_class=3, cache_limit=60, eval_limit=60, views=2, rows=["paper", "plus"],
                   seeds=2, epochs1=3, epochs2=1, crop_seconds=2.0)  # fmt: skip


def _log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def _cli(argv: list[str]) -> None:
    from tinyclap.cli import main

    rc = main(argv)
    if rc:
        raise RuntimeError(f"tinyclap {' '.join(argv)} failed with exit status {rc}")


def _spec(root: str, folds: str, limit: int | None) -> str:
    return f"us8k:{root}#folds={folds}" + (f"&limit={limit}" if limit else "")


def prepare(opt: Options, log: Callable[[str], None]) -> tuple[Path, dict[str, Path]]:
    """The teacher and the two caches (generic bank, bank without the class names), built once under OUT."""
    out = Path(opt.out)
    teacher = Path(opt.teacher) if opt.teacher else out / "teacher"
    if not (teacher / "proxy_teacher.safetensors").is_file():
        log(f"proxy teacher -> {teacher}")
        limit = ["--limit-per-class", str(opt.teacher_limit_per_class)] if opt.teacher_limit_per_class else []
        _cli(["teacher", "build-proxy", "--us8k", opt.us8k, "--out", str(teacher), "--no-progress", *limit])
    cache = out / "cache"
    if not (cache / "text_bank.npy").is_file():
        log(f"cache of folds 1-2 ({opt.views} views per clip) -> {cache}")
        views = ["--views", str(opt.views)] if opt.views else []
        _cli(["cache", "--teacher", str(teacher), "--data", _spec(opt.us8k, "1,2", opt.cache_limit), "--out",
              str(cache), *views, "--text-bank", "default", "--workers", "1", "--no-progress"])
    caches = {"": cache}
    if any(ROWS[r].get("bank") == "x" for r in opt.rows):
        caches["x"] = _bank_copy(cache, out / "cache-x", teacher, log)
    return teacher, caches


def _bank_copy(cache: Path, dst: Path, teacher: Path, log: Callable[[str], None]) -> Path:
    """The same cache (shards hard-linked: same bytes) with a bank whose texts naming a US8K class are dropped."""
    if (dst / "text_bank.npy").is_file():
        return dst
    log(f"cache without the evaluation's class names in its bank -> {dst}")
    tmp = dst.with_name(dst.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    shutil.copytree(cache / "shards", tmp / "shards", copy_function=os.link)
    for name in ("cache.json", "report.json"):
        shutil.copy2(cache / name, tmp / name)
    exclude = [a for name in EXCLUDE for a in ("--text-bank-exclude", name)]
    _cli(["cache", "--add-text-bank", "default", *exclude, "--out", str(tmp), "--teacher", str(teacher)])
    tmp.rename(dst)
    return dst


def run_row(opt: Options, student: str, row: str, seed: int, caches: dict[str, Path], teacher: Path,
            log: Callable[[str], None]) -> dict[str, Any]:  # fmt: skip
    """Distil one (student, row, seed) and evaluate it on fold 3 against the teacher; reused when done."""
    from tinyclap.evaluation import run_eval
    from tinyclap.train.distill import DistillConfig, distill

    out = Path(opt.out) / student / f"{row}-s{seed}"
    record = out / "record.json"
    if record.is_file():
        return read_json(record)
    overrides = dict(ROWS[row])
    cache = caches[overrides.pop("bank", "")]
    log(f"{student} {row} seed {seed}: distilling")
    t0 = time.perf_counter()
    if not (out / "student.safetensors").is_file():
        # resume=True: an interrupted row continues from its last epoch, exactly (a fresh folder starts fresh);
        # the run's lock refuses a second process on the same row
        distill(DistillConfig(out=str(out), student=student, cache=str(cache), epochs1=opt.epochs1,
                              epochs2=opt.epochs2, lr1=opt.lr1, lr2=opt.lr2, batch_size=opt.batch_size, seed=seed,
                              workers=0, ckpt_every=0, device=opt.device, progress=False, tensorboard=False,
                              train_crop_seconds=opt.crop_seconds, resume=True, **overrides))  # fmt: skip
    train_s = time.perf_counter() - t0  # this process's share of a resumed row
    report = run_eval(str(out), "us8k", opt.us8k, out / "eval", folds=[3], limit=opt.eval_limit,
                      embed_cache=Path(opt.out) / "embeddings", device=opt.device, progress=False, verbose=False,
                      against_teacher=True, teacher=str(teacher))  # fmt: skip
    agree = report["against_teacher"]
    rec = {"student": student, "row": row, "seed": seed, "train_s": round(train_s, 1),
           "accuracy": agree["student_accuracy"], "teacher_accuracy": agree["teacher_accuracy"],
           "retention": agree["retention"], "agreement": agree["top1_agreement"], "cosine": agree["mean_cosine"],
           "clips": agree["n_clips"], "val_cosine": _val_cosine(out)}  # fmt: skip
    atomic_write_text(record, json.dumps(rec, indent=1) + "\n")  # a killed row leaves no half record
    log(f"{student} {row} seed {seed}: agreement {100 * rec['agreement']:.1f} %, cosine {rec['cosine']:.3f}, "
        f"accuracy {100 * rec['accuracy']:.1f} % ({train_s:.0f} s)")  # fmt: skip
    return rec


def _val_cosine(run: Path) -> float | None:
    try:
        info = read_json(run / "student.json")
    except (OSError, ValueError):  # JSONFileError is a ValueError
        return None
    val = info.get("val_cosine") if isinstance(info, dict) else None
    return float(val) if isinstance(val, (int, float)) else None


def mean_ci(values: Sequence[float]) -> tuple[float, float]:
    """Mean and the half-width of its two-sided 95 % Student-t interval (0 for one value)."""
    n = len(values)
    mean = sum(values) / n
    if n < 2:
        return mean, 0.0
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    return mean, T975.get(n - 1, 1.96) * sd / math.sqrt(n)


def summarise(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One line per (student, row): mean and 95 % half-width of each metric over the row's seeds."""
    lines = []
    for student in dict.fromkeys(r["student"] for r in records):
        for row in ROWS:
            recs = [r for r in records if r["student"] == student and r["row"] == row]
            if not recs:
                continue
            line: dict[str, Any] = {"student": student, "row": row, "seeds": len(recs)}
            for key in ("accuracy", "retention", "agreement", "cosine", "train_s"):
                line[key] = mean_ci([float(r[key]) for r in recs])
            line["teacher_accuracy"] = recs[0]["teacher_accuracy"]
            lines.append(line)
    return lines


def paired_differences(records: list[dict[str, Any]], base: str = "paper", key: str = "agreement") -> list[str]:
    """For each student and seeded row other than `base`: the mean and 95 % interval of the per-seed differences
    row - base of `key` (a seed fixes the initial weights and the batch order, so the pairs share them), as
    table lines for the seeds both rows ran."""
    out = []
    for student in dict.fromkeys(r["student"] for r in records):
        by = {(r["row"], r["seed"]): float(r[key]) for r in records if r["student"] == student}
        for row in SEEDED_ROWS:
            seeds = sorted(sd for (rw, sd) in by if rw == row and (base, sd) in by)
            if row == base or len(seeds) < 2:
                continue
            m, h = mean_ci([by[(row, sd)] - by[(base, sd)] for sd in seeds])
            out.append(f"{student}: {row} - {base}, {key} paired by seed ({len(seeds)} seeds): "
                       f"{100 * m:+.1f} ± {100 * h:.1f} points")  # fmt: skip
    return out


def format_table(lines: list[dict[str, Any]]) -> str:
    def cell(key: str, line: dict[str, Any], scale: float, digits: int) -> str:
        m, h = line[key]
        return f"{scale * m:.{digits}f}" + (f" ± {scale * h:.{digits}f}" if line["seeds"] > 1 else "")

    out = ["| student | row | seeds | zero-shot acc % | retention % | top-1 agreement % | cosine | train s |",
           "|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for ln in lines:
        out.append(f"| {ln['student']} | {ln['row']} | {ln['seeds']} | {cell('accuracy', ln, 100, 1)} | "
                   f"{cell('retention', ln, 100, 1)} | {cell('agreement', ln, 100, 1)} | {cell('cosine', ln, 1, 3)} | "
                   f"{cell('train_s', ln, 1, 0)} |")  # fmt: skip
    return "\n".join(out)


def plot_agreement(records: list[dict[str, Any]], path: Path) -> Path:
    """ablation.png: top-1 agreement with the teacher per row, one panel per student: every seed as a dot, the
    mean with its 95 % interval as a bar, `paper`'s mean as a dashed line (written atomically)."""
    import io

    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    lines = summarise(records)
    students = list(dict.fromkeys(ln["student"] for ln in lines))
    fig = Figure(figsize=(7.5, 1.2 + 0.35 * len(ROWS) * len(students)), dpi=110)
    FigureCanvasAgg(fig)
    for i, student in enumerate(students):
        ax = fig.add_subplot(len(students), 1, i + 1)
        mine = [ln for ln in lines if ln["student"] == student]
        for y, ln in enumerate(mine):
            seeds = [100 * r["agreement"] for r in records if r["student"] == student and r["row"] == ln["row"]]
            mean, half = (100 * v for v in ln["agreement"])
            ax.errorbar(mean, y, xerr=half or None, fmt="s", color="C0", capsize=3)
            ax.plot(seeds, [y] * len(seeds), "o", color="C1", alpha=0.6, markersize=4)
            if ln["row"] == "paper":
                ax.axvline(mean, color="grey", linestyle="--", linewidth=1)
        ax.set_yticks(range(len(mine)), [f"{ln['row']} ({ln['seeds']})" for ln in mine], fontsize=8)
        ax.invert_yaxis()
        ax.set_title(student, fontsize=9)
        ax.grid(True, axis="x", alpha=0.3)
    fig.axes[-1].set_xlabel("top-1 agreement with the teacher on held-out clips (%): seeds (dots), mean ± 95 % CI")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return atomic_write_bytes(path, buf.getvalue())


def run(opt: Options, log: Callable[[str], None] = _log) -> dict[str, Any]:
    """Every row of every student (reusing what OUT holds); writes results.json and table.md."""
    unknown = [r for r in opt.rows if r not in ROWS]
    if unknown:
        raise ValueError(f"unknown rows {unknown}; known: {list(ROWS)}")
    out = Path(opt.out)
    out.mkdir(parents=True, exist_ok=True)
    teacher, caches = prepare(opt, log)
    for student in opt.students:
        for row in opt.rows:
            for seed in range(1, (opt.seeds if row in SEEDED_ROWS else 1) + 1):
                run_row(opt, student, row, seed, caches, teacher, log)
    # every finished row under OUT, also those of another process running other students into the same OUT
    records = [read_json(p) for p in sorted(out.glob("*/*-s*/record.json"))]
    lines = summarise(records)
    paired = paired_differences(records)
    summary = {"options": asdict(opt), "records": records, "summary": lines, "paired": paired}
    atomic_write_text(out / "results.json", json.dumps(summary, indent=1) + "\n")
    atomic_write_text(out / "table.md", format_table(lines) + "\n" + "".join(f"\n{ln}" for ln in paired) + "\n")
    plot_agreement(records, out / "ablation.png")
    return summary


def main(argv: Sequence[str] | None = None) -> int:
    d = Options()
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=d.out, help="output folder (every stage and row is reused from it)")
    ap.add_argument("--quick", action="store_true", help="the CI size (tests/test_ablation.py)")
    ap.add_argument("--us8k", default=d.us8k, help="UrbanSound8K root")
    ap.add_argument("--teacher", default=None, help="an existing proxy teacher folder (default: build one)")
    ap.add_argument("--views", type=int, default=d.views, help="augmented views per cached clip")
    ap.add_argument("--student", action="append", help="student name (repeatable)")
    ap.add_argument("--rows", default=",".join(d.rows), help=f"comma-separated rows of {list(ROWS)}")
    ap.add_argument("--seeds", type=int, default=d.seeds, help=f"seeds of the {SEEDED_ROWS} rows")
    ap.add_argument("--epochs1", type=int, default=d.epochs1)
    ap.add_argument("--epochs2", type=int, default=d.epochs2)
    ap.add_argument("--crop-seconds", type=float, default=d.crop_seconds, help="training crops (0: whole clips)")
    ap.add_argument("--eval-limit", type=int, default=None, help="fold-3 clips evaluated (default: all)")
    ap.add_argument("--threads", type=int, default=d.threads, help="torch CPU threads")
    ap.add_argument("--device", default=d.device)
    a = ap.parse_args(argv)
    opt = quick_options(a.out) if a.quick else Options(out=a.out)
    opt.us8k, opt.teacher, opt.device, opt.threads = a.us8k, a.teacher, a.device, a.threads
    if not a.quick:
        opt.views, opt.rows, opt.seeds, opt.epochs1, opt.epochs2 = a.views, a.rows.split(","), a.seeds, a.epochs1, \
            a.epochs2  # fmt: skip
        opt.crop_seconds, opt.eval_limit = a.crop_seconds or None, a.eval_limit
        opt.students = a.student or opt.students
        unknown = [r for r in opt.rows if r not in ROWS]
        if unknown:
            ap.error(f"unknown rows {unknown}; known: {list(ROWS)}")
    import torch

    torch.set_num_threads(opt.threads)
    summary = run(opt)
    print("\n".join([format_table(summary["summary"]), *summary["paired"]]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
