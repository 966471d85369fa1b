"""A corpus of malformed and odd audio inputs, each with its documented outcome (docs/robustness.md).

Every input is generated here (tmp_path). The table `CASES` is the single source of truth: each case is an
`AudioError` whose message names the file and contains a given phrase, or a defined handling checked by the
case's own assertions. `test_docs_table_matches_cases` keeps docs/robustness.md in step with the table.
"""

from __future__ import annotations

import json
import math
import os
import re
import stat
import struct
import threading
import tracemalloc
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from helpers import tone, write_wav

from tinyclap.audio import SAMPLE_RATE, AudioError, audio_info, load_audio, stream_windows

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "robustness.md"
STUDENT = "phinet_alpha_0.75_beta_0.75_t0_4_N_4"  # the smallest registered PhiNet, random weights
SR = SAMPLE_RATE
STREAM_WIN = 0.05  # seconds: short stream windows keep the per-case stream check cheap

PathArg = Path | bytes
Check = Callable[[np.ndarray], None]
Built = tuple[PathArg, Check | None]


# --- generators -----------------------------------------------------------------------------------------


# tone(seconds, rate, freq, amp) and write_wav(path, data, rate, subtype, fmt): tests/helpers.py


def wav_header(
    rate: int, channels: int, bits: int, data_bytes: int, tag: int = 1, riff: int | None = None
) -> bytes:
    """A canonical 44-byte RIFF/WAVE header; every field can be made to lie."""
    block = channels * bits // 8
    riff = 36 + data_bytes if riff is None else riff
    fmt = struct.pack("<IHHIIHH", 16, tag, channels, rate, rate * block, block, bits)
    return (
        b"RIFF"
        + struct.pack("<I", riff & 0xFFFFFFFF)
        + b"WAVE"
        + b"fmt "
        + fmt
        + b"data"
        + struct.pack("<I", data_bytes)
    )


def pcm16(x: np.ndarray) -> bytes:
    return (np.clip(x, -1, 1) * 32767).astype("<i2").tobytes()


def peak_hz(wave: np.ndarray, rate: int = SR) -> float:
    spec = np.abs(np.fft.rfft(wave))
    return float(np.argmax(spec) * rate / wave.shape[0])


def close_to(ref: np.ndarray, atol: float) -> Check:
    def check(w: np.ndarray) -> None:
        assert w.shape == ref.shape
        np.testing.assert_allclose(w, ref, atol=atol)

    return check


# --- the corpus -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    """One odd input. `error`: a phrase the AudioError's problem must contain (None: the file loads and
    `build`'s check holds). `embed`: also run the student on it. `whole`: load it whole (else stream only)."""

    id: str
    build: Callable[[Path, pytest.MonkeyPatch], Built]
    error: str | None = None
    stream_error: str | None = None  # when streaming reports it differently
    embed: bool = False
    whole: bool = True


def _bytes(name: str, data: bytes) -> Callable[[Path, pytest.MonkeyPatch], Built]:
    def build(tmp: Path, mp: pytest.MonkeyPatch) -> Built:
        (tmp / name).write_bytes(data)
        return tmp / name, None

    return build


ID3_ONLY = b"ID3\x04\x00\x00\x00\x00\x00\x10" + bytes(16)  # an MP3's ID3 tag and no frames
M4A_AAC = b"\x00\x00\x00\x20ftypM4A \x00\x00\x00\x00M4A mp42isom" + bytes(4000)  # an MP4 box: no decoder


def _noise_bytes(name: str, seed: int) -> Callable[[Path, pytest.MonkeyPatch], Built]:
    """5000 seeded random bytes under `name`."""
    return _bytes(name, np.random.default_rng(seed).bytes(5000))


def _sound(
    name: str, data: np.ndarray, rate: int = SR, subtype: str = "PCM_16", fmt: str | None = None
) -> Callable[[Path, pytest.MonkeyPatch], Built]:
    def build(tmp: Path, mp: pytest.MonkeyPatch) -> Built:
        return write_wav(tmp / name, data, rate, subtype, fmt), None

    return build


def _good_wav(tmp: Path, seconds: float = 1.0) -> bytes:
    path = write_wav(tmp / "_src.wav", tone(seconds))
    data = Path(path).read_bytes()
    Path(path).unlink()
    return data


def _renamed(
    name: str, fmt: str, subtype: str, seconds: float = 0.2
) -> Callable[[Path, pytest.MonkeyPatch], Built]:
    """A file of one format under another format's name (or none): decoded by content."""

    def build(tmp: Path, mp: pytest.MonkeyPatch) -> Built:
        src = tone(seconds)
        write_wav(tmp / f"_src.{fmt.lower()}", src, SR, subtype, fmt)
        os.replace(tmp / f"_src.{fmt.lower()}", tmp / name)
        assert audio_info(tmp / name).format.startswith(fmt)
        lossless = subtype.startswith("PCM")
        if lossless:
            return tmp / name, close_to(src, 1e-4)

        def check(w: np.ndarray) -> None:
            assert w.shape == src.shape
            assert abs(np.std(w) - np.std(src)) < 0.1 * np.std(src)

        return tmp / name, check

    return build


def b_truncated_header(tmp: Path, mp: pytest.MonkeyPatch) -> Built:
    (tmp / "cut.wav").write_bytes(_good_wav(tmp)[:20])  # inside the fmt chunk
    return tmp / "cut.wav", None


def b_header_only(tmp: Path, mp: pytest.MonkeyPatch) -> Built:
    (tmp / "hdr.wav").write_bytes(_good_wav(tmp)[:44])  # declares 1 s, holds nothing
    return tmp / "hdr.wav", None


def _first_half(tmp: Path, ext: str, subtype: str, fmt: str) -> Path:
    """The first half of the bytes of a 1 s tone encoded as `fmt`, in tmp/cut.<ext>."""
    write_wav(tmp / f"_x.{ext}", tone(1.0), SR, subtype, fmt)
    data = (tmp / f"_x.{ext}").read_bytes()
    (tmp / f"cut.{ext}").write_bytes(data[: len(data) // 2])
    return tmp / f"cut.{ext}"


def b_truncated_ogg(tmp: Path, mp: pytest.MonkeyPatch) -> Built:
    return _first_half(tmp, "ogg", "VORBIS", "OGG"), None


def b_unknown_tag(tmp: Path, mp: pytest.MonkeyPatch) -> Built:
    data = tone(0.1)
    (tmp / "tag.wav").write_bytes(wav_header(SR, 1, 16, 2 * data.shape[0], tag=0x1234) + pcm16(data))
    return tmp / "tag.wav", None


def b_zero_rate(tmp: Path, mp: pytest.MonkeyPatch) -> Built:
    (tmp / "rate0.wav").write_bytes(wav_header(0, 1, 16, 2000) + bytes(2000))
    return tmp / "rate0.wav", None


def b_zero_channels(tmp: Path, mp: pytest.MonkeyPatch) -> Built:
    hdr = bytearray(wav_header(SR, 1, 16, 2000))
    hdr[22:24] = struct.pack("<H", 0)
    (tmp / "ch0.wav").write_bytes(bytes(hdr) + bytes(2000))
    return tmp / "ch0.wav", None


def b_nan_at(name: str, value: float, at: float) -> Callable[[Path, pytest.MonkeyPatch], Built]:
    def build(tmp: Path, mp: pytest.MonkeyPatch) -> Built:
        data = tone(1.0)
        data[int(at * SR)] = value
        return write_wav(tmp / name, data, SR, "FLOAT"), None

    return build


def b_overflow_stereo(tmp: Path, mp: pytest.MonkeyPatch) -> Built:
    # finite float32 samples whose float32 channel sum would overflow to inf
    big = np.finfo(np.float32).max * 0.9
    return write_wav(tmp / "max.wav", np.full((4800, 2), big, np.float32), 48000, "FLOAT"), None


def b_missing(tmp: Path, mp: pytest.MonkeyPatch) -> Built:
    return tmp / "missing.wav", None


def b_broken_symlink(tmp: Path, mp: pytest.MonkeyPatch) -> Built:
    (tmp / "link.wav").symlink_to(tmp / "gone.wav")
    return tmp / "link.wav", None


def b_directory(tmp: Path, mp: pytest.MonkeyPatch) -> Built:
    (tmp / "x.wav").mkdir()
    return tmp / "x.wav", None


def b_fifo(tmp: Path, mp: pytest.MonkeyPatch) -> Built:
    os.mkfifo(tmp / "pipe.wav")
    return tmp / "pipe.wav", None


def b_device(tmp: Path, mp: pytest.MonkeyPatch) -> Built:
    (tmp / "null.wav").symlink_to("/dev/null")
    return tmp / "null.wav", None


def b_unreadable(tmp: Path, mp: pytest.MonkeyPatch) -> Built:
    path = write_wav(tmp / "locked.wav", tone(0.1))
    # tests run as root, who can read a chmod 000 file: simulate the refusal (as tests/test_audio.py does)
    mp.setattr(os, "access", lambda *a, **k: False)
    return path, None


def b_truncated_data(tmp: Path, mp: pytest.MonkeyPatch) -> Built:
    (tmp / "short.wav").write_bytes(_good_wav(tmp)[: 44 + 1000])  # header says 1 s, 500 samples present
    return tmp / "short.wav", close_to(tone(1.0)[:500], 1e-4)


def b_huge_declared(tmp: Path, mp: pytest.MonkeyPatch) -> Built:
    data = tone(0.1)[:100]
    (tmp / "liar.wav").write_bytes(wav_header(SR, 1, 16, 0x7FFFFFF0) + pcm16(data))
    return tmp / "liar.wav", close_to(data, 1e-4)


def b_truncated_mp3(tmp: Path, mp: pytest.MonkeyPatch) -> Built:
    path = _first_half(tmp, "mp3", "MPEG_LAYER_III", "MP3")

    def check(w: np.ndarray) -> None:
        assert 0.2 * SR < w.shape[0] < SR  # the frames that are there, not the header's 1 s
        assert np.abs(w).max() > 0.2

    return path, check


def b_one_sample(tmp: Path, mp: pytest.MonkeyPatch) -> Built:
    return write_wav(tmp / "one.wav", np.array([0.5], np.float32)), close_to(np.array([0.5], np.float32), 0)


def b_one_sample_8k(tmp: Path, mp: pytest.MonkeyPatch) -> Built:
    def check(w: np.ndarray) -> None:
        assert abs(w.shape[0] - SR / 8000) <= 0.5  # 5.5 -> 5 or 6 samples

    return write_wav(tmp / "one8k.wav", np.array([0.5], np.float32), 8000), check


def b_ten_ms(tmp: Path, mp: pytest.MonkeyPatch) -> Built:
    def check(w: np.ndarray) -> None:
        assert w.shape == (441,)

    return write_wav(tmp / "10ms.wav", tone(0.01, 16000), 16000), check


def b_silence(tmp: Path, mp: pytest.MonkeyPatch) -> Built:
    def check(w: np.ndarray) -> None:
        assert w.shape == (SR,) and not w.any()

    return write_wav(tmp / "silence.wav", np.zeros(SR, np.float32)), check


def b_hour(tmp: Path, mp: pytest.MonkeyPatch) -> Built:
    """One hour of 8 kHz int16 silence (57.6 MB declared) as a sparse file: no disk, no write time."""
    rate, n = 8000, 3600 * 8000
    path = tmp / "hour.wav"
    with open(path, "wb") as f:
        f.write(wav_header(rate, 1, 16, 2 * n))
        f.truncate(44 + 2 * n)
    return path, None


def b_dc(tmp: Path, mp: pytest.MonkeyPatch) -> Built:
    def check(w: np.ndarray) -> None:
        assert abs(float(w.mean()) - 0.5) < 1e-3  # the offset is kept, not removed

    return write_wav(tmp / "dc.wav", tone(0.5) + 0.5), check


def b_clipped(tmp: Path, mp: pytest.MonkeyPatch) -> Built:
    def check(w: np.ndarray) -> None:
        assert np.abs(w).max() > 0.999 and np.mean(np.abs(w) > 0.99) > 0.5

    return write_wav(tmp / "clip.wav", np.clip(tone(0.5, amp=4.0), -1, 1)), check


def b_over_full_scale(tmp: Path, mp: pytest.MonkeyPatch) -> Built:
    def check(w: np.ndarray) -> None:
        assert abs(float(np.abs(w).max()) - 30.0) < 1e-3  # float files are not clipped

    return write_wav(tmp / "hot.wav", tone(0.5, amp=30.0), SR, "FLOAT"), check


def b_rate(rate: int) -> Callable[[Path, pytest.MonkeyPatch], Built]:
    def build(tmp: Path, mp: pytest.MonkeyPatch) -> Built:
        def check(w: np.ndarray) -> None:
            assert w.shape == (SR // 2,)
            assert abs(peak_hz(w) - 440) < 3
            assert abs(np.abs(w[1000:-1000]).max() - 0.3) < 0.01

        return write_wav(tmp / f"r{rate}.wav", tone(0.5, rate), rate), check

    return build


def b_six_channels(tmp: Path, mp: pytest.MonkeyPatch) -> Built:
    data = np.stack([tone(0.2, freq=200 * (k + 1), amp=0.1) + 0.01 * k for k in range(6)], axis=1)
    return write_wav(tmp / "5.1.wav", data, SR, "FLOAT"), close_to(data.mean(axis=1), 1e-6)


def b_opposite_phase(tmp: Path, mp: pytest.MonkeyPatch) -> Built:
    x = tone(0.5)

    def check(w: np.ndarray) -> None:
        assert not w.any()  # the mono mix of x and -x is silence

    return write_wav(tmp / "antiphase.wav", np.stack([x, -x], axis=1), SR, "FLOAT"), check


def b_subtype(name: str, subtype: str, atol: float) -> Callable[[Path, pytest.MonkeyPatch], Built]:
    def build(tmp: Path, mp: pytest.MonkeyPatch) -> Built:
        x = tone(0.1).astype(np.float64)
        return write_wav(tmp / name, x, SR, subtype), close_to(x.astype(np.float32), atol)

    return build


def b_adpcm(tmp: Path, mp: pytest.MonkeyPatch) -> Built:
    x = tone(0.1)

    def check(w: np.ndarray) -> None:
        assert w.shape[0] >= x.shape[0]  # whole ADPCM blocks: padded at the end
        assert np.corrcoef(w[: x.shape[0]], x)[0, 1] > 0.95

    return write_wav(tmp / "adpcm.wav", x, SR, "IMA_ADPCM"), check


def b_gsm(tmp: Path, mp: pytest.MonkeyPatch) -> Built:
    path = write_wav(tmp / "gsm.wav", tone(1.0, 8000), 8000, "GSM610")  # a format libsndfile cannot seek in
    frames = audio_info(path).frames

    def check(w: np.ndarray) -> None:
        assert abs(w.shape[0] - frames * SR / 8000) <= 1

    return path, check


def b_non_utf8(tmp: Path, mp: pytest.MonkeyPatch) -> Built:
    path = os.fsencode(tmp) + b"/caf\xe9-\xff.wav"  # Latin-1 bytes: not valid UTF-8
    return write_wav(path, tone(0.1)), close_to(tone(0.1), 1e-4)


CASES: list[Case] = [
    # -- refused: an AudioError naming the file --
    Case("zero_byte", _bytes("zero.wav", b""), error="unreadable or unsupported audio format"),
    Case("truncated_header", b_truncated_header, error="unreadable or unsupported audio format"),
    Case("header_only", b_header_only, error="empty audio (0 samples)"),
    Case("empty_wav", _sound("empty.wav", np.zeros((0, 1), np.float32)), error="empty audio (0 samples)"),
    Case("text_as_wav", _bytes("text.wav", b"this is not audio\n" * 50), error="Format not recognised"),
    Case("random_bytes_wav", _noise_bytes("noise.wav", 1), error="unreadable or unsupported audio format"),
    Case("random_bytes_mp3", _noise_bytes("noise.mp3", 2), error="no decodable audio"),
    Case("id3_only_mp3", _bytes("tag.mp3", ID3_ONLY), error="no decodable audio"),
    Case("truncated_ogg", b_truncated_ogg, error="unreadable or unsupported audio format"),
    Case("unknown_format_tag", b_unknown_tag, error="unreadable or unsupported audio format"),
    Case("m4a_aac", _bytes("song.m4a", M4A_AAC), error="unreadable or unsupported audio format"),
    Case("zero_sample_rate", b_zero_rate, error="unreadable or unsupported audio format"),
    Case("zero_channels", b_zero_channels, error="unreadable or unsupported audio format"),
    Case(
        "all_nan",
        _sound("nan.wav", np.full(1000, np.nan, np.float32), SR, "FLOAT"),
        error="all samples are NaN/inf",
        stream_error="non-finite (NaN/inf) samples, first at 0.000 s",
    ),
    Case(
        "nan_in_middle",
        b_nan_at("nan1.wav", np.nan, 0.5),
        error="non-finite (NaN/inf) samples, first at 0.500 s",
    ),
    Case(
        "inf_in_middle",
        b_nan_at("inf1.wav", -np.inf, 0.25),
        error="non-finite (NaN/inf) samples, first at 0.250 s",
    ),
    Case(
        "implausible_peak",
        _sound("1e20.wav", np.full(1000, 1e20, np.float32), SR, "FLOAT"),
        error="implausible sample value",
    ),
    Case("overflowing_mix", b_overflow_stereo, error="implausible sample value"),
    Case(
        "one_sample_96k",
        _sound("one96k.wav", np.array([0.5], np.float32), 96000),
        error="too short: 1 sample(s) at 96000 Hz",
    ),
    Case("missing_file", b_missing, error="file not found"),
    Case("broken_symlink", b_broken_symlink, error="broken symbolic link"),
    Case("directory_named_wav", b_directory, error="is a directory"),
    Case("fifo_named_wav", b_fifo, error="not a regular file (a FIFO/named pipe)"),
    Case("device_named_wav", b_device, error="not a regular file (a character device)"),
    Case("unreadable_permissions", b_unreadable, error="permission denied"),
    # -- defined handling: loads --
    Case("flac_named_wav", _renamed("flac.wav", "FLAC", "PCM_16")),
    Case("ogg_named_mp3", _renamed("vorbis.mp3", "OGG", "VORBIS", seconds=1.0)),
    Case("aiff_named_wav", _renamed("aiff.wav", "AIFF", "PCM_16")),
    Case("no_extension", _renamed("clip", "WAV", "PCM_16")),
    Case("truncated_data_chunk", b_truncated_data),
    Case("huge_declared_length", b_huge_declared),
    Case("truncated_mp3", b_truncated_mp3),
    Case("one_sample", b_one_sample, embed=True),
    Case("one_sample_8k", b_one_sample_8k),
    Case("ten_ms", b_ten_ms),
    Case("silence", b_silence, embed=True),
    Case("one_hour_silence", b_hour, embed=True, whole=False),
    Case("dc_offset", b_dc, embed=True),
    Case("hard_clipping", b_clipped),
    Case("over_full_scale_float", b_over_full_scale, embed=True),
    Case("rate_8k", b_rate(8000)),
    Case("rate_96k", b_rate(96000)),
    Case("six_channels", b_six_channels),
    Case("opposite_phase_stereo", b_opposite_phase, embed=True),
    Case("pcm_24", b_subtype("p24.wav", "PCM_24", 1e-6)),
    Case("float64", b_subtype("f64.wav", "DOUBLE", 1e-7)),
    Case("pcm_u8", b_subtype("u8.wav", "PCM_U8", 1 / 100)),
    Case("alaw", b_subtype("alaw.wav", "ALAW", 0.02)),
    Case("mulaw", b_subtype("ulaw.wav", "ULAW", 0.02)),
    Case("ima_adpcm", b_adpcm),
    Case("gsm610", b_gsm),
    Case("non_utf8_name", b_non_utf8),
]
BY_ID = {c.id: c for c in CASES}
assert len(BY_ID) == len(CASES), "duplicate case id"


# --- helpers --------------------------------------------------------------------------------------------


def bounded(fn: Callable[..., Any], path: PathArg, *args: Any, timeout: float = 30.0, **kw: Any) -> Any:
    """Run fn(path, ...) in a thread; a call still blocked after `timeout` (e.g. opening a FIFO, which waits
    for a writer) fails the test instead of hanging the suite."""
    out: dict[str, Any] = {}

    def target() -> None:
        try:
            out["value"] = fn(path, *args, **kw)
        except BaseException as e:  # handed to the caller's thread
            out["error"] = e

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(timeout)
    if thread.is_alive():
        try:  # release a reader blocked on a FIFO so the thread can finish
            if stat.S_ISFIFO(os.stat(path).st_mode):
                os.close(os.open(path, os.O_WRONLY | os.O_NONBLOCK))
        except OSError:
            pass
        pytest.fail(f"{getattr(fn, '__name__', fn)} did not return within {timeout} s (hang)")
    if "error" in out:
        raise out["error"]
    return out.get("value")


def stream_all(path: PathArg, **kw: Any) -> list[tuple[float, np.ndarray]]:
    return list(stream_windows(path, **kw))


@pytest.fixture(scope="module")
def student() -> Any:
    import torch

    from tinyclap.models import StudentEmbedder
    from tinyclap.models.students import create_student

    torch.manual_seed(0)
    return StudentEmbedder(create_student(STUDENT)).eval()


def assert_embeds(model: Any, wave: np.ndarray) -> None:
    from tinyclap.evaluation.embedding import embed_clip

    emb = embed_clip(model, wave)  # deterministic windows, (D,)
    assert emb.shape == (1024,)
    assert bool(emb.isfinite().all()), "non-finite embedding"
    assert abs(float(emb.norm()) - 1.0) < 1e-4


# --- tests ----------------------------------------------------------------------------------------------


def test_corpus_size() -> None:
    errors = [c for c in CASES if c.error]
    assert len(CASES) >= 25 and len(errors) >= 15 and len(CASES) - len(errors) >= 15


@pytest.mark.parametrize("case", [c for c in CASES if c.error], ids=lambda c: c.id)
def test_refused_with_clear_error(case: Case, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path, _ = case.build(tmp_path, monkeypatch)
    shown = os.fsdecode(path)
    for fn, phrase in ((load_audio, case.error), (stream_all, case.stream_error or case.error)):
        with pytest.raises(AudioError) as e:
            bounded(fn, path)
        assert isinstance(e.value, ValueError)
        assert str(e.value).startswith(f"{shown}: "), f"message does not start with the path: {e.value}"
        assert phrase in e.value.problem, f"{fn.__name__}: {e.value.problem!r} lacks {phrase!r}"
        assert os.fsdecode(e.value.path) == shown


@pytest.mark.parametrize("case", [c for c in CASES if not c.error], ids=lambda c: c.id)
def test_defined_handling(case: Case, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, student: Any) -> None:
    path, check = case.build(tmp_path, monkeypatch)
    if not case.whole:
        return check_hour(path, student)
    wave = bounded(load_audio, path)
    assert wave.dtype == np.float32 and wave.ndim == 1 and wave.shape[0] > 0
    assert np.isfinite(wave).all()
    if check is not None:
        check(wave)
    # the streaming reader agrees on the amount of audio and never yields non-finite windows
    windows = bounded(stream_all, path, window=STREAM_WIN, hop=STREAM_WIN)
    win_n = int(round(STREAM_WIN * SR))
    assert all(w.shape == (win_n,) and np.isfinite(w).all() for _, w in windows)
    assert abs(len(windows) - max(1, math.ceil(wave.shape[0] / win_n))) <= 1
    if case.embed:
        assert_embeds(student, wave)


def check_hour(path: PathArg, model: Any) -> None:
    """An hour streams in bounded memory: 720 silent 5 s windows, the first of which embeds normally."""
    assert audio_info(path).duration == 3600.0
    tracemalloc.start()
    try:
        n, first, last_t = 0, None, -1.0
        for t, w in stream_windows(path, window=5.0, hop=5.0, block_seconds=60.0):
            assert w.shape == (5 * SR,) and not w.any()
            first = w if first is None else first
            n, last_t = n + 1, t
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert (n, last_t) == (720, 3595.0)
    # ~65 s of audio in flight at most, against 635 MB for the hour decoded whole at 44.1 kHz
    assert peak < 100e6, f"streaming peak {peak / 1e6:.0f} MB"
    assert first is not None
    assert_embeds(model, first)


def test_docs_table_matches_cases() -> None:
    """docs/robustness.md has one table row per case (no more, no fewer), saying the same outcome."""
    text = DOC.read_text(encoding="utf-8")
    section = text.split("<!-- audio-cases:start -->")[1].split("<!-- audio-cases:end -->")[0]
    rows = {m[1]: m[0] for m in re.finditer(r"^\| `([a-z0-9_]+)` \|.*$", section, flags=re.M)}
    assert sorted(rows) == sorted(BY_ID), "docs/robustness.md and CASES list different inputs"
    for cid, row in rows.items():
        case = BY_ID[cid]
        if case.error:
            assert "AudioError" in row and case.error in row, f"{cid}: doc row does not say {case.error!r}"
        else:
            assert "AudioError" not in row, f"{cid}: doc row says it is refused"


# --- batch behaviour through the command line -----------------------------------------------------------


@pytest.fixture
def classes_npz(tmp_path: Path) -> Path:
    from tinyclap.zeroshot import ZeroShotClassifier

    rng = np.random.default_rng(0)
    clf = ZeroShotClassifier(["dog", "rain", "siren"], rng.standard_normal((3, 1024)), math.log(100.0))
    return clf.save(tmp_path / "classes.npz")


BATCH_GOOD = ("flac_named_wav", "rate_96k", "one_sample")
BATCH_BAD = (
    "zero_byte",
    "text_as_wav",
    "all_nan",
    "directory_named_wav",
    "fifo_named_wav",
    "one_sample_96k",
    "missing_file",
    "truncated_header",
)


def _batch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[list[str], list[str]]:
    made = []
    for cid in BATCH_GOOD + BATCH_BAD:
        sub = tmp_path / cid
        sub.mkdir()
        made.append(os.fsdecode(BY_ID[cid].build(sub, monkeypatch)[0]))
    return made[: len(BATCH_GOOD)], made[len(BATCH_GOOD) :]


def _classify(argv: list[str]) -> int:
    from tinyclap.cli import main

    return main(argv)


def test_classify_skips_and_reports_bad_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], classes_npz: Path
) -> None:
    good, bad = _batch(tmp_path, monkeypatch)
    files = [f for pair in zip(bad, good + [None] * len(bad)) for f in pair if f]  # interleaved
    base = ["classify", "--model", STUDENT, "--classes", str(classes_npz), "--top", "2"]

    rc = bounded(_classify, base + files)
    out, err = capsys.readouterr()
    assert rc == 0  # bad files are skipped, not fatal
    for f in good:
        assert f"{f}\n" in out
    assert len(re.findall(r"^  +[0-9.]+  (dog|rain|siren)$", out, flags=re.M)) == 2 * len(good)
    for f in bad:
        assert re.search(rf"^skipped {re.escape(f)}: \S", err, flags=re.M), f"{f} not reported"
    assert f"{len(bad)} of {len(files)} files could not be read" in err

    rc = bounded(_classify, base + ["--strict", "--json"] + files)
    out, err = capsys.readouterr()
    assert rc != 0  # --strict: any unreadable file fails the run ...
    result = json.loads(out)  # ... but the readable ones are still classified
    assert [r["file"] for r in result["results"]] == good
    assert all(len(r["labels"]) == 2 for r in result["results"])
    assert sorted(f["file"] for f in result["failed"]) == sorted(bad)
    problems = {f["file"]: f["error"] for f in result["failed"]}
    assert "FIFO" in problems[bad[BATCH_BAD.index("fifo_named_wav")]]
    assert "too short" in problems[bad[BATCH_BAD.index("one_sample_96k")]]

    rc = bounded(_classify, base + bad)  # nothing readable at all: an error even without --strict
    assert rc != 0
    assert f"{len(bad)} of {len(bad)} files could not be read" in capsys.readouterr().err


def test_classify_non_utf8_names(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], classes_npz: Path
) -> None:
    good = os.fsdecode(b_non_utf8(tmp_path, monkeypatch)[0])
    bad = os.fsdecode(os.fsencode(tmp_path) + b"/bad-\xff.wav")
    Path(bad).write_bytes(b"not audio")
    rc = _classify(["classify", "--model", STUDENT, "--classes", str(classes_npz), good, bad])
    out, err = capsys.readouterr()
    assert rc == 0, err
    assert "caf" in out and "bad-" in err
