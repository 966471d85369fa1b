"""Timeline speed: `classify --window 5 --hop H` on a long recording, as multiples of real time, 1 thread.

    python bench/timeline_speed.py --export runs/i13-export150 --int8 --minutes 10 --hops 1,2.5,5

Writes a synthetic recording (tones and noise, 44.1 kHz 16-bit WAV; the content does not change the
cost), then times, single-threaded (ONNX Runtime intra-op threads 1, BLAS/OpenMP 1):

- `sliced`: `tinyclap.Classifier.timeline`, the front end run once over the streamed audio (numpy FFT) and
  each window's log-mel sliced from it into `student.onnx` (what `tinyclap classify --window` runs);
- `per-window`: the previous way, every 5 s window through `model.onnx` (front end included) on its own
  (the same `Classifier.iter_timeline` with the sliced front end switched off);
- the parts of `sliced`: decoding + resampling alone, and the front end alone.

Real-time factor = seconds of audio / seconds of wall time (best of `--repeats`).
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import soundfile as sf  # noqa: E402


def write_recording(path: Path, seconds: int, rate: int = 44100) -> Path:
    rng = np.random.default_rng(0)
    with sf.SoundFile(path, "w", samplerate=rate, channels=1, subtype="PCM_16") as f:
        for s0 in range(0, seconds, 30):
            t = np.arange(s0 * rate, min(seconds, s0 + 30) * rate) / rate
            f.write(0.3 * np.sin(2 * np.pi * (300.0 + 100 * (s0 // 30 % 7)) * t) + 0.05 * rng.standard_normal(t.size))
    return path


def best_of(fn, repeats: int) -> tuple[float, float]:  # type: ignore[no-untyped-def]
    """(wall, CPU) seconds of the fastest of `repeats` runs: on a shared machine the CPU time of this one
    thread is the cost; the wall time adds waiting for a core."""
    runs = []
    for _ in range(repeats):
        t0, c0 = time.perf_counter(), time.process_time()
        fn()
        runs.append((time.perf_counter() - t0, time.process_time() - c0))
    return min(runs)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--export", default="runs/i13-export150", help="export folder (with --quantize int8 for --int8)")
    ap.add_argument("--int8", action="store_true", help="the int8 models")
    ap.add_argument("--minutes", type=float, default=10.0, help="length of the synthetic recording")
    ap.add_argument("--hops", default="1,2.5,5", help="hops to time (s), comma-separated")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--per-window-minutes", type=float, default=2.0, help="audio timed the per-window way (slow)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)

    from tinyclap.audio import stream_audio
    from tinyclap.classifier import Classifier
    from tinyclap.timeline import iter_windows

    seconds = int(args.minutes * 60)
    out: dict = {"export": args.export, "int8": args.int8, "audio_seconds": seconds, "threads": 1, "hops": {}}
    with tempfile.TemporaryDirectory() as tmp:
        wav = write_recording(Path(tmp) / "long.wav", seconds)
        short = write_recording(Path(tmp) / "short.wav", int(args.per_window_minutes * 60))
        clf = Classifier.from_export(args.export, int8=args.int8, threads=1)
        per_window = Classifier.from_export(args.export, int8=args.int8, threads=1, batch_size=16)
        per_window.engine.frontend = None  # each window's waveform through model.onnx, front end included
        decode = lambda: sum(c.shape[0] for c in stream_audio(wav, 44100, 10.0))  # noqa: E731
        out["decode_s"], out["decode_cpu_s"] = best_of(decode, args.repeats)
        fe = clf.engine.frontend  # NumpyLogMel, from the manifest's front-end settings
        out["frontend_s"], out["frontend_cpu_s"] = best_of(
            lambda: sum(1 for _ in iter_windows(stream_audio(wav, 44100, 10.0), 220500, 220500, fe)), args.repeats)
        for hop in (float(h) for h in args.hops.split(",")):
            t_sl, c_sl = best_of(lambda hop=hop: sum(1 for _ in clf.iter_timeline(wav, 5.0, hop)), args.repeats)
            scale = seconds / int(args.per_window_minutes * 60)
            t_pw, c_pw = best_of(lambda hop=hop: sum(1 for _ in per_window.iter_timeline(short, 5.0, hop)), 1)
            out["hops"][f"{hop:g}"] = {
                "windows": int(np.ceil(seconds / hop)), "sliced_s": t_sl, "sliced_cpu_s": c_sl,
                "sliced_x_realtime": seconds / t_sl, "sliced_x_realtime_cpu": seconds / c_sl,
                "per_window_s": t_pw * scale, "per_window_cpu_s": c_pw * scale,
                "per_window_x_realtime": seconds / (t_pw * scale),
                "per_window_x_realtime_cpu": seconds / (c_pw * scale)}
    if args.json:
        print(json.dumps(out, indent=1))
        return 0
    print(f"{args.export} ({'int8' if args.int8 else 'fp32'}), {seconds} s of audio, 1 thread")
    print(f"  x real time by CPU time (by wall time): decoding alone {seconds / out['decode_cpu_s']:.0f}x "
          f"({seconds / out['decode_s']:.0f}x); decoding + front end once {seconds / out['frontend_cpu_s']:.0f}x "
          f"({seconds / out['frontend_s']:.0f}x)")
    print("| hop (s) | windows | front end once, sliced: x real time CPU (wall) | per window, model.onnx: x real "
          "time CPU (wall) |")
    print("|---|---|---|---|")
    for hop, r in out["hops"].items():
        print(f"| {hop} | {r['windows']} | {r['sliced_x_realtime_cpu']:.0f}x ({r['sliced_x_realtime']:.0f}x) | "
              f"{r['per_window_x_realtime_cpu']:.0f}x ({r['per_window_x_realtime']:.0f}x) |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
