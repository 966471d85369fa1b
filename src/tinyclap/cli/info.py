"""`tinyclap info`: the student zoo with parameters and MACs for a 5 s clip."""

from __future__ import annotations

import argparse
import json

from tinyclap.cli._common import add_command, add_json_arg


def register(sub: argparse._SubParsersAction) -> None:
    p = add_command(sub, "info", "list the registered students with params and MACs for a 5 s clip")
    add_json_arg(p, "the list")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
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
