"""Timeline segments: smoothing of window scores and a minimum segment length (issue 21, item 8)."""

from __future__ import annotations

import numpy as np
import pytest

from tinyclap.timeline import NONE_LABEL, Timeline, TimelineRow, merge_segments, smooth_rows

LABELS = ["a", "b", "c"]
P = {"a": [0.8, 0.1, 0.1], "b": [0.1, 0.8, 0.1], "c": [0.1, 0.1, 0.8]}


def rows_of(tops: str, hop: float = 1.0, window: float = 5.0) -> list[TimelineRow]:
    """One row per character (its label wins), windows every `hop` seconds."""
    return [TimelineRow(k * hop, k * hop + window, np.array(P[t], np.float32), np.array(P[t], np.float32) / 2)
            for k, t in enumerate(tops)]


def check_tiling(segs: list, rows: list[TimelineRow]) -> None:
    """Segments cover the recording without gaps or overlaps and count every window once."""
    assert segs[0].start == rows[0].start and segs[-1].end == rows[-1].end
    assert all(a.end == b.start for a, b in zip(segs, segs[1:]))
    assert sum(s.windows for s in segs) == len(rows)
    assert all(a.label != b.label for a, b in zip(segs, segs[1:]))


def test_smoothing_removes_a_flicker() -> None:
    rows = rows_of("aaaaabaaaaa")
    raw = merge_segments(rows, LABELS, smooth=0, min_segment=0)
    assert [s.label for s in raw] == ["a", "b", "a"]
    smoothed = merge_segments(rows, LABELS, smooth=3, min_segment=0)
    assert [s.label for s in smoothed] == ["a"] and smoothed[0].windows == 11
    check_tiling(smoothed, rows)
    # a segment's mean and peak are the windows' own probabilities of its label (b's window: 0.1)
    assert smoothed[0].peak == pytest.approx(0.8) and smoothed[0].score == pytest.approx((10 * 0.8 + 0.1) / 11)
    # the moving average: centres within 1.5 s of a row's own (3 rows inside, 2 at the ends)
    sm = smooth_rows(rows, 3.0)
    assert np.allclose(sm[5].scores, (2 * np.array(P["a"]) + np.array(P["b"])) / 3)
    assert np.allclose(sm[0].scores, P["a"]) and np.allclose(sm[5].similarity, sm[5].scores / 2)
    assert smooth_rows(rows, 0.0) == rows


def test_min_segment_joins_short_runs_to_the_neighbour_they_score_higher() -> None:
    rows = rows_of("aaaaaabcccccc")
    rows[6] = TimelineRow(6.0, 11.0, np.array([0.2, 0.5, 0.3], np.float32))  # b, but closer to c than to a
    segs = merge_segments(rows, LABELS, smooth=0, min_segment=2.0)
    assert [(s.label, s.windows) for s in segs] == [("a", 6), ("c", 7)]
    check_tiling(segs, rows)
    # runs long enough stay; 0 turns it off
    assert [s.label for s in merge_segments(rows_of("aaabbbccc"), LABELS, smooth=0, min_segment=2.0)] == list("abc")
    assert len(merge_segments(rows, LABELS, smooth=0, min_segment=0)) == 3
    # a short real-label run between "none" runs joins them only when no real label is beside it
    segs = merge_segments(rows_of("aaaaaabcccccc"), LABELS, threshold=0.7, smooth=0, min_segment=2.0)
    assert [s.label for s in segs] == ["a", "c"]


def test_fragmented_timeline_gets_fewer_segments_by_default() -> None:
    truth = "a" * 20 + "b" * 20 + "c" * 20
    flip = {"a": "c", "b": "a", "c": "b"}
    noisy = "".join(flip[t] if k % 4 == 2 and k < 56 else t for k, t in enumerate(truth))  # every 4th wrong
    rows = rows_of(noisy)
    tl = Timeline(LABELS, rows, 5.0, 1.0)
    raw, default = tl.segments(smooth=0, min_segment=0), tl.segments()
    assert len(default) < len(raw) and [s.label for s in default] == ["a", "b", "c"]
    check_tiling(default, rows)
    assert all(s.end - s.start >= 2.0 for s in default)


def test_segment_options_are_checked() -> None:
    rows = rows_of("ab")
    for bad in ({"smooth": -1.0}, {"min_segment": float("nan")}, {"smooth": float("inf")}):
        with pytest.raises(ValueError, match="seconds >= 0"):
            merge_segments(rows, LABELS, **bad)
    assert merge_segments([], LABELS) == []
    one = merge_segments(rows_of("b"), LABELS, threshold=0.9)
    assert [s.label for s in one] == [NONE_LABEL]
