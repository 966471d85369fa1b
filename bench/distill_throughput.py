"""Distillation throughput: the reference recipe's per-step teacher vs our cached log-mels.

One process, one device, the same student and batch size, random data (no disk I/O in either mode):

  (a) reference  waveform (B, 220500) -> LogMel -> full MS CLAP 2022 Cnn14 audio tower + projection -> target,
                 then the student step on that log-mel; fp32, cuDNN disabled, as fpaissan/tinyCLAP's
                 `tinyclap.py` does (`torch.backends.cudnn.enabled = False`, teacher run every step). The
                 reference also runs the BERT text tower on the captions every step; that is NOT included
                 here, so (a) is a lower bound of the reference's cost.
  (b) cached     log-mel fp16 + target from (pinned) host memory -> device -> student step; bf16 autocast,
                 channels_last and cuDNN autotuning on CUDA (tinyclap.train.loop's defaults).
  (c) compiled   (b) with torch.compile(student), CUDA only (or with --compile on CPU).

The student step is `tinyclap.train.loop.train_step` (Adam, loss = -cosine) in all modes.

    python bench/distill_throughput.py                                  # GPU defaults: batch 64
    python bench/distill_throughput.py --device cpu --batch-size 8 --steps 5 --warmup 1 --threads 1
"""

from __future__ import annotations

import argparse
import contextlib
import json
import platform
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

import torch
import torch.nn.functional as F

from tinyclap._util import resolve_device
from tinyclap.audio import CLIP_SAMPLES
from tinyclap.audio.frontend import LogMel
from tinyclap.models.students import create_student
from tinyclap.models.teacher import AudioEncoder, TeacherConfig
from tinyclap.train.loop import train_step
from tinyclap.train.targets import cached_batch

DEFAULT_STUDENT = "phinet_alpha_1.50_beta_0.75_t0_6_N_7"


@contextlib.contextmanager
def backend_flags(*, cudnn_enabled: bool, benchmark: bool) -> Iterator[None]:
    """Set cuDNN flags for one measurement and restore them afterwards."""
    prev = torch.backends.cudnn.enabled, torch.backends.cudnn.benchmark
    torch.backends.cudnn.enabled, torch.backends.cudnn.benchmark = cudnn_enabled, benchmark
    try:
        yield
    finally:
        torch.backends.cudnn.enabled, torch.backends.cudnn.benchmark = prev


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(step: Callable[[int], torch.Tensor], steps: int, warmup: int, device: torch.device) -> float:
    """Seconds per step after `warmup` untimed steps (loss read back at the end, device synchronised)."""
    for i in range(warmup):
        step(i)
    sync(device)
    t0 = time.perf_counter()
    loss = None
    for i in range(steps):
        loss = step(warmup + i)
    if loss is not None:
        loss.item()
    sync(device)
    return (time.perf_counter() - t0) / steps


def make_student(name: str, embed_dim: int, device: torch.device, channels_last: bool) -> torch.nn.Module:
    torch.manual_seed(0)  # every mode starts from the same weights
    student = create_student(name, embed_dim=embed_dim).to(device).train()
    if channels_last:
        student.to(memory_format=torch.channels_last)
    return student


def bench_reference(args: argparse.Namespace, device: torch.device) -> float:
    """(a): waveform -> LogMel -> Cnn14 teacher audio tower -> target; fp32 student step; cuDNN off."""
    cfg = TeacherConfig.msclap2022() if args.teacher == "msclap2022" else TeacherConfig.tiny()
    frontend = LogMel().to(device)
    teacher = AudioEncoder(cfg.audio_channels, cfg.n_mels, cfg.classes, cfg.audio_embed_dim, cfg.d_proj)
    teacher = teacher.to(device).eval().requires_grad_(False)
    student = make_student(args.student, cfg.d_proj, device, channels_last=False)
    opt = torch.optim.Adam(student.parameters(), lr=0.012)
    g = torch.Generator(device=device).manual_seed(0)
    waves = [torch.randn(args.batch_size, CLIP_SAMPLES, device=device, generator=g) * 0.1 for _ in range(2)]

    def step(i: int) -> torch.Tensor:
        wave = waves[i % len(waves)]  # (B, N)
        logmel = frontend(wave)  # (B, T, 64)
        with torch.no_grad():
            target = F.normalize(teacher(logmel), dim=-1)  # (B, D)
        return train_step(student, opt, logmel, target, amp=False)

    with backend_flags(cudnn_enabled=False, benchmark=False):
        return timed(step, args.steps, args.warmup, device)


def bench_cached(args: argparse.Namespace, device: torch.device, compile: bool) -> float:
    """(b)/(c): fp16 log-mel + target from host memory, our default step (bf16 + channels_last on CUDA)."""
    cuda = device.type == "cuda"
    d = TeacherConfig.msclap2022().d_proj if args.teacher == "msclap2022" else TeacherConfig.tiny().d_proj
    student = make_student(args.student, d, device, channels_last=cuda)
    model = torch.compile(student) if compile else student
    opt = torch.optim.Adam(student.parameters(), lr=0.012)
    n_frames = LogMel().n_frames(CLIP_SAMPLES)
    g = torch.Generator().manual_seed(0)
    batches = []
    for _ in range(4):  # a small pool of host batches, as a DataLoader with pinned memory hands them over
        logmel = (torch.randn(args.batch_size, n_frames, 64, generator=g) * 10 - 40).half()
        target = F.normalize(torch.randn(args.batch_size, d, generator=g), dim=-1)
        batches.append((logmel.pin_memory(), target.pin_memory()) if cuda else (logmel, target))

    def step(i: int) -> torch.Tensor:
        logmel, target = cached_batch(batches[i % len(batches)], device)
        return train_step(model, opt, logmel, target, amp=cuda)

    with backend_flags(cudnn_enabled=True, benchmark=cuda):
        return timed(step, args.steps, args.warmup + (2 if compile else 0), device)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--student", default=DEFAULT_STUDENT)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--steps", type=int, default=20, help="timed steps per mode")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps per mode")
    p.add_argument("--device", default="auto")
    p.add_argument(
        "--threads", type=int, default=0, help="torch intra-op threads on CPU (0: torch's default)"
    )
    p.add_argument("--compile", action="store_true", help="also run (c) on CPU (always run on CUDA)")
    p.add_argument("--no-compile", action="store_true", help="skip (c) on CUDA")
    p.add_argument(
        "--teacher", choices=("msclap2022", "tiny"), default="msclap2022", help="teacher audio tower size"
    )
    p.add_argument("--json", action="store_true", help="print one JSON object")
    args = p.parse_args(argv)
    device = resolve_device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)

    results: dict[str, Any] = {}
    modes: list[tuple[str, Callable[[], float]]] = [
        ("a_reference", lambda: bench_reference(args, device)),
        ("b_cached", lambda: bench_cached(args, device, compile=False)),
    ]
    if (device.type == "cuda" and not args.no_compile) or args.compile:
        modes.append(("c_cached_compiled", lambda: bench_cached(args, device, compile=True)))
    for name, fn in modes:
        s = fn()
        results[name] = {"ms_per_step": s * 1e3, "steps_per_s": 1.0 / s, "clips_per_s": args.batch_size / s}
        if not args.json:
            r = results[name]
            print(
                f"{name:18s} {r['ms_per_step']:10.1f} ms/step {r['steps_per_s']:8.2f} steps/s "
                f"{r['clips_per_s']:9.1f} clips/s",
                flush=True,
            )
    base = results["a_reference"]["clips_per_s"]
    speedups = {k: v["clips_per_s"] / base for k, v in results.items() if k != "a_reference"}
    out = {
        "device": torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else f"cpu ({platform.processor() or platform.machine()})",
        "threads": torch.get_num_threads() if device.type == "cpu" else None,
        "student": args.student,
        "teacher": args.teacher,
        "batch_size": args.batch_size,
        "steps": args.steps,
        "warmup": args.warmup,
        "torch": torch.__version__,
        "results": results,
        "speedup_vs_reference": speedups,
    }
    if args.json:
        print(json.dumps(out, indent=2))
    else:
        for k, v in speedups.items():
            print(f"{k} vs a_reference: {v:.2f}x clips/s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
