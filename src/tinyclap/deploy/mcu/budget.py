"""What each microcontroller student costs: measured TFLM arena and int8 flash, MACs, latency estimates.

`measured.json` (beside this module) is written by `bench/mcu_budget.py` (needs the `mcu` extra): for every
MCU preset and window it converts the student to full-int8 TFLite, runs it in the tflite-micro interpreter
and records the arena TFLM allocated and the bytes of both graphs. `tinyclap info` and
`tinyclap profile --target mcu` read that table (torch-free, no converter needed); only MACs and parameters
are computed live.

Latency is an ESTIMATE, never a measurement: MACs x cycles per MAC / clock. The cycles-per-MAC figures are
assumptions stated in `CORES` with their basis (CMSIS-NN's int8 kernels widen to 16 bits and use the
dual 16-bit multiply-accumulate SMLAD: Lai, Suda & Chandra, "CMSIS-NN: Efficient Neural Network Kernels for
Arm Cortex-M CPUs", arXiv:1801.06601, 2018, section 3), not timings of this model on a board.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

MEASURED_FILE = Path(__file__).with_name("measured.json")
CLASSES_FOR_FLASH = 50  # the flash budget counts a 50-class int8 class matrix
REGENERATE = "python bench/mcu_budget.py  (needs the mcu extra: pip install 'tinyclap[mcu]')"

# name -> (clock Hz, cycles per MAC, basis). SMLAD does 2 16-bit MACs per cycle (0.5 cycle/MAC at best);
# operand loads, im2col, requantisation and the depthwise kernels cost more: 2.0 on the M4 (single-issue)
# and 1.0 on the dual-issue M7 are assumed.
CORES: dict[str, tuple[float, float, str]] = {
    "cortex-m4@120MHz": (120e6, 2.0, "assumed 2.0 cycles/MAC (CMSIS-NN SMLAD kernels, arXiv:1801.06601)"),
    "cortex-m7@480MHz": (480e6, 1.0, "assumed 1.0 cycle/MAC (CMSIS-NN SMLAD kernels, dual issue)"),
}


def load_measured(path: Path = MEASURED_FILE) -> dict[str, Any]:
    """The measured table: {"command", "versions", "rows": [...]} (rows: student, preset, k, window, arena and
    flash bytes, MACs, params)."""
    from tinyclap._util import read_json

    return read_json(path)


def latency_estimates(macs: int) -> dict[str, float]:
    """ESTIMATED milliseconds on each core in `CORES` for `macs` multiply-accumulates."""
    return {core: round(1e3 * macs * cpm / hz, 1) for core, (hz, cpm, _) in CORES.items()}


_SIZE_RE = re.compile(r"(\d+(?:\.\d+)?)\s*([kmKM]i?[bB]?|[bB]?)")


def parse_size(text: str) -> int:
    """'256k' / '256KiB' / '0.5M' / '262144' -> bytes (k = 1024)."""
    m = _SIZE_RE.fullmatch(text.strip())
    if m is None:
        raise ValueError(f"not a size: {text!r} (e.g. 256k, 1M, 262144)")
    unit = m.group(2).lower()[:1]
    return int(float(m.group(1)) * {"k": 1024, "m": 1024 * 1024}.get(unit, 1))


def parse_fit(text: str) -> dict[str, int]:
    """'sram=256k,flash=512k' -> {"sram": 262144, "flash": 524288} (either may be left out)."""
    out: dict[str, int] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        key, sep, value = part.partition("=")
        if not sep or key.strip() not in ("sram", "flash"):
            raise ValueError(f"--fit takes sram=SIZE,flash=SIZE, got {part!r}")
        out[key.strip()] = parse_size(value)
    if not out:
        raise ValueError("--fit needs sram=SIZE and/or flash=SIZE")
    return out


def rows_at(window: float, table: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """The measured rows for `window` seconds (ValueError naming the measured windows if there are none)."""
    table = load_measured() if table is None else table
    rows = [r for r in table["rows"] if abs(float(r["window"]) - window) < 1e-6]
    if not rows:
        have = sorted({float(r["window"]) for r in table["rows"]})
        raise ValueError(f"no measurements for a {window} s window (measured: {have}); regenerate: {REGENERATE}")
    return rows


def fits(rows: list[dict[str, Any]], sram: int | None, flash: int | None) -> list[dict[str, Any]]:
    """The rows whose measured arena and flash (model + 50 int8 classes) are within the limits."""
    return [r for r in rows if (sram is None or r["arena_bytes"] <= sram)
            and (flash is None or r["flash_bytes"]["total"] <= flash)]


def format_table(rows: list[dict[str, Any]]) -> str:
    """The MLPerf-Tiny-style text table (latency labelled as an estimate)."""
    cores = list(CORES)
    head = (f"{'preset':8s} {'student':40s} {'k':>4s} {'win s':>5s} {'params':>9s} {'MMAC/s':>7s} "
            f"{'flash KiB':>9s} {'arena KiB':>9s} " + " ".join(f"{'est. ms ' + c.split('@')[0][-2:]:>10s}"
                                                               for c in cores))
    lines = [head]
    for r in rows:
        est = latency_estimates(r["macs_per_window"])
        lines.append(
            f"{r.get('preset') or '-':8s} {r['student']:40s} {r['k']:>4d} {r['window']:>5.2f} {r['params']:>9,d} "
            f"{r['macs_per_second'] / 1e6:>7.1f} {r['flash_bytes']['total'] / 1024:>9.1f} "
            f"{r['arena_bytes'] / 1024:>9.1f} " + " ".join(f"{est[c]:>10.1f}" for c in cores)
        )
    lines.append("flash: both int8 graphs + a 50-class int8 class matrix; arena: measured by TFLM's interpreter; "
                 "est. ms: per window, an ESTIMATE (" + "; ".join(f"{c}: {v[2]}" for c, v in CORES.items()) + ")")
    return "\n".join(lines)


def dump(table: dict[str, Any]) -> str:
    return json.dumps(table, indent=2) + "\n"
