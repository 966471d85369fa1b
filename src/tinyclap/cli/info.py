"""`tinyclap info`: the student zoo with parameters and MACs for a 5 s clip; the microcontroller students with
their measured int8 flash and TFLM arena (`--fit`: those that fit a device); `--teachers`: the teacher kinds."""

from __future__ import annotations

import argparse
import json

from tinyclap.cli._common import add_command, add_json_arg, add_pool_window_arg


def register(sub: argparse._SubParsersAction) -> None:
    p = add_command(sub, "info", "list the registered students with params and MACs for a 5 s clip")
    add_json_arg(p, "the list")
    p.add_argument("--teachers", action="store_true",
                   help="list the teacher kinds instead: audio format, prompt style, parameters, licence")
    p.add_argument("--fit", metavar="LIMITS",
                   help="microcontroller limits, e.g. sram=256k,flash=512k: list the MCU students whose measured "
                   "TFLM arena and int8 flash (model + 50 int8 classes) fit")
    add_pool_window_arg(p, default=1.0, help="MCU students: seconds of audio per backbone run (the device's window)",
                        window_alias=True)
    p.set_defaults(func=run)


def _mcu_rows(window: float) -> list[dict]:
    from tinyclap.deploy.mcu.budget import latency_estimates, rows_at

    return [{**r, "latency_estimate_ms": latency_estimates(r["macs_per_window"])} for r in rows_at(window)]


def run_fit(args: argparse.Namespace, mcu: list[dict]) -> int:
    """`--fit`: the MCU students whose measured arena and flash are within the limits."""
    from tinyclap.deploy.mcu.budget import fits, format_table, parse_fit

    limits = parse_fit(args.fit)
    chosen = fits(mcu, limits.get("sram"), limits.get("flash"))
    if args.json:
        print(json.dumps({"limits": limits, "window": args.pool_window, "fit": chosen}, indent=2))
    elif chosen:
        print(format_table(chosen))
    else:
        print(f"no MCU student fits {args.fit} at a {args.pool_window} s window")
    return 0


def run_teachers(args: argparse.Namespace) -> int:
    from tinyclap.models.teacher_kinds import list_teacher_kinds

    rows = list_teacher_kinds()
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    print(f"{'teacher':12s} {'towers':30s} {'audio':>14s} {'audio params':>13s} {'text params':>12s} {'fp32 MB':>8s}"
          "  licence")
    for r in rows:
        audio = f"{r['sample_rate'] / 1000:g} kHz, {r['window_s']:g} s"
        print(f"{r['kind']:12s} {r['towers']:30s} {audio:>14s} {r['audio_params']:>13,d} {r['text_params']:>12,d} "
              f"{r['fp32_mb']:>8.1f}  {r['licence']}")
    for r in rows:
        print(f"  {r['kind']}: --teacher {r['spec']}; prompts {r['template']!r}")
    return 0


def run(args: argparse.Namespace) -> int:
    if args.teachers:
        return run_teachers(args)
    from tinyclap.deploy.mcu.budget import format_table

    mcu = _mcu_rows(args.pool_window)
    if args.fit:
        return run_fit(args, mcu)
    from tinyclap.audio.frontend import LogMel
    from tinyclap.models.students import count_macs, count_params, create_student, list_students

    n_frames = LogMel().n_frames(220500)
    rows = []
    for name in list_students():
        model = create_student(name)
        rows.append({"name": name, "params": count_params(model), "macs": count_macs(model, n_frames)})
    if args.json:  # one list: the zoo, then the MCU students (their measured numbers under "mcu")
        rows += [{"name": r["student"], "params": r["params"], "macs": 5 * r["macs_per_second"], "mcu": r}
                 for r in mcu]
        print(json.dumps(rows, indent=2))
        return 0
    print(f"{'student':40s} {'params':>12s} {'MMACs (5 s)':>12s}")
    for r in rows:
        print(f"{r['name']:40s} {r['params']:>12,d} {r['macs'] / 1e6:>12.1f}")
    print(f"\nmicrocontroller students (int8 TFLM, measured; window {args.pool_window} s):")
    print(format_table(mcu))
    return 0
