"""The C log-mel front end for a microcontroller: its constants as C, its sources, its memory needs (torch-free).

`write_frontend_sources(out_dir)` writes what a firmware compiles to get the features a tinyclap student
expects: `tinyclap_logmel.h/.c` (the code, copied from `c/`: C99, static buffers, no malloc, float32 in and out, an
FFT of its own in 32-bit block floating point, or CMSIS-DSP's `arm_rfft_fast_f32` with
`-DTINYCLAP_USE_CMSIS_DSP`) and `tinyclap_logmel_tables.h/.c` (generated here from the `LogMel` settings:
the analysis window and a cosine table for the FFT's twiddles as integers in units of 2^-30, the Slaney mel
filterbank stored as bands (first bin, width, weights) instead of a dense (n_mels, n_fft / 2 + 1) matrix:
2.8 KB instead of 131 KB for MS CLAP's settings, and the log floor). Floats are written as C99 hexadecimal
literals: the compiler reads back exactly the float32 values computed here.

`frontend_memory()` gives the static needs: table flash and the one work buffer in RAM. Measured code
size, stack and RAM of a Cortex-M4 build are in bench/mcu_frontend.py (and the README).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tinyclap._util import atomic_write_files
from tinyclap.audio.mel import CONFIG_KEYS, DEFAULTS, NumpyLogMel, mel_filterbank

C_DIR = Path(__file__).with_name("c")
SOURCES = ("tinyclap_logmel.h", "tinyclap_logmel.c")
TABLES = ("tinyclap_logmel_tables.h", "tinyclap_logmel_tables.c")
MAX_N_FFT = 4096  # the largest arm_rfft_fast_f32 size (and LogMel's own bound)
_F32 = np.finfo(np.float32)


@dataclass(frozen=True)
class FrontendTables:
    """The constants of the C front end, as the int32/uint16/float32 arrays the C tables hold."""

    settings: dict[str, Any]  # the LogMel config (CONFIG_KEYS), checked, defaults filled in, as LogMel.config()
    window: np.ndarray  # (n_fft,) int32: periodic Hann, centred in the frame, in units of 2^-30
    cos: np.ndarray  # (n_fft // 2,) int32: cos(2 pi k / n_fft) in units of 2^-30 (the FFT's twiddles)
    band_start: np.ndarray  # (n_mels,) uint16: first FFT bin of each mel band
    band_size: np.ndarray  # (n_mels,) uint16: bins in each band (0 for an empty band)
    weights: np.ndarray  # (sum of band_size,) float32: the bands' filterbank rows, one after the other
    amin: float
    floor_db: float  # 10 log10(amin), float32
    db_offset: float  # 10 log10(max(amin, ref)), subtracted from every value (0 for ref 1)

    def table_bytes(self) -> int:
        """Flash the tables take."""
        arrays = (self.window, self.cos, self.band_start, self.band_size, self.weights)
        return int(sum(a.nbytes for a in arrays))


def logmel_settings(settings: dict[str, Any] | None) -> dict[str, Any]:
    """The `LogMel` config in `settings`, MS CLAP's defaults for missing keys. A complete config may carry more
    keys (a TFLM export's front-end JSON adds its window and descriptions): they are ignored. In a partial
    one an unknown key is an error: a typo must not silently leave a default in place."""
    given = dict(settings or {})
    unknown = sorted(set(given) - set(CONFIG_KEYS))
    if unknown and not set(CONFIG_KEYS) <= set(given):
        raise ValueError(f"unknown log-mel settings {unknown}; valid: {list(CONFIG_KEYS)}")
    return {**DEFAULTS, **{key: given[key] for key in CONFIG_KEYS if key in given}}


def frontend_tables(settings: dict[str, Any] | None = None) -> FrontendTables:
    """The tables for `settings` (a `LogMel.config()`, see `logmel_settings`; None: MS CLAP's). ValueError
    for settings the C code cannot run: n_fft must be a power of two in 16..4096, amin a normal float32."""
    cfg = logmel_settings(settings)
    numpy_logmel = NumpyLogMel(cfg)  # checks the bounds, builds the window
    n_fft, n_mels = numpy_logmel.n_fft, numpy_logmel.n_mels
    if n_fft < 16 or n_fft > MAX_N_FFT or n_fft & (n_fft - 1):
        raise ValueError(f"the C front end needs n_fft a power of two in 16..{MAX_N_FFT}, got {n_fft}")
    if not _F32.tiny <= numpy_logmel.amin <= _F32.max or not numpy_logmel.ref <= _F32.max:
        raise ValueError(f"the C front end needs amin and ref in float32's normal range, got "
                         f"amin={numpy_logmel.amin}, ref={numpy_logmel.ref}")
    f_max = cfg["f_max"] if cfg["f_max"] is not None else numpy_logmel.sample_rate / 2.0
    mel = mel_filterbank(numpy_logmel.sample_rate, n_fft, n_mels, float(cfg["f_min"]), f_max).astype(np.float32)
    starts, sizes, rows = [], [], []
    for row in mel:  # (n_bins,) each
        used = np.flatnonzero(row)
        first, last = (int(used[0]), int(used[-1]) + 1) if used.size else (0, 0)
        starts.append(first)
        sizes.append(last - first)
        rows.append(row[first:last])
    k = np.arange(n_fft // 2)
    cos = np.cos(2.0 * np.pi * k / n_fft)
    values = (numpy_logmel.sample_rate, n_fft, numpy_logmel.hop_length, numpy_logmel.win_length, n_mels,
              float(cfg["f_min"]), float(f_max), numpy_logmel.amin, numpy_logmel.ref)
    return FrontendTables(
        settings=dict(zip(CONFIG_KEYS, values)),
        window=_q30(numpy_logmel.window),
        cos=_q30(cos),
        band_start=np.asarray(starts, np.uint16),
        band_size=np.asarray(sizes, np.uint16),
        weights=np.concatenate(rows).astype(np.float32),
        amin=numpy_logmel.amin,
        floor_db=float(np.float32(10.0 * math.log10(float(np.float32(numpy_logmel.amin))))),
        db_offset=10.0 * math.log10(max(numpy_logmel.amin, numpy_logmel.ref)),
    )


def _q30(values: np.ndarray) -> np.ndarray:
    """Values in [-1, 1] as int32 in units of 2^-30 (1.0 fits: 2^30 < 2^31)."""
    return np.round(np.asarray(values, np.float64) * 2.0**30).astype(np.int32)


def frontend_memory(settings: dict[str, Any] | None = None) -> dict[str, int]:
    """Static needs in bytes: `flash_tables` (the generated tables), `ram_work` (the one static buffer of the
    own FFT: n_fft 32-bit words), `ram_work_cmsis` (with CMSIS-DSP: a second n_fft-float buffer; CMSIS's
    instance struct and twiddle tables not counted), `frame_out` (one frame of features). Code size is
    measured, not computed here (bench/mcu_frontend.py)."""
    tables = frontend_tables(settings)
    n_fft = tables.window.size
    return {
        "flash_tables": tables.table_bytes(),
        "ram_work": 4 * n_fft,
        "ram_work_cmsis": 8 * n_fft,
        "frame_out": 4 * tables.band_start.size,
    }


def write_frontend_sources(out_dir: Path, settings: dict[str, Any] | None = None) -> list[Path]:
    """Write tinyclap_logmel.h/.c and tinyclap_logmel_tables.h/.c into `out_dir` (created if missing);
    returns their paths. Each file is written atomically."""
    tables = frontend_tables(settings)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    files = {out_dir / name: (C_DIR / name).read_bytes() for name in SOURCES}
    files[out_dir / TABLES[0]] = _tables_header(tables).encode("ascii")
    files[out_dir / TABLES[1]] = _tables_source(tables).encode("ascii")
    return atomic_write_files(files)


def c_float(value: float) -> str:
    """A float32 as an exact C99 hexadecimal float literal: 0.75 -> 0x1.8p-1f (C has none for inf or NaN)."""
    if not np.isfinite(np.float32(value)):
        raise ValueError(f"no C float literal for {value}")
    mantissa, exponent = float(np.float32(value)).hex().split("p")
    mantissa = mantissa.rstrip("0")
    return f"{mantissa}0p{exponent}f" if mantissa.endswith(".") else f"{mantissa}p{exponent}f"


def c_array(ctype: str, name: str, values: np.ndarray, per_line: int = 6) -> str:
    """`const ctype name[n] = {...};` with floats as hexadecimal literals."""
    items = [c_float(v) if values.dtype == np.float32 else str(int(v)) for v in values]
    lines = [", ".join(items[i : i + per_line]) for i in range(0, len(items), per_line)]
    body = ",\n    ".join(lines)
    return f"const {ctype} {name}[{len(items)}] = {{\n    {body}\n}};\n"


def _banner(tables: FrontendTables) -> str:
    return ("/* Generated by tinyclap.deploy.mcu.frontend.write_frontend_sources: do not edit.\n"
            f" * LogMel settings: {tables.settings} */\n")


def _tables_header(tables: FrontendTables) -> str:
    s = tables.settings
    memory = (f"flash {tables.table_bytes()} bytes of tables, RAM {4 * tables.window.size} bytes of work buffer "
              f"({8 * tables.window.size} with CMSIS-DSP)")
    return f"""{_banner(tables)}#ifndef TINYCLAP_LOGMEL_TABLES_H
#define TINYCLAP_LOGMEL_TABLES_H

#include <stdint.h>

/* {memory} */
#define TINYCLAP_LOGMEL_SAMPLE_RATE {int(s["sample_rate"])}
#define TINYCLAP_LOGMEL_N_FFT {tables.window.size}
#define TINYCLAP_LOGMEL_HOP {int(s["hop_length"])}
#define TINYCLAP_LOGMEL_N_MELS {tables.band_start.size}
#define TINYCLAP_LOGMEL_N_WEIGHTS {tables.weights.size}
#define TINYCLAP_LOGMEL_AMIN {c_float(tables.amin)} /* {tables.amin!r}: the power floor before the log */
#define TINYCLAP_LOGMEL_FLOOR_DB {c_float(tables.floor_db)} /* 10 log10(amin) */
#define TINYCLAP_LOGMEL_DB_OFFSET {c_float(tables.db_offset)} /* 10 log10(max(amin, ref)) */

/* window and cosines in units of 2^-30 */
extern const int32_t tinyclap_logmel_window[TINYCLAP_LOGMEL_N_FFT];
extern const int32_t tinyclap_logmel_cos[TINYCLAP_LOGMEL_N_FFT / 2];
extern const uint16_t tinyclap_logmel_band_start[TINYCLAP_LOGMEL_N_MELS];
extern const uint16_t tinyclap_logmel_band_size[TINYCLAP_LOGMEL_N_MELS];
extern const float tinyclap_logmel_weights[TINYCLAP_LOGMEL_N_WEIGHTS];

#endif /* TINYCLAP_LOGMEL_TABLES_H */
"""


def _tables_source(tables: FrontendTables) -> str:
    return "".join([
        _banner(tables),
        '#include "tinyclap_logmel_tables.h"\n\n',
        "/* periodic Hann window, centred in the frame, times 2^30 */\n",
        c_array("int32_t", "tinyclap_logmel_window", tables.window, 8),
        "\n/* cos(2 pi k / n_fft) times 2^30, k < n_fft / 2 */\n",
        c_array("int32_t", "tinyclap_logmel_cos", tables.cos, 8),
        "\n/* Slaney mel band m covers FFT bins band_start[m] .. band_start[m] + band_size[m] - 1 */\n",
        c_array("uint16_t", "tinyclap_logmel_band_start", tables.band_start, 16),
        "\n",
        c_array("uint16_t", "tinyclap_logmel_band_size", tables.band_size, 16),
        "\n/* the bands' weights, band after band */\n",
        c_array("float", "tinyclap_logmel_weights", tables.weights),
    ])
