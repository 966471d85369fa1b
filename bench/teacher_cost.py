"""What each teacher kind costs: cache building (clips/s), peak memory, and the text side.

Every kind is its real architecture at full size with RANDOM weights (seeded; speed and memory do not depend
on the values): MS CLAP 2022 (Cnn14 + BERT-base), MS CLAP 2023 (HTS-AT + GPT-2) and a transformers
`ClapModel(ClapConfig())` (LAION-CLAP's HTSAT + RoBERTa layout, unfused, its own feature extractor). Each
kind runs in its own process so that peak memory is its own:

- cache: `build_cache` over `--n` generated 5 s 44.1 kHz WAVs (decode, crop, log-mel, resample to the
  teacher's rate, teacher, write), `--batch-size` clips per teacher call, clips/s of the whole build;
- peak memory: the process's peak RSS (CPU) or `torch.cuda.max_memory_allocated` (`--device cuda`);
- text: ms per prompt to embed `--prompts` prompts of 12 tokens (random ids straight into the text tower,
  so no tokenizer is needed and every kind sees the same length), batched.

    python bench/teacher_cost.py [--n 16] [--device cpu|cuda] [--threads 1] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf
import torch

KINDS = ("msclap-2022", "msclap-2023", "hf-clap")
TOKENS = 12


def build(kind: str) -> Any:
    """The full-size teacher of `kind` with random weights (seed 0), in eval mode."""
    torch.manual_seed(0)
    if kind == "msclap-2022":
        from tinyclap.models.teacher import CLAPTeacher

        return CLAPTeacher().eval()
    if kind == "msclap-2023":
        from tinyclap.models.msclap2023 import CLAP2023Teacher

        return CLAP2023Teacher().eval()
    from transformers import ClapConfig, ClapFeatureExtractor, ClapModel

    from tinyclap.models.hfclap import HFClapTeacher

    return HFClapTeacher(ClapModel(ClapConfig()), ClapFeatureExtractor(truncation="rand_trunc"), None).eval()


def text_tower(kind: str, teacher: Any, ids: torch.Tensor) -> torch.Tensor:
    """(B, TOKENS) token ids -> (B, D) through the kind's text tower (no tokenizer)."""
    mask = torch.ones_like(ids)
    if kind == "msclap-2022":
        return teacher.caption_encoder(ids, mask)
    if kind == "msclap-2023":
        return teacher.caption_encoder(ids, mask)
    return teacher.model.text_projection(teacher.model.text_model(input_ids=ids, attention_mask=mask).pooler_output)


def make_wavs(folder: Path, n: int, seconds: float = 5.0, rate: int = 44100) -> list[Path]:
    rng = np.random.default_rng(0)
    t = np.arange(int(seconds * rate)) / rate
    paths = []
    for i in range(n):
        wave = 0.3 * np.sin(2 * np.pi * (220 + 40 * i) * t) + 0.05 * rng.standard_normal(t.size)
        paths.append(folder / f"clip{i:03d}.wav")
        sf.write(paths[-1], wave.astype(np.float32), rate, subtype="PCM_16")
    return paths


def peak_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def measure(kind: str, n: int, batch: int, prompts: int, device: str) -> dict[str, Any]:
    """One kind, in this process: build, cache `n` clips, embed `prompts` prompts."""
    from tinyclap.train.cache import build_cache

    dev = torch.device(device)
    teacher = build(kind).to(dev)
    params = sum(p.numel() for p in teacher.parameters())
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "wav").mkdir()
        files = make_wavs(Path(tmp) / "wav", n)
        t0 = time.perf_counter()
        build_cache(teacher, files, Path(tmp) / "cache", workers=0, batch_size=batch, progress=False, device=device)
        cache_s = time.perf_counter() - t0
    ids = torch.randint(3, 1000, (prompts, TOKENS), generator=torch.Generator().manual_seed(0)).to(dev)
    with torch.no_grad():
        text_tower(kind, teacher, ids[:2])  # warm-up
        t0 = time.perf_counter()
        text_tower(kind, teacher, ids)
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
        text_s = time.perf_counter() - t0
    return {"kind": kind, "params": params, "sample_rate": int(teacher.sample_rate),
            "window_s": float(getattr(teacher, "clip_seconds", 5.0)), "cache_clips_per_s": round(n / cache_s, 2),
            "peak_mb": round(peak_mb(dev), 1), "text_ms_per_prompt": round(1000 * text_s / prompts, 2),
            "device": str(dev), "threads": torch.get_num_threads(), "weights": "random (real architecture)"}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=16, help="5 s clips to cache per kind (default 16)")
    ap.add_argument("--batch-size", type=int, default=8, help="clips per teacher call (default 8)")
    ap.add_argument("--prompts", type=int, default=50, help="prompts for the text cost (default 50, ESC-50)")
    ap.add_argument("--device", default="cpu", help="cpu or cuda[:N] (default cpu)")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    ap.add_argument("--kinds", default=",".join(KINDS), help=f"comma-separated subset of {','.join(KINDS)}")
    ap.add_argument("--one", help=argparse.SUPPRESS)  # internal: measure one kind in this process
    ap.add_argument("--json", action="store_true", help="print the results as JSON")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if args.one:
        print(json.dumps(measure(args.one, args.n, args.batch_size, args.prompts, args.device)))
        return
    rows = []
    for kind in args.kinds.split(","):
        argv = [sys.executable, __file__, "--one", kind, "--n", str(args.n), "--batch-size", str(args.batch_size),
                "--prompts", str(args.prompts), "--device", args.device, "--threads", str(args.threads)]
        env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
        out = subprocess.run(argv, capture_output=True, text=True, env=env)
        if out.returncode:
            sys.exit(f"{kind}: {out.stderr.strip().splitlines()[-1] if out.stderr.strip() else out.returncode}")
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
    if args.json:
        print(json.dumps(rows, indent=2))
        return
    print("| teacher | params | audio | cache clips/s | peak MB | text ms/prompt | device, threads |")
    print("|---|---:|---|---:|---:|---:|---|")
    for r in rows:
        print(f"| {r['kind']} | {r['params'] / 1e6:.1f} M | {r['sample_rate'] / 1000:g} kHz, {r['window_s']:g} s | "
              f"{r['cache_clips_per_s']:.2f} | {r['peak_mb']:.0f} | {r['text_ms_per_prompt']:.1f} | "
              f"{r['device']}, {r['threads']} |")


if __name__ == "__main__":
    main()
