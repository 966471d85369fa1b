"""tinyclap.audio: decoding real files, resampling, mono mixing, clip fitting, windows, streaming, errors."""

from __future__ import annotations

import ast
import importlib.metadata
import os
import random
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from helpers import noisy_tone, run_python, us8k_clips, write_wav
from hypothesis import given, settings
from hypothesis import strategies as st

from tinyclap.audio import (
    CLIP_SAMPLES,
    SAMPLE_RATE,
    AudioError,
    audio_info,
    eval_windows,
    fit_clip,
    load_audio,
    stream_windows,
)

# --- decoding real recordings ---------------------------------------------------------------------------


def test_mp3_48k_mono_is_resampled(animals_dir: Path) -> None:
    path = animals_dir / "cat.mp3"
    info = audio_info(path)
    assert (info.sample_rate, info.channels) == (48000, 1)
    wave = load_audio(path)
    assert wave.dtype == np.float32 and wave.ndim == 1
    decoded = sf.read(path, dtype="float32")[0].shape[0]
    assert abs(wave.shape[0] - decoded * SAMPLE_RATE / 48000) <= 1
    assert np.isfinite(wave).all() and np.abs(wave).max() > 0.01


def test_mp3_44k_stereo_is_averaged_not_resampled(animals_dir: Path) -> None:
    path = animals_dir / "duck.mp3"
    info = audio_info(path)
    assert (info.sample_rate, info.channels) == (44100, 2)
    raw = sf.read(path, dtype="float32", always_2d=True)[0]  # (frames, 2)
    wave = load_audio(path)
    assert wave.shape == (raw.shape[0],)
    np.testing.assert_allclose(wave, raw.mean(axis=1), atol=1e-7)


def test_ogg_22k(us8k_root: Path) -> None:
    path = us8k_clips(us8k_root, 1)[0]
    assert audio_info(path).sample_rate == 22050
    wave = load_audio(path)
    assert wave.shape == (4 * SAMPLE_RATE,)  # 4.0 s at 22.05 kHz -> exactly 176400 samples at 44.1 kHz
    assert load_audio(path, sample_rate=16000).shape == (64000,)


def test_all_animals_decode(animals_dir: Path) -> None:
    for path in sorted(animals_dir.glob("*.mp3")):
        info = audio_info(path)
        wave = load_audio(path)
        # MP3 header frame counts are estimates (rooster.mp3: 106000 in the header, 103680 decoded)
        assert abs(wave.shape[0] / SAMPLE_RATE - info.duration) < 0.1, path.name


# --- generated files ------------------------------------------------------------------------------------


def test_mono_mix_averages_channels(tmp_path: Path) -> None:
    left, right = noisy_tone(0.5, SAMPLE_RATE, 440), noisy_tone(0.5, SAMPLE_RATE, 1000, seed=1)
    path = tmp_path / "stereo.wav"
    write_wav(path, np.stack([left, right], axis=1), SAMPLE_RATE, subtype="FLOAT")
    np.testing.assert_allclose(load_audio(path), (left + right) / 2, atol=1e-7)


def test_flac_and_resample_length(tmp_path: Path) -> None:
    path = tmp_path / "a.flac"
    write_wav(path, noisy_tone(2.0, 16000), 16000)
    assert load_audio(path).shape == (2 * SAMPLE_RATE,)


def test_non_utf8_and_path_kinds(tmp_path: Path) -> None:
    bpath = os.fsencode(tmp_path) + b"/caf\xe9-\xff.wav"  # not valid UTF-8
    write_wav(bpath, noisy_tone(0.2, SAMPLE_RATE), SAMPLE_RATE)
    spath = os.fsdecode(bpath)  # str with surrogate escapes
    ref = load_audio(bpath)
    for p in (spath, Path(spath)):
        np.testing.assert_array_equal(load_audio(p), ref)
    assert len(list(stream_windows(Path(spath), window=0.1, hop=0.1))) == 2
    missing = os.fsencode(tmp_path) + b"/gone-\xff.wav"
    with pytest.raises(AudioError, match="gone-") as e:
        load_audio(missing)
    str(e.value).encode("utf-8")  # the message is printable


# --- errors ---------------------------------------------------------------------------------------------


def _bad_files(tmp_path: Path) -> dict[str, tuple[Path, str]]:
    text = tmp_path / "text.wav"
    text.write_text("this is not audio\n" * 20)
    zero = tmp_path / "zero.wav"
    zero.write_bytes(b"")
    empty = tmp_path / "empty.wav"
    write_wav(empty, np.zeros((0, 1), np.float32), SAMPLE_RATE)
    nan = tmp_path / "nan.wav"
    write_wav(nan, np.full(1000, np.nan, np.float32), SAMPLE_RATE, subtype="FLOAT")
    inf = tmp_path / "inf.wav"
    data = noisy_tone(1.0, SAMPLE_RATE)
    data[30000] = np.inf
    write_wav(inf, data, SAMPLE_RATE, subtype="FLOAT")
    return {
        "missing": (tmp_path / "missing.wav", "not found"),
        "directory": (tmp_path, "directory"),
        "text": (text, "unreadable or unsupported"),
        "zero-byte": (zero, "unreadable or unsupported"),
        "empty": (empty, "empty audio"),
        "nan": (nan, "all samples are NaN"),
        "inf": (inf, r"non-finite .* at 0\.680 s"),
    }


@pytest.mark.parametrize("kind", ["missing", "directory", "text", "zero-byte", "empty", "nan", "inf"])
def test_errors_name_the_file(tmp_path: Path, kind: str) -> None:
    path, problem = _bad_files(tmp_path)[kind]
    with pytest.raises(AudioError, match=problem) as e:
        load_audio(path)
    assert str(path) in str(e.value)
    assert isinstance(e.value, ValueError)
    with pytest.raises(AudioError, match=problem if kind != "nan" else "non-finite") as e:
        list(stream_windows(path, window=0.5, hop=0.5))
    assert str(path) in str(e.value)
    if kind in ("missing", "directory", "text", "zero-byte"):
        with pytest.raises(AudioError, match=problem):
            audio_info(path)


def test_stream_error_comes_at_call_for_bad_path(tmp_path: Path) -> None:
    with pytest.raises(AudioError, match="not found"):
        stream_windows(tmp_path / "nope.ogg")  # no iteration needed


def test_permission_errors_become_audio_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "locked.wav"
    write_wav(path, noisy_tone(0.1, SAMPLE_RATE), SAMPLE_RATE)
    if os.geteuid() != 0:  # a real unreadable file (root can read anything, so only for normal users)
        path.chmod(0)
        with pytest.raises(AudioError, match="permission denied"):
            load_audio(path)
        path.chmod(0o644)
    monkeypatch.setattr(os, "access", lambda *a, **k: False)
    with pytest.raises(AudioError, match="permission denied"):
        load_audio(path)
    monkeypatch.undo()

    def refuse(*args: object, **kwargs: object) -> None:
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(sf, "SoundFile", refuse)  # a race between the access check and the open
    with pytest.raises(AudioError, match="permission denied") as e:
        load_audio(path)
    assert "locked.wav" in str(e.value)


def test_audio_module_does_not_import_torch() -> None:
    code = "import sys, tinyclap.audio; sys.exit('torch' in sys.modules)"
    assert run_python(code).returncode == 0


# --- fit_clip -------------------------------------------------------------------------------------------


def test_fit_clip_eval_is_centre_crop() -> None:
    wave = np.arange(1000, dtype=np.float32)
    out = fit_clip(wave, 100, policy="eval")
    np.testing.assert_array_equal(out, wave[450:550])
    np.testing.assert_array_equal(out, fit_clip(wave, 100))  # eval is the default, and deterministic


def test_fit_clip_train_is_random_and_seeded() -> None:
    wave = np.arange(10_000, dtype=np.float32)
    a = fit_clip(wave, 100, policy="train", rng=np.random.default_rng(1))
    b = fit_clip(wave, 100, policy="train", rng=np.random.default_rng(1))
    np.testing.assert_array_equal(a, b)
    crops = [fit_clip(wave, 100, policy="train", rng=np.random.default_rng(s)) for s in range(20)]
    assert len({int(c[0]) for c in crops}) > 10  # really random
    for c in crops:  # each crop is a contiguous slice of the input
        assert (np.diff(c) == 1).all() and 0 <= c[0] <= 9900
    # the whole range of starts is reachable, ends included
    rng = np.random.default_rng(0)
    seen = {int(fit_clip(np.arange(12, dtype=np.float32), 10, "train", rng)[0]) for _ in range(200)}
    assert seen == {0, 1, 2}


def test_fit_clip_pads() -> None:
    wave = np.array([1, 2, 3], np.float32)
    np.testing.assert_array_equal(fit_clip(wave, 8), [1, 2, 3, 0, 0, 0, 0, 0])
    np.testing.assert_array_equal(fit_clip(wave, 8, pad="repeat"), [1, 2, 3, 1, 2, 3, 1, 2])
    np.testing.assert_array_equal(fit_clip(wave, 8, "train", np.random.default_rng(0)), fit_clip(wave, 8))
    assert fit_clip(np.ones(5, np.float64), 5).dtype == np.float32
    out = fit_clip(wave, 3)
    out[0] = 99
    assert wave[0] == 1  # always a new array


def _msclap_load_audio_into_tensor():
    """msclap's CLAPWrapper.load_audio_into_tensor, extracted from the installed file (the module itself
    imports torchaudio and downloads weights, so only this method's source is compiled)."""
    import torch

    path = importlib.metadata.distribution("msclap").locate_file("msclap/CLAPWrapper.py")
    tree = ast.parse(Path(path).read_text())
    cls = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "CLAPWrapper")
    fn = next(n for n in cls.body if isinstance(n, ast.FunctionDef) and n.name == "load_audio_into_tensor")
    namespace: dict = {"np": np, "torch": torch, "random": random}
    exec(compile(ast.Module(body=[fn], type_ignores=[]), str(path), "exec"), namespace)
    return namespace["load_audio_into_tensor"]


def test_fit_clip_repeat_matches_msclap() -> None:
    import torch

    reference = _msclap_load_audio_into_tensor()
    rate, seconds = 100, 5  # msclap's target is audio_duration * sample_rate samples
    length = rate * seconds
    rng = np.random.default_rng(0)
    for n in (1, 7, 120, 250, 499, 500):
        wave = rng.standard_normal(n).astype(np.float32)

        class FakeWrapper:
            def __init__(self, wave: np.ndarray) -> None:
                self.wave = wave

            def read_audio(self, audio_path: str, resample: bool = False) -> tuple:
                return torch.from_numpy(self.wave.copy())[None, :], rate

        ref = reference(FakeWrapper(wave), "x.wav", seconds, resample=False).numpy()
        np.testing.assert_array_equal(fit_clip(wave, length, pad="repeat"), ref)


def test_fit_clip_bad_arguments() -> None:
    wave = np.zeros(10, np.float32)
    with pytest.raises(ValueError, match="'eval', 'train'"):
        fit_clip(wave, 5, policy="test")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="'zero', 'repeat'"):
        fit_clip(wave, 5, pad="reflect")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="1-D"):
        fit_clip(np.zeros((2, 10)), 5)
    with pytest.raises(ValueError, match="empty"):
        fit_clip(np.zeros(0), 5)
    with pytest.raises(ValueError, match="length"):
        fit_clip(wave, 0)


@settings(max_examples=60, deadline=None)
@given(
    n=st.integers(1, 3000),
    length=st.integers(1, 700),
    policy=st.sampled_from(["eval", "train"]),
    pad=st.sampled_from(["zero", "repeat"]),
    seed=st.integers(0, 2**32 - 1),
)
def test_fit_clip_length_property(n: int, length: int, policy: str, pad: str, seed: int) -> None:
    wave = np.random.default_rng(seed).standard_normal(n).astype(np.float32)
    out = fit_clip(wave, length, policy=policy, rng=np.random.default_rng(seed), pad=pad)  # type: ignore[arg-type]
    assert out.shape == (length,) and out.dtype == np.float32
    if n >= length:  # a crop: a contiguous slice of the input
        start = int(np.flatnonzero(wave == out[0])[0])
        np.testing.assert_array_equal(out, wave[start : start + length])


# --- eval_windows ---------------------------------------------------------------------------------------


def test_eval_windows_layouts() -> None:
    L = 100
    short = np.arange(1, 41, dtype=np.float32)
    np.testing.assert_array_equal(eval_windows(short, L), fit_clip(short, L)[None])
    np.testing.assert_array_equal(eval_windows(short, L, pad="repeat"), fit_clip(short, L, pad="repeat")[None])
    exact = np.arange(300, dtype=np.float32)
    np.testing.assert_array_equal(eval_windows(exact, L).reshape(-1), exact)
    # remainder >= half a window: one extra window aligned to the end, all real audio
    long = np.arange(360, dtype=np.float32)
    w = eval_windows(long, L)
    assert w.shape == (4, L)
    np.testing.assert_array_equal(w[:3].reshape(-1), long[:300])
    np.testing.assert_array_equal(w[3], long[260:])
    # remainder < half: full windows centred, no window with padding
    w = eval_windows(np.arange(340, dtype=np.float32), L)
    assert w.shape == (3, L)
    np.testing.assert_array_equal(w.reshape(-1), np.arange(20, 320))
    # just over one window: the same as the eval centre crop
    just_over = np.arange(130, dtype=np.float32)
    np.testing.assert_array_equal(eval_windows(just_over, L)[0], fit_clip(just_over, L))


@settings(max_examples=60, deadline=None)
@given(n=st.integers(1, 5000), length=st.integers(1, 600))
def test_eval_windows_property(n: int, length: int) -> None:
    wave = np.arange(1, n + 1, dtype=np.float32)  # no zeros: padding is recognisable
    w = eval_windows(wave, length)
    k_full, rem = divmod(n, length)
    expected_k = 1 if n <= length else k_full + (2 * rem >= length)
    assert w.shape == (expected_k, length) and w.dtype == np.float32
    if n >= length:
        assert (w != 0).all()  # never a padded window once the clip fills one
        assert w[0, 0] <= length // 2 + 1  # the start of the clip is covered (up to half a window lost)


# --- stream_windows -------------------------------------------------------------------------------------


def _cut(wave: np.ndarray, start: int, n: int) -> np.ndarray:
    out = np.zeros(n, np.float32)
    seg = wave[start : start + n]
    out[: seg.shape[0]] = seg
    return out


def test_stream_matches_load_exactly_at_44k(tmp_path: Path) -> None:
    path = tmp_path / "stereo44k.wav"
    data = np.stack([noisy_tone(23.3, SAMPLE_RATE), noisy_tone(23.3, SAMPLE_RATE, 700, seed=2)], axis=1)
    write_wav(path, data, SAMPLE_RATE)
    full = load_audio(path)
    windows = list(stream_windows(path, window=5.0, hop=2.0, block_seconds=3.7))
    # full windows start at 0, 2, ..., 18 (18 + 5 = 23 <= 23.3), then one padded window at 20 s
    assert [t for t, _ in windows] == [float(s) for s in range(0, 21, 2)]
    for t, w in windows:
        assert w.shape == (CLIP_SAMPLES,) and w.dtype == np.float32
        np.testing.assert_array_equal(w, _cut(full, int(round(t * SAMPLE_RATE)), CLIP_SAMPLES))
    assert (windows[-1][1][int(3.3 * SAMPLE_RATE) + 1 :] == 0).all()


def test_stream_short_file_and_exact_fit(tmp_path: Path) -> None:
    short = tmp_path / "short.wav"
    write_wav(short, noisy_tone(1.5, 16000), 16000)
    windows = list(stream_windows(short))
    assert len(windows) == 1 and windows[0][0] == 0.0 and windows[0][1].shape == (CLIP_SAMPLES,)
    np.testing.assert_allclose(windows[0][1], fit_clip(load_audio(short)), atol=1e-5)
    exact = tmp_path / "exact.wav"
    write_wav(exact, noisy_tone(3.0, SAMPLE_RATE), SAMPLE_RATE)
    assert [t for t, _ in stream_windows(exact, window=1.0, hop=1.0)] == [0.0, 1.0, 2.0]  # nothing padded


def test_stream_nan_in_the_middle_names_time(tmp_path: Path) -> None:
    path = tmp_path / "late-nan.wav"
    data = noisy_tone(10.0, 8000)
    data[8000 * 7] = np.nan
    write_wav(path, data, 8000, subtype="FLOAT")
    got = []
    with pytest.raises(AudioError, match=r"late-nan\.wav: non-finite .* 7\.000 s"):
        for item in stream_windows(path, window=1.0, hop=1.0, block_seconds=2.0):
            got.append(item)
    assert len(got) >= 5  # windows before the bad block were delivered


def test_stream_ten_minutes_bounded_memory(tmp_path: Path) -> None:
    """A 10-minute 16 kHz file: streamed windows equal the resampled whole file away from the edges, and
    the streaming peak memory is a fraction of the decoded file."""
    rate, minutes = 16000, 10
    path = tmp_path / "long.wav"
    t = np.arange(minutes * 60 * rate, dtype=np.float64) / rate
    # a chirp-ish signal below 8 kHz whose content changes over time (catches misplaced windows)
    data = (0.3 * np.sin(2 * np.pi * (200 + 3 * t) * t) + 0.05 * np.sin(2 * np.pi * 3000 * t)).astype(np.float32)
    write_wav(path, data, rate)
    del data, t
    full = load_audio(path)  # (26_460_000,) float32 ~ 106 MB
    assert abs(full.shape[0] - minutes * 60 * SAMPLE_RATE) <= 1
    win = CLIP_SAMPLES
    tracemalloc.start()
    try:
        n_windows, last_t = 0, -1.0
        for t0, w in stream_windows(path, window=5.0, hop=5.0, block_seconds=10.0):
            start = int(round(t0 * SAMPLE_RATE))
            ref = _cut(full, start, win)
            edge = 2000 if start == 0 else 0  # resampler edge effects are allowed to differ
            np.testing.assert_allclose(w[edge:-2000], ref[edge:-2000], atol=1e-5)
            n_windows, last_t = n_windows + 1, t0
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert n_windows == 120 and last_t == 595.0
    # ~15 s of audio in flight (block + window, a few copies) vs 600 s decoded whole
    assert peak < full.nbytes * 0.25, f"streaming peak {peak / 1e6:.1f} MB is not bounded"
