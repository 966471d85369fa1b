"""Latency / size table of the students (and the teacher's audio tower) for the README.

    python bench/latency.py [--students NAME,NAME] [--runs 20] [--threads 1] [--teacher] [--json-out F]

Runs `tinyclap.deploy.profile.profile_model` for each model (one 5 s clip, `--threads` CPU threads) and prints a
Markdown table: parameters, MACs (student; front end as PyTorch runs it / as the ONNX export runs it),
peak activation memory (fp32 / int8), and the whole model's median latency ± IQR/2 for PyTorch fp32,
ONNX Runtime fp32 and ONNX Runtime int8, plus the front end's share of the ORT fp32 time.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    from tinyclap.deploy.clips import find_audio, load_clips, pick
    from tinyclap.deploy.profile import TEACHER_NAME, markdown_table, profile_model
    from tinyclap.models.students import list_students

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--students", help="comma-separated student names (default: the registered PhiNets)")
    p.add_argument("--runs", type=int, default=20)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--teacher", action="store_true", help="add the teacher's audio tower (Cnn14, slow)")
    p.add_argument("--teacher-runs", type=int, default=5)
    p.add_argument(
        "--int8-fp32-blocks", type=int, default=4, help="leading student blocks kept fp32 in int8 (4)"
    )
    p.add_argument(
        "--calibration", help="folder of real recordings for int8 calibration (default: synthetic)"
    )
    p.add_argument("--json-out", help="also write the full profiles as JSON lines")
    args = p.parse_args(argv)

    names = args.students.split(",") if args.students else [n for n in list_students() if n != TEACHER_NAME]
    cal = load_clips(pick(find_audio(args.calibration), 8)).waves if args.calibration else None
    rows = []
    for name in names + ([TEACHER_NAME] if args.teacher else []):
        runs = args.teacher_runs if name == TEACHER_NAME else args.runs
        print(f"profiling {name} ...", file=sys.stderr)
        rows.append(
            profile_model(
                name,
                runs=runs,
                warmup=args.warmup,
                threads=args.threads,
                int8_fp32_blocks=0 if name == TEACHER_NAME else args.int8_fp32_blocks,
                calibration=None if cal is None else cal[: 2 if name == TEACHER_NAME else None],
            )
        )
    print(markdown_table(rows))
    if args.teacher:
        t = rows[-1]["latency"]
        print()
        print("| student | int8 ms | x teacher torch fp32 | x teacher ORT fp32 | x teacher ORT int8 |")
        print("|---|---|---|---|---|")
        for r in rows[:-1]:
            s = r["latency"]["ort_int8"]["model"]["median_ms"]
            ratios = [t[b]["model"]["median_ms"] / s for b in ("torch_fp32", "ort_fp32", "ort_int8")]
            print(f"| `{r['model']}` | {s:.1f} | " + " | ".join(f"{x:.0f}x" for x in ratios) + " |")
    if args.json_out:
        Path(args.json_out).write_text("".join(json.dumps(r) + "\n" for r in rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
