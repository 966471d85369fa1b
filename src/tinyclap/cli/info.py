"""`tinyclap info`: the student zoo with parameters and MACs for a 5 s clip; `--teachers`: the teacher kinds."""

from __future__ import annotations

import argparse
import json

from tinyclap.cli._common import add_command, add_json_arg


def register(sub: argparse._SubParsersAction) -> None:
    p = add_command(sub, "info", "list the registered students with params and MACs for a 5 s clip")
    add_json_arg(p, "the list")
    p.add_argument("--teachers", action="store_true",
                   help="list the teacher kinds instead: audio format, prompt style, parameters, licence")
    p.set_defaults(func=run)


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
    from tinyclap.audio.frontend import LogMel
    from tinyclap.models.students import count_macs, count_params, create_student, list_students

    n_frames = LogMel().n_frames(220500)
    rows = []
    for name in list_students():
        model = create_student(name)
        rows.append({"name": name, "params": count_params(model), "macs": count_macs(model, n_frames)})
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    print(f"{'student':40s} {'params':>12s} {'MMACs (5 s)':>12s}")
    for r in rows:
        print(f"{r['name']:40s} {r['params']:>12,d} {r['macs'] / 1e6:>12.1f}")
    return 0
