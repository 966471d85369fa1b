"""Measure every MCU preset on TensorFlow Lite Micro: int8 flash and the arena TFLM allocates, per window.

    OMP_NUM_THREADS=1 python bench/mcu_budget.py [--windows 0.5,1,2] [--out src/tinyclap/deploy/mcu/measured.json]

Needs the `mcu` extra (pip install 'tinyclap[mcu]'). Each preset is built with its latent size k and random
weights (BatchNorm statistics fitted to a few real UrbanSound8K clips so activations have realistic ranges);
arena and flash do not depend on the weights' values. Writes the table `tinyclap info` and
`tinyclap profile --target mcu` read.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

from tinyclap._util import atomic_write_text, versions
from tinyclap.audio.frontend import LogMel
from tinyclap.deploy.mcu import budget, graphs
from tinyclap.deploy.mcu.tflm import convert_int8, measure_arena
from tinyclap.models.mcu import PRESETS
from tinyclap.models.students import count_macs, count_params, create_student

DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "UrbanSound8K" / "audio" / "fold1"


def _clips(n: int = 8) -> list[np.ndarray]:
    from tinyclap.audio.io import load_audio

    return [load_audio(p, 44100) for p in sorted(DATA.glob("*.ogg"))[:n]]


def measure(preset: str, window: float, waves: list[np.ndarray]) -> dict:
    p = PRESETS[preset]
    torch.manual_seed(0)
    student = create_student(p.student, embed_dim=p.k)
    lm = LogMel()
    samples, frames = graphs.window_frames(student, lm, window)
    with torch.no_grad():
        mels = lm(torch.from_numpy(np.stack([w[:samples] for w in waves])))
    student.train()
    with torch.no_grad():
        student(mels)  # BatchNorm statistics of real clips
    student.eval()
    norm = graphs.input_norm(student)
    cal = [graphs.window_logmels(w, samples, lm, norm) for w in waves]
    wins, feats = graphs.calibration_sets(student, cal)
    backbone = convert_int8(graphs.Backbone(student).eval(), wins[0], wins)
    head = convert_int8(student.projection.eval(), feats[0], feats)
    arena = measure_arena(backbone) + measure_arena(head)
    flash = {"backbone": len(backbone), "head": len(head), "classes": budget.CLASSES_FOR_FLASH * p.k}
    flash["total"] = sum(flash.values())
    macs = count_macs(student, frames)
    return {"preset": preset, "student": p.student, "k": p.k, "window": window, "frames": frames,
            "params": count_params(student), "macs_per_window": macs,
            "macs_per_second": int(round(macs / window)), "arena_bytes": arena, "flash_bytes": flash,
            "arena_budget": p.arena_budget, "flash_budget": p.flash_budget}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--windows", default="0.5,1,2")
    ap.add_argument("--out", default=str(budget.MEASURED_FILE))
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    waves = _clips()
    rows = []
    for preset in PRESETS:
        for w in (float(x) for x in args.windows.split(",")):
            rows.append(measure(preset, w, waves))
            print(rows[-1], file=sys.stderr)
    table = {"command": "OMP_NUM_THREADS=1 python bench/mcu_budget.py --windows " + args.windows,
             "versions": versions("torch", "litert-torch", "tflite-micro"), "rows": rows}
    atomic_write_text(args.out, budget.dump(table))
    print(budget.format_table(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
