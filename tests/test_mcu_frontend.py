"""The C log-mel front end for microcontrollers (tinyclap.deploy.mcu.frontend, deploy/mcu/c, bench/mcu_frontend.py):
its tables, a host build against LogMel on real clips (<= 0.05 dB), and a Cortex-M4 build run under qemu that must
print bit-identical features. Without `cc`, or the Arm toolchain and qemu (scripts/setup.sh --test installs them
from Debian), a test is skipped, except in CI (CI=true), where it fails."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import load_bench

from tinyclap.audio.frontend import LogMel
from tinyclap.audio.io import load_audio
from tinyclap.audio.mel import DEFAULTS, mel_filterbank
from tinyclap.deploy.mcu.frontend import (
    SOURCES,
    TABLES,
    c_float,
    frontend_memory,
    frontend_tables,
    write_frontend_sources,
)

bench = load_bench("mcu_frontend")
MAX_DB = 0.05
# real clips with loud frames over near-empty high bands: the hardest case for a float32 FFT
CLIPS = ("UrbanSound8K/audio/fold3/184725-3-0-4.ogg", "UrbanSound8K/audio/fold1/40722-8-0-8.ogg",
         "UrbanSound8K/audio/fold1/101415-3-0-2.ogg", "animals-cc0/owl.mp3", "animals-cc0/rooster.mp3",
         "animals-cc0/sheep.mp3")


def _need(*tools: str) -> None:
    missing = bench.missing_tools(tools)
    if not missing:
        return
    reason = f"{', '.join(missing)} not installed (scripts/setup.sh --test installs it)"
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(f"CI: {reason}")
    pytest.skip(reason)


def _logmel(wave: np.ndarray, config: dict | None = None) -> np.ndarray:
    with torch.no_grad():
        return LogMel.from_config({**DEFAULTS, **(config or {})})(torch.from_numpy(wave)).numpy()[0]


@pytest.fixture(scope="module")
def host_exe(tmp_path_factory: pytest.TempPathFactory) -> Path:
    _need("cc")
    work = tmp_path_factory.mktemp("mcu_host")
    bench.write_sources(work)
    return bench.build_host(work, work / "logmel")


def test_tables_hold_logmel_settings(tmp_path: Path) -> None:
    t = frontend_tables()
    assert t.settings == LogMel().config()
    mel = mel_filterbank().astype(np.float32)  # (n_mels, n_bins), what LogMel multiplies by
    dense, offset = np.zeros_like(mel), 0
    for band, (start, size) in enumerate(zip(t.band_start, t.band_size)):
        dense[band, start : start + size] = t.weights[offset : offset + size]
        offset += size
    assert offset == t.weights.size and np.array_equal(dense, mel)  # the bands lose nothing
    window = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(1024) / 1024)
    assert np.abs(t.window / 2.0**30 - window).max() <= 2.0**-31
    assert t.cos[0] == 2**30 and t.cos[256] == 0
    mem = frontend_memory()
    assert mem["flash_tables"] == t.table_bytes() < 10_000 and mem["ram_work"] == 4096
    for value in (0.75, -1e-10, 0.0, 3.4e38, 1.4e-45):  # hex literals are exact, subnormals included
        assert np.float32(float.fromhex(c_float(value)[:-1])) == np.float32(value)
    with pytest.raises(ValueError):
        c_float(float("inf"))

    paths = write_frontend_sources(tmp_path / "fw")
    assert sorted(p.name for p in paths) == sorted(SOURCES + TABLES)
    header = (tmp_path / "fw" / "tinyclap_logmel_tables.h").read_text()
    assert "#define TINYCLAP_LOGMEL_N_FFT 1024" in header and "#define TINYCLAP_LOGMEL_HOP 320" in header
    for bad in ({"n_fft": 1000, "win_length": 1000}, {"n_fft": 8192, "win_length": 8192}, {"amin": 1e-45},
                {"n_fft": 512, "hop": 160}):  # a typo in a partial config
        with pytest.raises(ValueError):
            frontend_tables(bad)
    # a complete config may carry more (a TFLM export's front-end JSON): those keys are ignored
    extra = frontend_tables({**DEFAULTS, "window_seconds": 1.0, "log": "10*log10(max(power, amin))"})
    assert np.array_equal(extra.weights, t.weights) and extra.settings == t.settings


def test_host_build_matches_logmel_on_real_clips(host_exe: Path, shared_data: Path) -> None:
    worst = {}
    for name in CLIPS:
        wave = load_audio(shared_data / name)
        c, ref = bench.host_logmel(host_exe, wave), _logmel(wave)
        assert c.shape == ref.shape, name
        worst[name] = float(np.abs(c - ref).max())
    print("max |C - LogMel| dB per clip:", {k.rsplit("/", 1)[-1]: round(v, 4) for k, v in worst.items()})
    assert max(worst.values()) <= MAX_DB, worst


def test_host_build_edges(host_exe: Path, rng: np.random.Generator) -> None:
    for n in (513, 1000, 1024, 1345):  # reflect padding at both ends of one frame; the shortest allowed wave
        wave = (0.3 * rng.standard_normal(n)).astype(np.float32)
        assert np.abs(bench.host_logmel(host_exe, wave) - _logmel(wave)).max() <= MAX_DB, n
    silence = bench.host_logmel(host_exe, np.zeros(4410, np.float32))
    assert np.allclose(silence, -100.0, atol=1e-4)  # the 1e-10 floor
    loud = (1e4 * rng.standard_normal(4410)).astype(np.float32)  # far outside [-1, 1]: block exponent
    assert np.abs(bench.host_logmel(host_exe, loud) - _logmel(loud)).max() <= MAX_DB
    bad = np.ones(4410, np.float32)
    bad[2000] = np.nan
    c = bench.host_logmel(host_exe, bad)
    seen = (np.arange(c.shape[0]) * 320 - 512 <= 2000) & (2000 < np.arange(c.shape[0]) * 320 + 512)
    assert seen.sum() == 3 and np.isnan(c[seen]).all() and np.isfinite(c[~seen]).all()  # frames that see it
    short = subprocess.run([str(host_exe)], input=np.zeros(512, "<f4").tobytes(), capture_output=True)
    assert short.returncode == 1 and b"error -1" in short.stderr  # too short for the reflect padding


def test_other_settings(tmp_path: Path, shared_data: Path) -> None:
    """Settings other than MS CLAP's reach the C code through the generated tables alone."""
    _need("cc")
    config = {"n_fft": 512, "win_length": 400, "hop_length": 160, "n_mels": 40, "f_min": 0.0, "f_max": None,
              "ref": 2.0, "sample_rate": 16000}
    bench.write_sources(tmp_path, config)
    exe = bench.build_host(tmp_path, tmp_path / "logmel")
    wave = load_audio(shared_data / CLIPS[3], sample_rate=16000)
    assert np.abs(bench.host_logmel(exe, wave, n_mels=40) - _logmel(wave, config)).max() <= MAX_DB


def test_cortex_m4_under_qemu_prints_the_host_features(tmp_path: Path, shared_data: Path) -> None:
    _need("cc", *bench.ARM_TOOLS)
    src = tmp_path / "src"
    bench.write_sources(src)
    result = bench.qemu_check(src, tmp_path)
    footprint = bench.footprint(src, tmp_path)
    print("qemu:", result, "\nCortex-M4 -O2 footprint (bytes):", footprint)
    assert result["bit_identical"] and result["frames"] == 138  # 1 s at 44.1 kHz, hop 320
    assert result["instructions"] > 0
    mem = frontend_memory()
    assert footprint["tables"] == mem["flash_tables"] and footprint["ram_static"] == mem["ram_work"]
    assert 0 < footprint["stack"] < 1024 and 0 < footprint["code"] < 8192
