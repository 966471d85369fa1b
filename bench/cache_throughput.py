"""Throughput of `tinyclap cache` (decode + resample + log-mel [+ teacher] + write) and of `CachedDataset`.

Generates `--n` 5 s WAV files (16-bit PCM, what the corpora ship) at 44.1 kHz, and `--n-resample` each at
22.05 and 48 kHz, in a temp folder, then measures, in clips/s:

- cache build, teacher EXCLUDED (a constant 1024-d "teacher" that costs nothing), on one core
  (`workers=0`, one torch thread: the per-core figure) and on all cores (`workers=cpu_count`);
- the same with the tiny random CLAP teacher (`TeacherConfig.tiny()`); the real teacher's cost depends on
  the device, so it is not benchmarked here;
- stages alone on one core: decode (`load_audio`), the FFT log-mel the cache uses vs the conv1d `LogMel`;
- `CachedDataset` through a DataLoader (batch 64, shuffled, workers 0 and 2) against a student's CPU
  training step (forward + backward + AdamW, batch 64) to check the loader keeps >= 10x ahead.

    python bench/cache_throughput.py [--n 200] [--json]

Target: >= 150 clips/s per core for 5 s 44.1 kHz WAV (decode + resample + log-mel).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf
import torch
import torch.nn.functional as F

from tinyclap.audio import CLIP_SAMPLES, load_audio
from tinyclap.audio.frontend import FFTLogMel, LogMel
from tinyclap.train.cache import CachedDataset, build_cache

SMALLEST_STUDENT = "phinet_alpha_0.75_beta_0.75_t0_4_N_4"


class FreeTeacher(torch.nn.Module):
    """A teacher that costs nothing: a constant unit vector per clip (isolates the cache's own work)."""

    sample_rate = 44100
    embed_dim = 1024

    def embed_waveform(self, wave: torch.Tensor) -> torch.Tensor:  # (B, N) -> (B, 1024)
        return F.normalize(torch.ones(wave.shape[0], self.embed_dim, device=wave.device), dim=-1)


def make_wavs(folder: Path, n: int, rate: int, seconds: float = 5.0) -> list[Path]:
    """`n` files of tones + noise (so codecs and the log-mel see non-trivial audio)."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(rate)
    t = np.arange(int(seconds * rate)) / rate
    paths = []
    for i in range(n):
        wave = 0.2 * np.sin(2 * np.pi * (110 + 17 * i) * t) + 0.05 * rng.standard_normal(t.size)
        path = folder / f"clip{i:04d}.wav"
        sf.write(path, wave.astype(np.float32), rate, subtype="PCM_16")
        paths.append(path)
    return paths


def threads(n: int) -> Callable[[], None]:
    """Set torch's intra-op threads; returns the function restoring the previous value."""
    old = torch.get_num_threads()
    torch.set_num_threads(n)
    return lambda: torch.set_num_threads(old)


def cpu_seconds() -> float:
    """User + system CPU time of this process and its finished children (DataLoader workers)."""
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def cache_run(teacher: Any, files: list[Path], out: Path, workers: int, one_core: bool) -> dict[str, Any]:
    """One cache build; clips/s by wall clock and per CPU-second (robust to other load on the machine)."""
    shutil.rmtree(out, ignore_errors=True)
    restore = threads(1) if one_core else (lambda: None)
    cpu0 = cpu_seconds()
    try:
        rep = build_cache(teacher, files, out, workers=workers, batch_size=32, progress=False, shard_size=512)
    finally:
        restore()
    cpu = cpu_seconds() - cpu0
    t = rep.timings
    return {
        "clips": rep.crops_written,
        "wall_s": round(t["wall_s"], 3),
        "cpu_s": round(cpu, 3),
        "clips_per_s": round(rep.clips_per_s, 1),
        "clips_per_cpu_s": round(rep.crops_written / cpu, 1),
        "decode_cpu_s": t["decode_cpu_s"],
        "logmel_s": t["logmel_s"],
        "teacher_s": t["teacher_s"],
        "write_s": t["write_s"],
    }


def stage_bench(files: list[Path], batch: int = 32) -> dict[str, float]:
    """Per-stage clips per CPU-second on one thread (process time: robust to other load)."""
    restore = threads(1)
    try:
        t0 = time.process_time()
        waves = [load_audio(p) for p in files[:batch]]
        decode = batch / (time.process_time() - t0)
        x = torch.from_numpy(np.stack([w[:CLIP_SAMPLES] for w in waves]))  # (B, 220500)
        out = {"decode_clips_per_s": round(decode, 1)}
        with torch.inference_mode():
            for name, fn in (("fft_logmel", FFTLogMel()), ("conv_logmel", LogMel())):
                fn(x[:2])
                t0 = time.process_time()
                fn(x)
                out[f"{name}_clips_per_s"] = round(batch / (time.process_time() - t0), 1)
    finally:
        restore()
    return out


def loader_bench(cache: Path, workers: int, seconds: float = 3.0) -> float:
    ds = CachedDataset(cache, split="all")
    loader = torch.utils.data.DataLoader(ds, batch_size=64, shuffle=True, num_workers=workers, drop_last=True)
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        for logmel, _target in loader:
            n += logmel.shape[0]
    return n / (time.perf_counter() - t0)


def train_step_bench(name: str, steps: int = 3) -> float:
    from tinyclap.models.students import create_student

    model = create_student(name).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    x = torch.randn(64, 690, 64)
    y = F.normalize(torch.randn(64, 1024), dim=-1)

    def step() -> None:
        loss = (1 - F.cosine_similarity(model(x), y)).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()

    step()  # warm-up
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    return 64 * steps / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=200, help="44.1 kHz files (default 200)")
    ap.add_argument("--n-resample", type=int, default=100, help="files at 22.05 and at 48 kHz (default 100)")
    ap.add_argument("--student", default=SMALLEST_STUDENT, help="student for the training-step comparison")
    ap.add_argument("--tmp", help="work folder (default: a new temp folder, deleted afterwards)")
    ap.add_argument("--json", action="store_true", help="print the results as JSON")
    args = ap.parse_args()

    from tinyclap.models.teacher import CLAPTeacher, TeacherConfig

    cores = os.cpu_count() or 1
    root = Path(args.tmp) if args.tmp else Path(tempfile.mkdtemp(prefix="tinyclap-bench-"))
    try:
        files = make_wavs(root / "wav44k", args.n, 44100)
        res: dict[str, Any] = {"cores": cores, "n_files": args.n, "torch_threads": torch.get_num_threads()}
        res["stages_1core"] = stage_bench(files)
        free, tiny = FreeTeacher(), CLAPTeacher(TeacherConfig.tiny()).eval()
        runs = res["cache"] = {}
        runs["44.1k, no teacher, 1 core"] = cache_run(free, files, root / "c", 0, True)
        for rate in (22050, 48000):
            more = make_wavs(root / f"wav{rate}", args.n_resample, rate)
            runs[f"{rate / 1000:g}k, no teacher, 1 core"] = cache_run(free, more, root / "c", 0, True)
        runs[f"44.1k, no teacher, {cores} cores"] = cache_run(free, files, root / "c", cores, False)
        runs["44.1k, tiny teacher, 1 core"] = cache_run(tiny, files, root / "c", 0, True)
        runs[f"44.1k, tiny teacher, {cores} cores"] = cache_run(tiny, files, root / "c", cores, False)
        for key, row in runs.items():
            row["per_core_wall"] = round(row["clips_per_s"] / (cores if f"{cores} cores" in key else 1), 1)
        res["load_average"] = [round(x, 2) for x in os.getloadavg()]
        # the loader reads a cache with 1024-d targets, as the real teacher's
        cache_run(free, files, root / "c", cores, False)
        res["loader_clips_per_s"] = {f"workers={w}": round(loader_bench(root / "c", w), 1) for w in (0, 2)}
        step = train_step_bench(args.student)
        res["train_step"] = {"student": args.student, "batch": 64, "clips_per_s": round(step, 1)}
        res["loader_over_step"] = {k: round(v / step, 1) for k, v in res["loader_clips_per_s"].items()}
    finally:
        if not args.tmp:
            shutil.rmtree(root, ignore_errors=True)

    if args.json:
        print(json.dumps(res, indent=2))
        return
    print(
        f"cache build (5 s clips, {cores} cores, torch {torch.__version__}); target >= 150 clips/s per core"
    )
    print(f"(load average at the end: {res['load_average']}; per CPU-second is robust to other load)")
    head = ("run", "clips/s", "/core", "/cpu-s", "decode", "log-mel", "teacher")
    print(
        f"{head[0]:30s} {head[1]:>8s} {head[2]:>7s} {head[3]:>7s} {head[4]:>8s} {head[5]:>8s} {head[6]:>8s}"
    )
    for key, r in res["cache"].items():
        print(
            f"{key:30s} {r['clips_per_s']:8.1f} {r['per_core_wall']:7.1f} {r['clips_per_cpu_s']:7.1f} "
            f"{r['decode_cpu_s']:7.2f}s {r['logmel_s']:7.2f}s {r['teacher_s']:7.2f}s"
        )
    s = res["stages_1core"]
    fft, conv = s["fft_logmel_clips_per_s"], s["conv_logmel_clips_per_s"]
    print(
        f"stages, 1 core: decode {s['decode_clips_per_s']:.0f} clips/s, FFT log-mel {fft:.0f} clips/s", end=""
    )
    print(f" (conv1d LogMel {conv:.0f} clips/s)")
    for k, v in res["loader_clips_per_s"].items():
        ratio = res["loader_over_step"][k]
        print(f"CachedDataset loader, batch 64, {k}: {v:.0f} clips/s = {ratio:.0f}x the training step")
    ts = res["train_step"]
    print(f"training step ({ts['student']}, batch 64, CPU): {ts['clips_per_s']:.1f} clips/s")


if __name__ == "__main__":
    main()
