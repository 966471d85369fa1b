"""Audio loading, clip fitting and windowing (numpy + soundfile + soxr only; never imports torch).

Everything returns float32 mono waveforms at `SAMPLE_RATE` (44.1 kHz, MS CLAP 2022's rate). Decoding is
libsndfile's (WAV, FLAC, Ogg/Vorbis/Opus, MP3, ...), resampling is soxr at quality "HQ" (soxr's own default),
both in one shot (`load_audio`) and incrementally (`stream_windows`, bounded memory for hour-long files).

Bad input never surfaces as a libsndfile/OS traceback: every problem with a file is an `AudioError`
(a ValueError) whose message starts with the file's path.
"""

from __future__ import annotations

import io
import os
import stat
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Literal, Union

import numpy as np
import soundfile as sf
import soxr

from tinyclap._util import display_path

SAMPLE_RATE = 44100
CLIP_SECONDS = 5.0
CLIP_SAMPLES = 220500  # = int(CLIP_SECONDS * SAMPLE_RATE), what MS CLAP 2022 sees per clip
RESAMPLE_QUALITY = "HQ"  # soxr's default quality, named explicitly so both loaders provably agree
# Largest accepted |sample|. Decoded integer PCM lies in [-1, 1); float files may exceed that (unnormalised
# or int-scaled floats reach ~2e9), but beyond ~3e16 the front end's float32 STFT power overflows and the
# embedding turns NaN, so such values (far past any real recording) are refused instead.
MAX_ABS_SAMPLE = 1e12
# Bounds on what a file's header may ask for (docs/robustness.md says why each value). A header can declare any
# rate: an 88 KB WAV declaring 1 Hz would resample to ~2e9 samples at 44.1 kHz, so rates outside what real
# recorders write (telephone-grade 8 kHz down to 1 kHz; ultrasonic bat detectors and DXD up to 768 kHz) are
# refused before anything is decoded or resampled.
MIN_SAMPLE_RATE = 1000
MAX_SAMPLE_RATE = 768_000
# `load_audio` decodes a file whole: at most MAX_SECONDS of audio (3 h is 1.9 GB as float32 at 44.1 kHz; longer
# files are streamed: `stream_windows`, `classify --window`) and MAX_DECODE_BYTES of float32 buffers (the mono
# mix at the file's rate plus the resampled copy), checked against the header before reading and while reading.
MAX_SECONDS = 3 * 3600.0
MAX_DECODE_BYTES = 4 << 30
# Streams hold only a block at a time; their bound is time, not memory: a day of audio at most.
MAX_STREAM_SECONDS = 24 * 3600.0
UNKNOWN_FRAMES = (1 << 63) - 1  # the frame count libsndfile reports when a header gives no length (SF_COUNT_MAX)
WHOLE_DECODE_SECONDS = 120.0  # `iter_eval_windows` decodes a file up to this long whole (21 MB at 44.1 kHz)
MAX_WINDOW_SECONDS = 3600.0  # longest `stream_windows` window or hop (one window is held in memory)
MAX_TIMELINE_WINDOW_S = 600.0  # a window is held whole, and copied a few times: 10 minutes at 44.1 kHz is 106 MB
MIN_TIMELINE_HOP_S = 0.01  # about one log-mel frame
BLOCK_BYTES = 64 << 20  # largest (frames, channels) float32 block read at once (libsndfile allows 1024 channels)

POLICIES = ("eval", "train")
PADS = ("zero", "repeat")

PathLike = Union[str, bytes, "os.PathLike[str]", "os.PathLike[bytes]"]


class AudioError(ValueError):
    """A file that cannot be used as audio; the message names the file and the problem."""

    def __init__(self, path: PathLike, problem: str) -> None:
        self.path = path
        self.problem = problem
        super().__init__(f"{display_path(path)}: {problem}")


@dataclass(frozen=True)
class AudioInfo:
    """Cheap header metadata. `frames` is libsndfile's count (an estimate for some MP3s)."""

    frames: int
    sample_rate: int
    channels: int
    duration: float
    format: str


_FILE_KINDS = {
    stat.S_IFIFO: "a FIFO/named pipe",
    stat.S_IFCHR: "a character device",
    stat.S_IFBLK: "a block device",
    stat.S_IFSOCK: "a socket",
}


def _check_path(path: PathLike) -> bytes:
    """Return the path as bytes (libsndfile takes them verbatim, so non-UTF-8 names work) or raise."""
    try:
        bpath = os.fsencode(path)
    except TypeError as e:
        raise TypeError(f"expected a str, bytes or os.PathLike path, got {type(path).__name__}") from e
    try:
        mode = os.stat(bpath).st_mode
    except FileNotFoundError:
        if os.path.islink(bpath):  # `ls` shows the name, so say why it still cannot be opened
            target = display_path(os.readlink(bpath))
            raise AudioError(path, f"file not found (broken symbolic link to {target})") from None
        raise AudioError(path, "file not found") from None
    except OSError as e:  # e.g. a path component that is a file, or a name too long
        raise AudioError(path, f"cannot access file ({e.strerror or e})") from e
    if stat.S_ISDIR(mode):
        raise AudioError(path, "is a directory, not an audio file")
    if not stat.S_ISREG(mode):
        # opening a FIFO blocks until a writer appears (a hang, not an error); devices, sockets: not files
        raise AudioError(path, f"not a regular file ({_FILE_KINDS.get(stat.S_IFMT(mode), 'special file')})")
    if not os.access(bpath, os.R_OK):
        raise AudioError(path, "permission denied (file is not readable)")
    return bpath


def _open(path: PathLike, data: bytes | None = None) -> sf.SoundFile:
    """Open for reading with libsndfile, turning every failure into an AudioError. `data`: the file's bytes,
    already read by the caller (decoded from memory: the file is not opened again)."""
    source: io.BytesIO | bytes = io.BytesIO(data) if data is not None else _check_path(path)
    try:
        return sf.SoundFile(source)
    except PermissionError as e:
        raise AudioError(path, "permission denied (file is not readable)") from e
    except (sf.SoundFileError, RuntimeError, OSError) as e:
        # libsndfile says e.g. "Format not recognised." for text, zero-byte or truncated files
        detail = str(e).split(": ", 1)[-1].strip() if str(e) else type(e).__name__
        if "not a regular file" in detail:
            # libsndfile's MP3 decoder says "File does not exist or is not a regular file (possibly a
            # pipe?)" for any undecodable .mp3; _check_path already proved it is a regular file
            detail = "no decodable audio stream"
        raise AudioError(path, f"unreadable or unsupported audio format ({detail})") from e


def _to_mono(block: np.ndarray) -> np.ndarray:
    """(frames, channels) -> (frames,) float32, averaging channels (what downmixing to mono means here)."""
    if block.shape[1] == 1:
        return np.ascontiguousarray(block[:, 0], dtype=np.float32)
    # accumulate in float64: a float32 sum of finite near-float32-max samples would overflow to inf
    return block.mean(axis=1, dtype=np.float64).astype(np.float32)


def _block_frames(f: sf.SoundFile, seconds: float) -> int:
    """Frames per read block: `seconds` of audio, but never more than BLOCK_BYTES of float32."""
    return max(1, min(int(round(seconds * f.samplerate)), BLOCK_BYTES // (4 * max(1, f.channels))))


def _check_header(path: PathLike, f: sf.SoundFile, sample_rate: int = SAMPLE_RATE) -> int:
    """The file's sample rate, after refusing a header whose rate or channel count no recording has."""
    rate, channels, frames = int(f.samplerate), int(f.channels), max(0, int(f.frames))
    if rate <= 0 or channels <= 0:
        raise AudioError(path, f"invalid header (sample rate {rate}, {channels} channels)")
    if not MIN_SAMPLE_RATE <= rate <= MAX_SAMPLE_RATE:
        raise AudioError(
            path,
            f"declares a sample rate of {rate} Hz, outside the plausible {MIN_SAMPLE_RATE}-{MAX_SAMPLE_RATE} Hz "
            f"(its {frames} frames would resample to {frames * sample_rate / rate:.3g} samples at {sample_rate} Hz)",
        )
    return rate


def _read_blocks(f: sf.SoundFile, block_n: int) -> Iterator[np.ndarray]:
    """(frames, channels) float32 blocks until the end. Unlike `SoundFile.blocks`/`read()` this also works
    for formats libsndfile cannot seek in (e.g. GSM 6.10 in WAV), where the frame count is unknown."""
    while True:
        block = f.read(block_n, dtype="float32", always_2d=True)
        if block.shape[0] == 0:
            return
        yield block
        if block.shape[0] < block_n:
            return


def _too_short(frames: int, rate: int, sample_rate: int) -> str:
    return f"too short: {frames} sample(s) at {rate} Hz is less than one sample at {sample_rate} Hz"


def _check_values(path: PathLike, mono: np.ndarray, rate: int, offset: int = 0, whole: bool = False) -> None:
    """Refuse NaN/inf and implausibly large samples in `mono` (frames from `offset` on), naming the time."""
    finite = np.isfinite(mono)
    if not finite.all():
        first = offset + int(np.argmin(finite))
        what = "all samples are NaN/inf" if whole and not finite.any() else "non-finite (NaN/inf) samples"
        raise AudioError(path, f"{what}, first at {first / rate:.3f} s")
    peak = max(float(mono.max()), -float(mono.min())) if mono.size else 0.0
    if peak > MAX_ABS_SAMPLE:
        first = offset + int(np.argmax((mono > MAX_ABS_SAMPLE) | (mono < -MAX_ABS_SAMPLE)))
        raise AudioError(
            path,
            f"implausible sample value {peak:.3g} (limit {MAX_ABS_SAMPLE:.0e}; the log-mel front end would "
            f"overflow), first at {first / rate:.3f} s",
        )


def _check_rate(sample_rate: int) -> int:
    if isinstance(sample_rate, bool) or not isinstance(sample_rate, (int, np.integer)) or sample_rate <= 0:
        raise ValueError(f"sample_rate must be a positive integer, got {sample_rate!r}")
    return int(sample_rate)


def audio_info(path: PathLike, *, data: bytes | None = None) -> AudioInfo:
    """Header metadata without decoding the samples (same errors as `load_audio`, including an implausible
    declared sample rate; the declared length is not bounded here). `data`: the file's bytes, if read."""
    with _open(path, data) as f:
        rate = _check_header(path, f)
        frames, channels = int(f.frames), int(f.channels)
        fmt = f"{f.format}/{f.subtype}"
    return AudioInfo(frames=frames, sample_rate=rate, channels=channels, duration=frames / rate, format=fmt)


def load_audio(path: PathLike, sample_rate: int = SAMPLE_RATE, *, max_seconds: float = MAX_SECONDS) -> np.ndarray:
    """Decode a whole file to a float32 mono waveform at `sample_rate` (channels averaged, soxr HQ).

    Raises AudioError for a missing file (or broken symlink), a directory or other non-regular file (a FIFO
    would otherwise block forever), an unreadable/unsupported/undecodable file, a declared sample rate outside
    MIN_SAMPLE_RATE..MAX_SAMPLE_RATE, audio longer than `max_seconds` or needing more than MAX_DECODE_BYTES of
    buffers (checked against the header before reading, then while reading: a header may lie), a file with
    no samples or too few to survive resampling, any NaN/inf sample, or a sample beyond +-MAX_ABS_SAMPLE.
    docs/robustness.md lists the outcome for each kind of odd input.
    """
    sample_rate = _check_rate(sample_rate)
    if not max_seconds > 0:
        raise ValueError(f"max_seconds must be > 0, got {max_seconds!r}")
    with _open(path) as f:
        rate = _check_header(path, f, sample_rate)
        # float32 bytes per source frame: the mono mix, plus its resampled copy
        per_frame = 4 * (1 + (sample_rate / rate if rate != sample_rate else 0))
        max_frames = int(min(max_seconds * rate, MAX_DECODE_BYTES / per_frame))
        declared = max(0, int(f.frames))
        declared = 0 if declared >= UNKNOWN_FRAMES else declared  # libsndfile's "length unknown"
        if declared > max_frames:
            raise AudioError(path, _too_long(declared, rate, max_seconds, per_frame, "declares"))
        try:
            mono = _read_mono(path, f, rate, declared, max_frames, max_seconds, per_frame)
        except AudioError:
            raise
        except (sf.SoundFileError, RuntimeError, OSError, MemoryError, ValueError) as e:
            raise AudioError(path, f"cannot decode audio ({type(e).__name__}: {e})") from e
    if mono.shape[0] == 0:
        raise AudioError(path, "empty audio (0 samples)")
    _check_values(path, mono, rate, whole=True)
    if rate == sample_rate:
        return mono
    try:
        wave = soxr.resample(mono, rate, sample_rate, quality=RESAMPLE_QUALITY).astype(np.float32, copy=False)
    except (MemoryError, ValueError, RuntimeError) as e:
        raise AudioError(path, f"cannot resample audio ({type(e).__name__}: {e})") from e
    if wave.shape[0] == 0:
        raise AudioError(path, _too_short(mono.shape[0], rate, sample_rate))
    return wave


def _too_long(frames: int, rate: int, max_seconds: float, per_frame: float, verb: str) -> str:
    return (
        f"too long to decode whole: {verb} {frames} frames at {rate} Hz ({frames / rate:.0f} s, "
        f"{frames * per_frame / 1e9:.2f} GB of float32 buffers); the limits are {max_seconds:g} s and "
        f"{MAX_DECODE_BYTES / 1e9:.1f} GB (stream long audio instead: stream_windows, classify --window)"
    )


def _read_mono(
    path: PathLike, f: sf.SoundFile, rate: int, declared: int, max_frames: int, max_seconds: float, per_frame: float
) -> np.ndarray:
    """The whole file mixed to mono, read block by block into one buffer sized by the header (never beyond
    `max_frames`; grown if the header understated the length), so a lying header allocates nothing huge."""
    buf = np.empty(max(1, min(declared, max_frames)), dtype=np.float32)
    n = 0
    for block in _read_blocks(f, _block_frames(f, 10.0)):
        mono = _to_mono(block)
        if n + mono.shape[0] > max_frames:
            raise AudioError(path, _too_long(n + mono.shape[0], rate, max_seconds, per_frame, "holds at least"))
        if n + mono.shape[0] > buf.shape[0]:
            grown = np.empty(min(max_frames, max(2 * buf.shape[0], n + mono.shape[0])), dtype=np.float32)
            grown[:n] = buf[:n]
            buf = grown
        buf[n : n + mono.shape[0]] = mono
        n += mono.shape[0]
    return buf[:n] if 2 * n >= buf.shape[0] else buf[:n].copy()


def _check_choice(name: str, value: str, valid: tuple[str, ...]) -> None:
    if value not in valid:
        raise ValueError(f"invalid {name} {value!r}; valid: {', '.join(repr(v) for v in valid)}")


def _check_wave(wave: np.ndarray, length: int) -> np.ndarray:
    wave = np.asarray(wave, dtype=np.float32)
    if wave.ndim != 1:
        raise ValueError(f"expected a 1-D mono waveform, got shape {wave.shape}")
    if wave.shape[0] == 0:
        raise ValueError("cannot fit an empty waveform (0 samples)")
    if isinstance(length, bool) or not isinstance(length, (int, np.integer)) or length <= 0:
        raise ValueError(f"length must be a positive integer, got {length!r}")
    return wave


def _pad(wave: np.ndarray, length: int, pad: str) -> np.ndarray:
    """Extend a clip shorter than `length`: zeros at the end, or the clip tiled and cut (msclap's way)."""
    if pad == "repeat":
        reps = -(-length // wave.shape[0])  # ceil
        return np.tile(wave, reps)[:length].copy()
    out = np.zeros(length, dtype=np.float32)
    out[: wave.shape[0]] = wave
    return out


def fit_clip(
    wave: np.ndarray,
    length: int = CLIP_SAMPLES,
    policy: Literal["eval", "train"] = "eval",
    rng: np.random.Generator | None = None,
    pad: Literal["zero", "repeat"] = "zero",
) -> np.ndarray:
    """Crop or pad a mono waveform to exactly `length` samples -> (length,) float32 (a new array).

    Longer clips: "train" takes a uniformly random crop drawn from `rng` (a fresh unseeded generator when
    None), "eval" the deterministic centre crop. Shorter clips, under both policies: pad="zero" appends
    zeros; pad="repeat" tiles the clip and cuts it to `length`, as msclap's
    CLAPWrapper.load_audio_into_tensor does for clips no longer than the target duration.
    """
    _check_choice("policy", policy, POLICIES)
    _check_choice("pad", pad, PADS)
    wave = _check_wave(wave, length)
    n = wave.shape[0]
    if n < length:
        return _pad(wave, length, pad)
    if n == length:
        return wave.copy()
    if policy == "train":
        rng = np.random.default_rng() if rng is None else rng
        start = int(rng.integers(0, n - length + 1))
    else:
        start = (n - length) // 2
    return wave[start : start + length].copy()


def eval_windows(
    wave: np.ndarray, length: int = CLIP_SAMPLES, pad: Literal["zero", "repeat"] = "zero"
) -> np.ndarray:
    """Deterministic windows covering a clip for mean-of-windows evaluation -> (K, length) float32.

    - n <= length: K = 1, the clip fitted with `fit_clip(policy="eval", pad=pad)`.
    - otherwise K = n // length full non-overlapping windows, and the remainder r = n % length is handled so
      that no window is ever mostly zeros: if r >= length / 2 one more window aligned to the clip's end is
      added (it overlaps the previous one; all its samples are real audio); if r < length / 2 the full
      windows are centred, dropping r // 2 samples at the start and the rest at the end (so a clip just
      over `length` gives the same single window as the centre crop of `fit_clip`).
    """
    _check_choice("pad", pad, PADS)
    wave = _check_wave(wave, length)
    n = wave.shape[0]
    if n <= length:
        return fit_clip(wave, length, policy="eval", pad=pad)[None, :]
    return np.stack([wave[s : s + length] for s in window_starts(n, length)]).astype(np.float32, copy=False)


def window_starts(n: int, length: int) -> list[int]:
    """Start samples of the full windows `eval_windows` takes from n > length samples (its docstring says
    how the remainder is handled); [0] when n <= length (the one window is then padded)."""
    if n <= length:
        return [0]
    k_full, rem = divmod(n, length)
    if 2 * rem >= length:
        return [i * length for i in range(k_full)] + [n - length]
    return [rem // 2 + i * length for i in range(k_full)]


def iter_eval_windows(path: PathLike, length: int = CLIP_SAMPLES, sample_rate: int = SAMPLE_RATE, *,
                      centre: bool = False) -> Iterator[np.ndarray]:
    """The (length,) windows of `eval_windows(load_audio(path, sample_rate), length)` (with `centre`: the one
    window of `fit_clip(..., policy="eval")`), one at a time. A file of up to WHOLE_DECODE_SECONDS is decoded
    whole; a longer one is streamed twice (`stream_audio`: once to count its samples, once to cut the
    windows), so memory stays at about one block whatever the length: an hour is never held whole (the
    streamed resampler's samples differ from the whole-file one's only by rounding). Errors as `load_audio`,
    raised at the call."""
    if audio_info(path).duration <= WHOLE_DECODE_SECONDS:
        wave = load_audio(path, sample_rate)
        return iter(fit_clip(wave, length, policy="eval")[None] if centre else eval_windows(wave, length))
    n = sum(chunk.shape[0] for chunk in stream_audio(path, sample_rate))
    if n <= length:  # a long header, little audio
        return iter(fit_clip(load_audio(path, sample_rate), length, policy="eval")[None])
    starts = [(n - length) // 2] if centre else window_starts(n, length)
    return _cut(stream_audio(path, sample_rate), starts, length)


def _cut(chunks: Iterator[np.ndarray], starts: Sequence[int], length: int) -> Iterator[np.ndarray]:
    """Windows [s, s + length) of a stream of chunks, for ascending starts (a block of audio held at a time)."""
    buf, buf_start = np.zeros(0, np.float32), 0
    for s in starts:
        while buf_start + buf.shape[0] < s + length:
            chunk = next(chunks, None)
            if chunk is None:  # cannot happen for the stream that was counted; never a short window
                return
            buf = np.concatenate([buf, chunk])
        yield buf[s - buf_start : s - buf_start + length].copy()
        buf, buf_start = buf[s - buf_start :], s  # later starts are >= s


def stream_windows(
    path: PathLike,
    window: float = CLIP_SECONDS,
    hop: float = 1.0,
    sample_rate: int = SAMPLE_RATE,
    block_seconds: float = 30.0,
    *,
    data: bytes | None = None,
) -> Iterator[tuple[float, np.ndarray]]:
    """Stream a file of any length as (start_seconds, (round(window*sample_rate),) float32) windows.

    Memory stays bounded by about `block_seconds + window` of audio: the file is read in blocks, mixed to
    mono and resampled incrementally (soxr.ResampleStream, same quality as `load_audio`). A window starts
    every `hop` seconds; all full windows are yielded, then, if the audio after the last full window is not
    covered yet, one final window starting one hop later, zero-padded at the end. A file shorter than one
    window yields exactly one zero-padded window at 0 s. Same AudioError rules as `load_audio`: a bad path
    or format raises at the call; NaN/inf samples (naming the time of the first) or an empty file raise
    while iterating.
    """
    sample_rate = _check_rate(sample_rate)
    if not (0 < window <= MAX_WINDOW_SECONDS and 0 < hop <= MAX_WINDOW_SECONDS and 0 < block_seconds <= 3600):
        raise ValueError(
            f"window, hop and block_seconds must be > 0 and at most {MAX_WINDOW_SECONDS:.0f} s, "
            f"got {window}, {hop}, {block_seconds}"
        )
    win_n = int(round(window * sample_rate))
    hop_n = int(round(hop * sample_rate))
    if win_n < 1 or hop_n < 1:
        raise ValueError(f"window and hop must be at least one sample at {sample_rate} Hz")

    # fail here, at the call, for a bad path or format, rather than at the first next()
    # (`data`: the file's bytes, already read by the caller; decoded from memory, the file is not reopened)
    audio_info(path, data=data)
    return _stream(path, win_n, hop_n, sample_rate, block_seconds, data)


def stream_audio(
    path: PathLike, sample_rate: int = SAMPLE_RATE, block_seconds: float = 30.0
) -> Iterator[np.ndarray]:
    """Decode a file of any length incrementally: float32 mono chunks at `sample_rate`, in order.

    Memory stays bounded by about `block_seconds` of audio (chunk lengths vary: soxr's streaming resampler
    holds back a few samples). Concatenated, the chunks are the file's resampled audio, as `stream_windows`
    sees it. Same AudioError rules as `stream_windows`: a bad path or format raises at the call; NaN/inf
    samples, an empty file or one too short to survive resampling raise while iterating.
    """
    sample_rate = _check_rate(sample_rate)
    if not 0 < block_seconds <= 3600:
        raise ValueError(f"block_seconds must be > 0 and at most 3600, got {block_seconds}")
    audio_info(path)  # fail here, at the call, for a bad path or format
    return _chunks(path, sample_rate, block_seconds)


def _chunks(
    path: PathLike, sample_rate: int, block_seconds: float, data: bytes | None = None
) -> Iterator[np.ndarray]:
    """The generator behind `stream_audio` (arguments already validated)."""
    with _open(path, data) as f:
        rate = _check_header(path, f, sample_rate)
        block_n = _block_frames(f, block_seconds)
        max_frames = int(MAX_STREAM_SECONDS * rate)
        resampler = (
            soxr.ResampleStream(rate, sample_rate, 1, dtype="float32", quality=RESAMPLE_QUALITY)
            if rate != sample_rate
            else None
        )
        read_frames = produced = 0
        blocks = _read_blocks(f, block_n)
        while True:
            try:
                block = next(blocks, None)  # (frames, channels)
            except (sf.SoundFileError, RuntimeError, OSError) as e:
                raise AudioError(path, f"cannot decode audio at {read_frames / rate:.3f} s ({e})") from e
            done = block is None or block.shape[0] == 0
            if done:
                chunk = resampler.resample_chunk(np.zeros(0, np.float32), last=True) if resampler else None
            else:
                mono = _to_mono(block)
                _check_values(path, mono, rate, offset=read_frames)
                read_frames += mono.shape[0]
                if read_frames > max_frames:
                    raise AudioError(path, f"longer than the {MAX_STREAM_SECONDS / 3600:.0f} h a stream may last "
                                     f"(MAX_STREAM_SECONDS; at {rate} Hz)")
                chunk = resampler.resample_chunk(mono, last=False) if resampler else mono
            if chunk is not None and chunk.shape[0]:
                produced += chunk.shape[0]
                yield chunk.astype(np.float32, copy=False)
            if done:
                break
    if read_frames == 0:
        raise AudioError(path, "empty audio (0 samples)")
    if produced == 0:  # every sample was lost to resampling (e.g. 1 sample at 96 kHz)
        raise AudioError(path, _too_short(read_frames, rate, sample_rate))


def _stream(
    path: PathLike, win_n: int, hop_n: int, sample_rate: int, block_seconds: float, data: bytes | None = None
) -> Iterator[tuple[float, np.ndarray]]:
    """The generator behind `stream_windows` (arguments already validated): windows cut from `_chunks`."""
    buf = np.zeros(0, dtype=np.float32)  # resampled audio from absolute sample index buf_start on
    buf_start = 0
    next_start = 0  # absolute index (at sample_rate) of the next window to yield
    last_full_end = 0  # end of the last full window yielded (0 = none yet)
    for chunk in _chunks(path, sample_rate, block_seconds, data):
        buf = np.concatenate([buf, chunk])
        while next_start + win_n <= buf_start + buf.shape[0]:
            lo = next_start - buf_start
            yield next_start / sample_rate, buf[lo : lo + win_n].copy()
            last_full_end = next_start + win_n
            next_start += hop_n
        # drop what no future window needs (keeps memory bounded)
        drop = min(max(0, next_start - buf_start), buf.shape[0])
        if drop:
            buf = buf[drop:]
            buf_start += drop
    total = buf_start + buf.shape[0]
    # one zero-padded window for audio past the last full one (if hop > window the next start may lie
    # past the end: that audio was in a gap between windows anyway)
    if last_full_end == 0 or (last_full_end < total and next_start < total):
        out = np.zeros(win_n, dtype=np.float32)
        tail = buf[next_start - buf_start :]  # buf_start <= next_start by construction
        out[: tail.shape[0]] = tail
        yield next_start / sample_rate, out
