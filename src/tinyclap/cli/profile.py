"""`tinyclap profile`: parameters, MACs, peak activation memory, file sizes and 1-thread CPU latency; with
`--target mcu`, the microcontroller students' measured flash and TFLM arena with ESTIMATED Cortex-M latency."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from tinyclap.cli._common import add_command, add_json_arg, add_model_arg, add_pool_window_arg


def register(sub: argparse._SubParsersAction) -> None:
    p = add_command(
        sub,
        "profile",
        "size, MACs, memory and 1-thread CPU latency of a student (torch, ORT fp32/int8) vs the teacher",
        description="Profiles one 5 s clip. See tinyclap.deploy.profile for the methods.",
    )
    add_model_arg(p, "student name, checkpoint or run folder (required unless --target mcu)")
    p.add_argument("--target", choices=("cpu", "mcu"), default="cpu",
                   help="cpu: measure here; mcu: the MCU students' measured int8 flash and TFLM arena per "
                   "window, with a latency ESTIMATE for Cortex-M4 @ 120 MHz and M7 @ 480 MHz")
    add_pool_window_arg(p, help="--target mcu: only this device window (seconds of audio per backbone run)",
                        window_alias=True)
    add_json_arg(p, "one object per model (one per line)")
    p.add_argument("--runs", type=int, default=20, help="timed runs per measurement")
    p.add_argument("--warmup", type=int, default=3, help="untimed runs first")
    p.add_argument("--threads", type=int, default=1, help="CPU threads")
    p.add_argument("--no-teacher", action="store_true", help="skip the teacher's audio tower (Cnn14, slow)")
    p.add_argument("--teacher-runs", type=int, help="timed runs for the teacher (none given: min(runs, 10))")
    p.add_argument("--no-int8", action="store_true", help="skip the int8 model")
    p.add_argument(
        "--int8-fp32-blocks",
        type=int,
        default=4,
        help="leading student blocks (stem, block 1, ...) kept fp32 in the int8 model (4 is what "
        "export's automatic search chose for phinet_alpha_1.50 on UrbanSound8K; use your manifest's value)",
    )
    p.add_argument(
        "--teacher-int8-fp32-blocks",
        type=int,
        default=0,
        help="the same for the teacher (0: all of Cnn14 int8, its fastest int8)",
    )
    p.add_argument(
        "--calibration", help="folder of real recordings for int8 calibration (none given: synthetic clips)"
    )
    p.set_defaults(func=run)


def _print_human(r: dict[str, Any]) -> None:
    m, p = r["macs"], r["peak_activation_bytes"]
    print(f"{r['model']}  ({r['params'] / 1e6:.2f} M parameters, {r['threads']} thread(s))")
    print(
        f"  MACs per 5 s clip: student {m['student'] / 1e6:.1f} M, "
        f"front end {m['frontend_torch'] / 1e6:.1f} M "
        f"(conv STFT {m['frontend_conv_stft'] / 1e6:.1f} M + mel {m['frontend_mel'] / 1e6:.1f} M; "
        f"factorised in ONNX {m['frontend_onnx_factorised'] / 1e6:.1f} M)"
    )
    print(
        f"  peak activations: model fp32 {p['model_fp32'] / 1e6:.2f} MB, "
        f"int8 {p['model_int8'] / 1e6:.2f} MB; "
        f"student fp32 {p['student_fp32'] / 1e6:.2f} MB, int8 {p['student_int8'] / 1e6:.2f} MB"
    )
    for name, size in r.get("file_bytes", {}).items():
        print(f"  {name:18s} {size / 1e6:8.2f} MB")
    print(f"  {'latency (ms)':14s} {'front end':>18s} {'student':>18s} {'model':>18s}  front-end share")
    for backend, v in r["latency"].items():
        cells = [
            f"{v[k]['median_ms']:8.2f} ± {v[k]['iqr_ms'] / 2:6.2f}" for k in ("frontend", "student", "model")
        ]
        share = r["time_split"][backend]["frontend_share"]
        print(f"  {backend:14s} " + " ".join(f"{c:>18s}" for c in cells) + f"  {100 * share:5.1f} %")


def run(args: argparse.Namespace) -> int:
    from tinyclap.deploy.clips import find_audio, load_clips, pick
    from tinyclap.deploy.profile import TEACHER_NAME, compare, profile_model

    if args.target == "mcu":
        return _run_mcu(args)
    if not args.model:
        raise ValueError("--model is required (unless --target mcu)")
    if args.runs < 1 or args.threads < 1:
        raise ValueError("--runs and --threads must be >= 1")
    cal = None
    if args.calibration:
        cal = load_clips(pick(find_audio(args.calibration), 8)).waves
        if len(cal) == 0:
            raise ValueError(f"{args.calibration}: no decodable audio for calibration")

    def log(msg: str) -> None:
        print(msg, file=sys.stderr)

    common = dict(
        warmup=args.warmup,
        threads=args.threads,
        int8=not args.no_int8,
        int8_fp32_blocks=args.int8_fp32_blocks,
        log=log,
    )
    student = profile_model(args.model, runs=args.runs, calibration=cal, **common)
    results = [student]
    if not args.no_teacher:
        teacher_runs = args.teacher_runs or min(args.runs, 10)
        # the teacher's int8 calibration on at most 2 clips: the 80 M-parameter Cnn14 is slow to calibrate
        common["int8_fp32_blocks"] = args.teacher_int8_fp32_blocks
        teacher = profile_model(
            TEACHER_NAME, runs=teacher_runs, calibration=None if cal is None else cal[:2], **common
        )
        teacher["role"] = "teacher audio tower (Cnn14 + projection, random weights)"
        student["vs_teacher"] = compare(student, teacher)
        results.append(teacher)
    for r in results:
        if args.json:
            print(json.dumps(r))
        else:
            _print_human(r)
    if not args.json and "vs_teacher" in student:
        c = student["vs_teacher"]
        print(
            f"{student['model']} {c['student_backend']} model: {c['student_model_ms']:.2f} ms; "
            "speed-up over the "
            + ", ".join(
                f"teacher {k.removeprefix('speedup_vs_teacher_')} {v:.1f}x"
                for k, v in c.items()
                if k.startswith("speedup")
            )
        )
    return 0


def _run_mcu(args: argparse.Namespace) -> int:
    """The measured MCU table (tinyclap.deploy.mcu.budget), filtered by --model (an MCU name or preset)."""
    from tinyclap.deploy.mcu.budget import CORES, format_table, latency_estimates, load_measured, rows_at
    from tinyclap.models.mcu import resolve_preset

    table = load_measured()
    rows = rows_at(args.pool_window, table) if args.pool_window is not None else table["rows"]
    if args.model:
        name = resolve_preset(args.model)
        rows = [r for r in rows if r["student"] == name]
        if not rows:
            raise ValueError(f"no MCU measurements for {args.model!r} (measured: "
                             f"{sorted({r['student'] for r in table['rows']})})")
    if args.json:
        for r in rows:
            est = {"ms_per_window": latency_estimates(r["macs_per_window"]),
                   "basis": {c: v[2] for c, v in CORES.items()}, "note": "ESTIMATE, not measured"}
            print(json.dumps({**r, "latency_estimate": est}))
        return 0
    print(format_table(rows))
    print(f"measured by: {table['command']}")
    return 0
