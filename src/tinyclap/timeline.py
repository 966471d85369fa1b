"""Timelines of long recordings: windows, per-window class scores, segments, and their text view (no torch).

A recording of any length is read as a stream of chunks (`tinyclap.audio.stream_audio`, bounded memory)
and cut into windows of `window` seconds every `hop` seconds, with the windows `stream_windows` gives: all
full windows, then one zero-padded window for audio past the last full one (a recording shorter than one
window is one padded window).

**Front end once.** When the window is the model's clip length and the model takes log-mels
(`frontend` given to `iter_windows`), the log-mel of the whole recording is computed once, block by block,
and each window's log-mel is sliced from it; only the two frames at each end of a window (whose STFT
frames reach past the window and are reflect-padded within it) are recomputed from the window's samples.
The result equals the window's own log-mel up to float rounding (`tests/test_classifier.py`). Slicing
needs windows that start on the STFT frame grid (`hop_length` samples, 7.3 ms at 44.1 kHz): a window is
analysed from the grid point nearest its nominal start (at most half a frame away), and rows report the
nominal times (`k * hop`).

`Timeline.segments` merges consecutive windows with the same top label into segments: a window counts for
its label when its probability reaches `threshold`; otherwise, or when its best cosine similarity is
below `min_similarity` (a score floor), it counts as "none of these" (`NONE_LABEL`). Each window stands
for the stretch of time around its centre (one hop wide), so segments do not overlap.

Window decisions flicker where sounds mix, so two steps come first (defaults measured on a real concatenated
recording, `bench/timeline_segments.py`, bench/REPORT.md "Timeline segments"; by default both one window
long): **smoothing**, each window's probabilities and similarities averaged with those of the windows whose
centres lie within `smooth`/2 seconds of its own (a centred moving average; 0: off), and a **minimum segment
length**, a run of windows shorter than `min_segment` seconds given to the neighbour whose label it scores
higher (a "none" neighbour last), the shortest run first, until none is left (0: off). A segment's mean and
peak are the windows' own (unsmoothed) probabilities of its label.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = [
    "MIN_SEGMENT_WINDOWS",
    "NONE_LABEL",
    "SMOOTH_WINDOWS",
    "Segment",
    "Timeline",
    "TimelineRow",
    "array_chunks",
    "format_segments",
    "format_timeline_rows",
    "iter_windows",
]

NONE_LABEL = "(none)"
# Timeline.segments' defaults, in window lengths (measured: bench/timeline_segments.py, bench/REPORT.md)
SMOOTH_WINDOWS = 1.0  # centred moving average of window scores over this many window lengths
MIN_SEGMENT_WINDOWS = 1.0  # runs of windows shorter than this many window lengths join a neighbour
TEXT_WIDTH = 100  # the text views fit this many columns


@dataclass(frozen=True)
class TimelineRow:
    """One window: [start, end) seconds, class probabilities `scores` (C,) and cosine similarities (C,)."""

    start: float
    end: float
    scores: np.ndarray  # (C,) float32 probabilities (softmax of the scaled cosines), the classifier's order
    similarity: np.ndarray | None = None  # (C,) float32 cosine of the window to each class vector

    def top(self) -> int:
        return int(np.argmax(self.scores))

    def to_dict(self, labels: Sequence[str]) -> dict[str, Any]:
        """The row as JSON (`tinyclap.schemas.row`: probabilities and cosines in `labels` order)."""
        from tinyclap.schemas import row

        return row(self, labels)


@dataclass(frozen=True)
class Segment:
    """Consecutive windows with one label: [start, end) seconds, the label's mean and peak probability."""

    label: str
    start: float
    end: float
    score: float
    peak: float
    windows: int

    def to_dict(self) -> dict[str, Any]:
        """The segment as JSON (`tinyclap.schemas.segment`)."""
        from tinyclap.schemas import segment

        return segment(self)


@dataclass
class Timeline:
    """A recording's windows and their class scores; `segments()` merges them."""

    labels: list[str]
    rows: list[TimelineRow] = field(default_factory=list)
    window: float = 5.0
    hop: float = 1.0

    @property
    def duration(self) -> float:
        return self.rows[-1].end if self.rows else 0.0

    def top_labels(self) -> list[str]:
        return [self.labels[r.top()] for r in self.rows]

    def segments(
        self, threshold: float = 0.0, *, min_similarity: float | None = None, keep_none: bool = True,
        none_label: str = NONE_LABEL, smooth: float | None = None, min_segment: float | None = None,
    ) -> list[Segment]:
        """Merge consecutive windows with the same label after smoothing (see the module docstring);
        `keep_none=False` drops the "none of these" segments from the result. `smooth` and `min_segment` are
        seconds (0: off); None: `SMOOTH_WINDOWS` and `MIN_SEGMENT_WINDOWS` window lengths."""
        smooth = SMOOTH_WINDOWS * self.window if smooth is None else smooth
        min_segment = MIN_SEGMENT_WINDOWS * self.window if min_segment is None else min_segment
        return merge_segments(self.rows, self.labels, threshold=threshold, min_similarity=min_similarity,
                              keep_none=keep_none, none_label=none_label, smooth=smooth, min_segment=min_segment)

    def to_dict(self) -> dict[str, Any]:
        """The timeline as JSON (`tinyclap.schemas.timeline`)."""
        from tinyclap.schemas import timeline

        return timeline(self.rows, self.labels, self.window, self.hop)


def window_label(row: TimelineRow, labels: Sequence[str], threshold: float, min_similarity: float | None,
                 none_label: str = NONE_LABEL) -> str:
    """The label a window counts for in segments: its top class, or `none_label` below the threshold/floor."""
    j = row.top()
    if float(row.scores[j]) < threshold:
        return none_label
    if min_similarity is not None and row.similarity is not None and float(row.similarity[j]) < min_similarity:
        return none_label
    return labels[j]


def merge_segments(
    rows: Sequence[TimelineRow], labels: Sequence[str], *, threshold: float = 0.0,
    min_similarity: float | None = None, keep_none: bool = True, none_label: str = NONE_LABEL,
    smooth: float = 0.0, min_segment: float = 0.0,
) -> list[Segment]:
    """Segments of consecutive windows with one label, after `smooth` and `min_segment` seconds (see the module
    docstring; both off unless given, `Timeline.segments` has the measured defaults). Window k stands for
    [c_k - h/2, c_k + h/2) around its centre c_k (h: the step between window starts), the first from its start,
    the last to its end."""
    if not 0.0 <= threshold <= 1.0:
        raise ValueError(f"threshold must be in [0, 1], got {threshold}")
    for name, value in (("smooth", smooth), ("min_segment", min_segment)):
        if not (isinstance(value, (int, float)) and 0.0 <= value < math.inf):
            raise ValueError(f"{name} must be a finite number of seconds >= 0, got {value!r}")
    if not rows:
        return []
    spans = _spans(rows)
    decided = smooth_rows(rows, smooth)
    labs = [window_label(r, labels, threshold, min_similarity, none_label) for r in decided]
    if min_segment > 0:
        labs = _absorb_short_runs(labs, spans, decided, labels, min_segment, none_label)
    out: list[Segment] = []
    for a, b in _runs(labs):
        lab = labs[a]
        p = [float(r.scores[labels.index(lab)] if lab != none_label else r.scores[r.top()]) for r in rows[a:b]]
        out.append(Segment(lab, spans[a][0], spans[b - 1][1], sum(p) / len(p), max(p), b - a))
    return out if keep_none else [s for s in out if s.label != none_label]


def _spans(rows: Sequence[TimelineRow]) -> list[tuple[float, float]]:
    """[lo, hi) seconds each window stands for: between the midpoints to its neighbours' centres."""
    c = [(r.start + r.end) / 2 for r in rows]
    n = len(rows)
    return [(rows[k].start if k == 0 else (c[k - 1] + c[k]) / 2, rows[k].end if k == n - 1 else (c[k] + c[k + 1]) / 2)
            for k in range(n)]


def _runs(labs: Sequence[str]) -> list[tuple[int, int]]:
    """[a, b) index ranges of consecutive equal labels."""
    out, a = [], 0
    for k in range(1, len(labs) + 1):
        if k == len(labs) or labs[k] != labs[a]:
            out.append((a, k))
            a = k
    return out


def smooth_rows(rows: Sequence[TimelineRow], seconds: float) -> list[TimelineRow]:
    """Rows whose probabilities and similarities are averaged over the rows whose centres lie within
    `seconds`/2 of their own (a centred moving average; the rows as they are for `seconds` <= 0)."""
    if seconds <= 0 or len(rows) < 2:
        return list(rows)
    c = np.array([(r.start + r.end) / 2 for r in rows])
    lo = np.searchsorted(c, c - seconds / 2 - 1e-9, side="left")
    hi = np.searchsorted(c, c + seconds / 2 + 1e-9, side="right")

    def mean(x: np.ndarray) -> np.ndarray:  # (n, C) -> (n, C) windowed means
        cum = np.concatenate([np.zeros((1, x.shape[1])), np.cumsum(x, 0, dtype=np.float64)])
        return ((cum[hi] - cum[lo]) / (hi - lo)[:, None]).astype(np.float32)

    probs = mean(np.stack([r.scores for r in rows]))
    sims = None
    if all(r.similarity is not None for r in rows):
        sims = mean(np.stack([r.similarity for r in rows]))  # type: ignore[misc]
    return [TimelineRow(r.start, r.end, probs[k], None if sims is None else sims[k]) for k, r in enumerate(rows)]


def _absorb_short_runs(labs: list[str], spans: Sequence[tuple[float, float]], rows: Sequence[TimelineRow],
                       labels: Sequence[str], min_segment: float, none_label: str) -> list[str]:
    """Relabel runs shorter than `min_segment` seconds, the shortest first, with the label of the neighbour
    run that the run's windows score higher (a "none" neighbour only when both are "none")."""
    labs = list(labs)
    while True:
        runs = _runs(labs)
        if len(runs) < 2:
            return labs
        length = [spans[b - 1][1] - spans[a][0] for a, b in runs]
        i = min(range(len(runs)), key=lambda j: length[j])
        if length[i] >= min_segment:
            return labs
        a, b = runs[i]
        options = [labs[runs[j][0]] for j in (i - 1, i + 1) if 0 <= j < len(runs)]
        score = {lab: -1.0 if lab == none_label else float(np.mean([r.scores[labels.index(lab)] for r in rows[a:b]]))
                 for lab in options}
        labs[a:b] = [max(options, key=score.__getitem__)] * (b - a)


# ------------------------------------------------------------------------------------------------ windows


def array_chunks(wave: np.ndarray, block: int = 1 << 20) -> Iterator[np.ndarray]:
    """A 1-D waveform as a stream of chunks (what `iter_windows` reads)."""
    wave = np.asarray(wave, dtype=np.float32)
    if wave.ndim != 1 or wave.shape[0] == 0:
        raise ValueError(f"expected a non-empty 1-D mono waveform, got shape {wave.shape}")
    if not np.isfinite(wave).all():
        raise ValueError("waveform has non-finite (NaN/inf) samples")
    for i in range(0, wave.shape[0], block):
        yield wave[i : i + block]


class _Buffer:
    """Audio from absolute sample `start` on (appended chunk by chunk, dropped from the front)."""

    def __init__(self) -> None:
        self.data = np.zeros(0, np.float32)
        self.start = 0

    @property
    def end(self) -> int:
        return self.start + self.data.shape[0]

    def append(self, chunk: np.ndarray) -> None:
        self.data = np.concatenate([self.data, chunk])

    def get(self, lo: int, hi: int) -> np.ndarray:
        """Samples [lo, hi), zeros past the end (lo must not have been dropped)."""
        if lo < self.start:
            raise AssertionError(f"sample {lo} was dropped (buffer starts at {self.start})")
        part = self.data[lo - self.start : max(lo, hi) - self.start]
        if part.shape[0] == hi - lo:
            return part
        out = np.zeros(hi - lo, np.float32)
        out[: part.shape[0]] = part
        return out

    def drop_before(self, pos: int) -> None:
        cut = min(max(0, pos - self.start), self.data.shape[0])
        if cut:
            self.data = self.data[cut:]
            self.start += cut


class _SlicedLogMel:
    """The global log-mel of a stream (frames centred at g * hop, g >= j_lo) and windows sliced from it."""

    def __init__(self, frontend: Any, win_n: int) -> None:
        self.fe, self.win_n = frontend, win_n
        self.hop, self.n_fft = int(frontend.hop_length), int(frontend.n_fft)
        self.pad = self.n_fft // 2  # frame j of a window covers its samples [j * hop - pad, j * hop + pad)
        self.n_frames = win_n // self.hop + 1
        self.j_lo = -(-self.pad // self.hop)  # first window frame that lies wholly inside the window
        self.j_hi = (win_n - self.pad) // self.hop  # last such frame
        fits = 0 < self.j_lo <= self.j_hi < self.n_frames - 1 and win_n > (self.j_hi + 1) * self.hop
        if self.n_fft % 2 or not fits:
            raise ValueError(f"cannot slice log-mels of {win_n}-sample windows (n_fft {self.n_fft}, hop {self.hop})")
        self.frames = np.zeros((0, 0), np.float32)
        self.first = self.next = self.j_lo  # global index of frames[0]; next frame to compute

    def update(self, buf: _Buffer) -> None:
        """Compute every global frame the buffered audio allows."""
        last = (buf.end - self.pad) // self.hop
        if last < self.next:
            return
        new = self.fe.frames(buf.get(self.next * self.hop - self.pad, last * self.hop + self.pad))
        self.frames = new if self.frames.size == 0 else np.concatenate([self.frames, new])
        self.next = last + 1

    def ready(self, f: int) -> bool:
        return self.next > f + self.j_hi

    def window(self, buf: _Buffer, f: int) -> np.ndarray:
        """The (T, M) log-mel of the window starting at sample f * hop (a full window inside the stream)."""
        s, pad, hop = f * self.hop, self.pad, self.hop
        w_head = buf.get(s, s + (self.j_lo - 1) * hop + pad + 1)
        head = np.concatenate([w_head[pad:0:-1], w_head[: (self.j_lo - 1) * hop + pad]])
        t0 = s + (self.j_hi + 1) * hop - pad
        w_tail = buf.get(t0, s + self.win_n)
        tail = np.concatenate([w_tail, w_tail[-2 : -pad - 2 : -1]])
        mid = self.frames[f + self.j_lo - self.first : f + self.j_hi + 1 - self.first]
        return np.concatenate([self.fe.frames(head), mid, self.fe.frames(tail)])

    def drop_before(self, f: int) -> None:
        cut = min(max(0, f + self.j_lo - self.first), self.frames.shape[0])
        if cut:
            self.frames = self.frames[cut:]
            self.first += cut


def iter_windows(
    chunks: Iterable[np.ndarray], win_n: int, hop_n: int, frontend: Any = None
) -> Iterator[tuple[int, int, np.ndarray]]:
    """(nominal start sample, end sample, item) for each window of a stream of audio chunks.

    The windows are `stream_windows`'s (all full windows every `hop_n` samples, then one zero-padded
    window for audio past the last full one; the end of that one is the end of the audio). Without
    `frontend` the item is the (win_n,) waveform; with one (an object with `hop_length`, `n_fft`,
    `frames(x)` and `__call__(wave)`, like `tinyclap.audio.mel.NumpyLogMel`) it is the window's (T, M)
    log-mel, sliced from a log-mel computed once (see the module docstring).
    """
    if win_n < 1 or hop_n < 1:
        raise ValueError(f"window and hop must be at least one sample, got {win_n} and {hop_n}")
    buf = _Buffer()
    sliced = _SlicedLogMel(frontend, win_n) if frontend is not None else None
    grid = sliced.hop if sliced is not None else 1
    k, last_full_end = 0, 0
    for chunk in chunks:
        buf.append(np.asarray(chunk, dtype=np.float32))
        if sliced is not None:
            sliced.update(buf)
        while k * hop_n + win_n <= buf.end:
            nominal = k * hop_n
            f = int(math.floor(nominal / grid + 0.5))  # the nearest frame-grid start
            if sliced is not None:
                if f * grid + win_n > buf.end:
                    break  # the analysed window needs a few samples more
                item = sliced.window(buf, f)
            else:
                item = buf.get(nominal, nominal + win_n).copy()
            yield nominal, nominal + win_n, item
            last_full_end = nominal + win_n
            k += 1
            nxt = k * hop_n
            keep = min(nxt, int(math.floor(nxt / grid + 0.5)) * grid)
            if sliced is not None:
                sliced.drop_before(keep // grid)
                keep = min(keep, sliced.next * sliced.hop - sliced.pad)
            buf.drop_before(keep)
    yield from _stream_end(buf, k * hop_n, win_n, hop_n, last_full_end, frontend)


def _stream_end(
    buf: _Buffer, nominal: int, win_n: int, hop_n: int, last_full_end: int, frontend: Any
) -> Iterator[tuple[int, int, np.ndarray]]:
    """The windows after the stream ended: full ones whose grid start ran past the end (analysed at their
    nominal start), then the zero-padded window for audio past the last full one."""
    total = buf.end
    while nominal + win_n <= total:  # only with a frontend: full nominally, not on the grid
        wave = buf.get(nominal, nominal + win_n)
        yield nominal, nominal + win_n, frontend(wave) if frontend is not None else wave.copy()
        last_full_end, nominal = nominal + win_n, nominal + hop_n
    if total == 0:
        return
    if last_full_end == 0 or (last_full_end < total and nominal < total):
        wave = buf.get(nominal, nominal + win_n)
        yield nominal, total, frontend(wave) if frontend is not None else wave


# ------------------------------------------------------------------------------------------------ text


def _clock(t: float) -> str:
    """Seconds as m:ss.s (h:mm:ss.s from one hour on)."""
    h, rem = divmod(max(t, 0.0), 3600.0)
    m, s = divmod(rem, 60.0)
    return f"{int(h)}:{int(m):02d}:{s:04.1f}" if h >= 1 else f"{int(m)}:{s:04.1f}"


def _bar(p: float, width: int = 10) -> str:
    """An ASCII bar (any terminal encoding prints it)."""
    return "#" * int(round(max(0.0, min(1.0, p)) * width))


def _cut(text: str, n: int) -> str:
    return text if len(text) <= n else text[: n - 1] + "~"


def format_timeline_rows(rows: Iterable[TimelineRow], labels: Sequence[str], runner_up: bool = True
                         ) -> Iterator[str]:
    """One line per window (start-end, top label, probability bar, runner-up), each under 100 columns."""
    yield f"  {'start':>9s} {'end':>9s}  {'top label':24s} {'p':>5s}  {'':10s}  second"
    for r in rows:
        order = np.argsort(-r.scores, kind="stable")
        p = float(r.scores[order[0]])
        line = f"  {_clock(r.start):>9s} {_clock(r.end):>9s}  {_cut(labels[order[0]], 24):24s} {p:5.2f}  {_bar(p):10s}"
        if runner_up and len(order) > 1:
            line += f"  {_cut(labels[order[1]], 24)} {float(r.scores[order[1]]):.2f}"
        yield line[:TEXT_WIDTH]


def format_segments(segments: Iterable[Segment]) -> Iterator[str]:
    """One line per segment (start-end, duration, label, mean and peak probability), under 100 columns."""
    yield f"  {'start':>9s} {'end':>9s} {'length':>7s}  {'label':32s} {'mean':>5s} {'peak':>5s} {'windows':>7s}"
    for s in segments:
        yield (f"  {_clock(s.start):>9s} {_clock(s.end):>9s} {s.end - s.start:6.1f}s  {_cut(s.label, 32):32s} "
               f"{s.score:5.2f} {s.peak:5.2f} {s.windows:7d}")[:TEXT_WIDTH]


def collect_rows(
    items: Iterable[tuple[int, int, np.ndarray]], embed: Callable[[np.ndarray], np.ndarray],
    score: Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]], sample_rate: int, batch_size: int,
) -> Iterator[TimelineRow]:
    """Rows from windows: `embed` maps a stacked batch of items to (B, D), `score` (B, D) to (probabilities,
    similarities); a batch of `batch_size` windows at a time (bounded memory)."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    pending: list[tuple[int, int, np.ndarray]] = []

    def flush() -> Iterator[TimelineRow]:
        probs, sims = score(embed(np.stack([it for _, _, it in pending])))
        for (a, b, _), p, s in zip(pending, probs, sims):
            yield TimelineRow(a / sample_rate, b / sample_rate, p, s)
        pending.clear()

    for item in items:
        pending.append(item)
        if len(pending) == batch_size:
            yield from flush()
    if pending:
        yield from flush()
