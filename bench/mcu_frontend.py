"""The C log-mel front end (tinyclap.deploy.mcu, c/) against LogMel on real clips, and on a Cortex-M4 under qemu.

1. host build (the system `cc`): max and mean |dB| difference to `LogMel` (torch float32, what students are
   trained on) and to a float64 numpy reference, on real clips (UrbanSound8K + animals-cc0, ../shared/data);
2. the same code cross-compiled with `arm-none-eabi-gcc` for a Cortex-M4 (hard float, fpv4-sp-d16), linked with
   bench/mcu (start-up, linker script, semihosting driver) and run under `qemu-system-arm -M mps2-an386` on a
   1 s real clip embedded as a generated header: its features must be bit-identical to the host build's;
3. its footprint from the object files: code, tables (flash), static RAM (.bss/.data), stack (-fstack-usage),
   and the instructions it executes under qemu (-icount shift=0 makes 1 SysTick tick = 40 instructions; an
   instruction count, not cycles: qemu is not cycle-accurate).

    python bench/mcu_frontend.py                  # 100 UrbanSound8K clips + the 10 animals, Markdown table
    python bench/mcu_frontend.py --clips 20 --json
    # also the -DTINYCLAP_USE_CMSIS_DSP build, from CMSIS-DSP's sources (e.g. the unpacked `cmsisdsp` sdist:
    # pip download --no-deps --no-binary :all: --no-build-isolation cmsisdsp==1.10.3):
    python bench/mcu_frontend.py --cmsis /tmp/cmsisdsp-1.10.3
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data"
HARNESS = REPO / "bench" / "mcu"
FRONTEND_C = ("tinyclap_logmel.c", "tinyclap_logmel_tables.c")
CFLAGS = ["-std=c99", "-O2", "-ffp-contract=off", "-Wall", "-Wextra", "-pedantic", "-Werror"]
M4_FLAGS = ["-mcpu=cortex-m4", "-mthumb", "-mfloat-abi=hard", "-mfpu=fpv4-sp-d16"]
QEMU = ["qemu-system-arm", "-M", "mps2-an386", "-display", "none", "-semihosting-config",
        "enable=on,target=native", "-icount", "shift=0", "-kernel"]
INSNS_PER_TICK = 40  # -icount shift=0: 1 ns per instruction; SysTick counts the 25 MHz CPU clock
ARM_TOOLS = ("arm-none-eabi-gcc", "arm-none-eabi-size", "qemu-system-arm")
CLIP = ("UrbanSound8K/audio/fold1/101415-3-0-2.ogg", 1.0, 1.0)  # file, start (s), length (s) for qemu
CMSIS_SOURCES = ("TransformFunctions/arm_rfft_fast_f32.c", "TransformFunctions/arm_rfft_fast_init_f32.c",
                 "TransformFunctions/arm_cfft_f32.c", "TransformFunctions/arm_cfft_init_f32.c",
                 "TransformFunctions/arm_cfft_radix8_f32.c", "TransformFunctions/arm_bitreversal2.c",
                 "CommonTables/arm_common_tables.c", "CommonTables/arm_const_structs.c")


def cmsis_build(root: Path | None) -> list[str]:
    """Compiler arguments that build the front end on CMSIS-DSP's arm_rfft_fast_f32 (its plain C path,
    without CMSIS-Core: -D__GNUC_PYTHON__, as its Python wrapper builds); [] for our own FFT."""
    if root is None:
        return []
    return ["-D__GNUC_PYTHON__", "-DTINYCLAP_USE_CMSIS_DSP", "-Wno-pedantic", "-Wno-error", "-w",
            "-I", str(root / "Include"), "-I", str(root / "PrivateInclude"),
            *(str(root / "Source" / f) for f in CMSIS_SOURCES)]


def missing_tools(tools: tuple[str, ...] = ("cc", *ARM_TOOLS)) -> list[str]:
    return [tool for tool in tools if shutil.which(tool) is None]


def _run(cmd: list[str], timeout: float = 300, **kwargs: Any) -> subprocess.CompletedProcess:
    """Run `cmd`; RuntimeError with its output when it fails (a compiler error names the line)."""
    proc = subprocess.run(cmd, capture_output=True, timeout=timeout, **kwargs)
    if proc.returncode != 0:
        err = proc.stderr.decode(errors="replace") if isinstance(proc.stderr, bytes) else proc.stderr
        raise RuntimeError(f"{' '.join(map(str, cmd[:3]))} ... failed ({proc.returncode}):\n{err[-4000:]}")
    return proc


def write_sources(folder: Path, settings: dict[str, Any] | None = None) -> list[Path]:
    from tinyclap.deploy.mcu.frontend import write_frontend_sources

    return write_frontend_sources(folder, settings)


def write_clip_header(path: Path, wave: np.ndarray) -> Path:
    """clip.h: `const float clip[CLIP_SAMPLES]` with the float32 samples as exact hexadecimal literals."""
    from tinyclap.deploy.mcu.frontend import c_array

    wave = np.asarray(wave, np.float32)
    path.write_text(f"#define CLIP_SAMPLES {wave.size}\nstatic " + c_array("float", "clip", wave, 8))
    return path


def build_host(src: Path, exe: Path, *, clip: bool = False, cmsis: Path | None = None) -> Path:
    """The front end + bench/mcu/main.c with the host `cc`: with `clip`, prints src/clip.h's features as
    hex bits; without, reads float32 samples on stdin and writes float32 features to stdout."""
    flags = CFLAGS + ["-I", str(src)] + (["-DTINYCLAP_CLIP_HEADER"] if clip else [])
    sources = [*(str(src / f) for f in FRONTEND_C), str(HARNESS / "main.c")]
    _run(["cc", *flags, "-o", str(exe), *sources, *cmsis_build(cmsis)])
    return exe


def build_m4(src: Path, elf: Path, *, cmsis: Path | None = None) -> Path:
    """The front end + driver + start-up for qemu's mps2-an386, with src/clip.h embedded."""
    flags = CFLAGS + M4_FLAGS + ["-I", str(src), "-DTINYCLAP_CLIP_HEADER", "-DTINYCLAP_QEMU",
                                 "-ffunction-sections", "-fdata-sections"]
    link = ["--specs=rdimon.specs", "-nostartfiles", "-T", str(HARNESS / "mps2_an386.ld"), "-Wl,--gc-sections"]
    sources = [*(str(src / f) for f in FRONTEND_C), str(HARNESS / "main.c"), str(HARNESS / "startup.c")]
    _run(["arm-none-eabi-gcc", *flags, *link, "-o", str(elf), *sources, *cmsis_build(cmsis)])
    return elf


def run_qemu(elf: Path, timeout: float = 120) -> tuple[str, int]:
    """The features qemu prints (the host build's format) and the instructions the front end took."""
    out = _run([*QEMU, str(elf)], timeout=timeout, text=True).stdout
    match = re.search(r"^ticks (\d+)\n", out, re.M)
    if match is None:
        raise RuntimeError(f"qemu printed no tick count:\n{out[-2000:]}")
    return out[: match.start()], int(match.group(1)) * INSNS_PER_TICK


def parse_features(text: str) -> np.ndarray:
    """The driver's hex-bits text -> (T, n_mels) float32."""
    lines = text.strip().splitlines()
    frames = int(lines[0].split()[1])
    bits = np.array([[int(v, 16) for v in line.split()] for line in lines[1:]], np.uint32)
    if bits.shape[0] != frames:
        raise ValueError(f"driver announced {frames} frames, printed {bits.shape[0]}")
    return bits.view(np.float32)


def host_logmel(exe: Path, wave: np.ndarray, n_mels: int = 64) -> np.ndarray:
    """The host build's features of `wave` (float32) -> (T, n_mels)."""
    out = _run([str(exe)], input=np.asarray(wave, "<f4").tobytes()).stdout
    return np.frombuffer(out, "<f4").reshape(-1, n_mels)


def footprint(src: Path, work: Path) -> dict[str, int]:
    """Bytes of the front end alone for a Cortex-M4 (-O2): code, tables (flash), static RAM (.bss + .data),
    and stack: the sum of every function's frame from -fstack-usage (an upper bound of the deepest chain)."""
    objs = []
    for name in FRONTEND_C:
        obj = work / name.replace(".c", ".o")
        _run(["arm-none-eabi-gcc", *CFLAGS, *M4_FLAGS, "-I", str(src), "-fstack-usage", "-c", str(src / name),
              "-o", str(obj)])
        objs.append(obj)
    rows = _run(["arm-none-eabi-size", *map(str, objs)], text=True).stdout.splitlines()[1:]
    (code, data, bss), (tables, tdata, tbss) = ([int(v) for v in row.split()[:3]] for row in rows)
    stack = sum(int(line.split("\t")[1]) for line in (work / "tinyclap_logmel.su").read_text().splitlines())
    return {"code": code, "tables": tables + tdata, "ram_static": data + bss + tdata + tbss, "stack": stack}


def real_clips(n_us8k: int) -> list[Path]:
    """`n_us8k` UrbanSound8K clips spread over the folds present, then the ten animals."""
    us8k = sorted((DATA / "UrbanSound8K" / "audio").glob("fold*/*.ogg"))
    picked = [us8k[i] for i in np.linspace(0, len(us8k) - 1, min(n_us8k, len(us8k))).astype(int)] if us8k else []
    return picked + sorted((DATA / "animals-cc0").glob("*.mp3"))


def float64_logmel(wave: np.ndarray) -> np.ndarray:
    """LogMel's definition in float64 (numpy FFT): the exact value both float32 versions approximate."""
    from tinyclap.audio.mel import NumpyLogMel, mel_filterbank

    ref = NumpyLogMel()
    x = np.pad(np.asarray(wave, np.float64), ref.n_fft // 2, mode="reflect")
    frames = np.lib.stride_tricks.sliding_window_view(x, ref.n_fft)[:: ref.hop_length]
    power = np.abs(np.fft.rfft(frames * ref.window, axis=-1)) ** 2
    return 10.0 * np.log10(np.maximum(power @ mel_filterbank().T, ref.amin))


def clip_errors(exe: Path, files: list[Path]) -> dict[str, Any]:
    """Max and mean |dB| of the host build against LogMel and against float64, over `files`."""
    import torch

    from tinyclap.audio.frontend import LogMel
    from tinyclap.audio.io import load_audio

    logmel = LogMel()
    worst = {"logmel": 0.0, "float64": 0.0}
    sums, count = {"logmel": 0.0, "float64": 0.0}, 0
    for path in files:
        wave = load_audio(path)
        c = host_logmel(exe, wave).astype(np.float64)
        with torch.no_grad():
            refs = {"logmel": logmel(torch.from_numpy(wave)).numpy()[0], "float64": float64_logmel(wave)}
        for key, ref in refs.items():
            diff = np.abs(c - ref)
            worst[key] = max(worst[key], float(diff.max()))
            sums[key] += float(diff.sum())
        count += c.size
    return {"clips": len(files), "values": count, "max_db_vs_logmel": worst["logmel"],
            "mean_db_vs_logmel": sums["logmel"] / max(count, 1), "max_db_vs_float64": worst["float64"],
            "mean_db_vs_float64": sums["float64"] / max(count, 1)}


def qemu_check(src: Path, work: Path, cmsis: Path | None = None) -> dict[str, Any]:
    """Embed the 1 s clip, build for the host and the M4, run both: bit-identical? instructions per frame."""
    from tinyclap.audio.io import load_audio
    from tinyclap.audio.mel import SAMPLE_RATE

    name, start, seconds = CLIP
    wave = load_audio(DATA / name)[int(start * SAMPLE_RATE) : int((start + seconds) * SAMPLE_RATE)]
    write_clip_header(src / "clip.h", wave)
    host = _run([str(build_host(src, work / "logmel_clip", clip=True, cmsis=cmsis))], text=True).stdout
    device, insns = run_qemu(build_m4(src, work / "logmel_m4.elf", cmsis=cmsis))
    frames = parse_features(device).shape[0]
    return {"clip": f"{name} [{start:g}, {start + seconds:g}) s", "frames": frames, "bit_identical": device == host,
            "instructions": insns, "instructions_per_frame": insns // max(frames, 1)}


def measure(n_clips: int, work: Path, cmsis: Path | None = None) -> dict[str, Any]:
    src = work / "src"
    write_sources(src)
    exe = build_host(src, work / "logmel", cmsis=cmsis)
    result: dict[str, Any] = {"fft": "CMSIS-DSP arm_rfft_fast_f32" if cmsis else "own (32-bit block floating point)",
                              "errors": clip_errors(exe, real_clips(n_clips))}
    missing = missing_tools(ARM_TOOLS)
    if missing:
        result["qemu"] = f"skipped: {', '.join(missing)} not installed"
        return result
    result["qemu"] = qemu_check(src, work, cmsis)
    if cmsis is None:  # CMSIS-DSP's own code and tables are not counted by footprint()
        result["footprint_m4_O2"] = footprint(src, work)
    return result


def markdown(r: dict[str, Any]) -> str:
    e = r["errors"]
    rows = [f"| FFT | {r['fft']} |", f"| clips (values) | {e['clips']} ({e['values']}) |",
            f"| max / mean dB vs LogMel | {e['max_db_vs_logmel']:.4f} / {e['mean_db_vs_logmel']:.1e} |",
            f"| max / mean dB vs float64 | {e['max_db_vs_float64']:.4f} / {e['mean_db_vs_float64']:.1e} |"]
    q = r["qemu"]
    if isinstance(q, dict):
        rows += [f"| qemu mps2-an386 == host | {'bit-identical' if q['bit_identical'] else 'DIFFERENT'} "
                 f"({q['frames']} frames, {q['clip']}) |",
                 f"| instructions per frame (qemu count) | {q['instructions_per_frame']:,} |"]
        if "footprint_m4_O2" in r:
            f = r["footprint_m4_O2"]
            rows += [f"| code / tables (flash, bytes) | {f['code']:,} / {f['tables']:,} |",
                     f"| static RAM / stack (bytes) | {f['ram_static']:,} / {f['stack']:,} |"]
    else:
        rows.append(f"| qemu | {q} |")
    return "| C front end | value |\n|---|---|\n" + "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    import tempfile

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clips", type=int, default=100, help="UrbanSound8K clips (the 10 animals are added)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a Markdown table")
    parser.add_argument("--cmsis", type=Path, help="CMSIS-DSP's source folder (Include/, Source/): measure "
                        "the -DTINYCLAP_USE_CMSIS_DSP build instead of our own FFT")
    args = parser.parse_args(argv)
    if missing_tools(("cc",)):
        print("mcu_frontend: no host C compiler `cc`", file=sys.stderr)
        return 1
    with tempfile.TemporaryDirectory() as tmp:
        result = measure(args.clips, Path(tmp), args.cmsis)
    print(json.dumps(result, indent=2) if args.json else markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
