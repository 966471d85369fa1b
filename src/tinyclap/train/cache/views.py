"""Augmented views of a cached crop (`tinyclap cache --views K`): the draw, and the waveform it gives.

The teacher embeds exactly the augmented waveform the student's log-mel is computed from ("consistent"
views, as in Beyer et al., CVPR 2022). A view of crop j of a train-split file is drawn from a generator
seeded by sha256(f"view:{seed}:{rel}:{j}:{view}"), so it does not depend on workers, ranks, batches or
resumes. The draw, in this order, with the ranges of `tinyclap.train.cache.options.VIEW_AUGMENT`:

1. crop/shift: a sub-segment of `keep_fraction` (uniform 0.5..1) of the crop's audible length (the samples
   of the file inside the crop: a short clip's zero padding is not audio), at a uniform start inside it,
   placed at a uniform offset (`shift`) of the 5 s window; the rest of the window is zero;
2. gain: uniform in `gain_db` (-12..+6 dB), the result clipped to [-1, 1];
3. mixup, with probability `mix_probability` (0.5) when the source list has another train-split file: a
   partner drawn uniformly from the train-split files of the whole source list (never the file itself),
   its centre 5 s (zero-padded when shorter) at 44.1 kHz; mixture = (1 - lam) * view + lam * partner with
   lam uniform in `mix_lambda` (0.1..0.5), divided by its peak when the peak exceeds 1. The random numbers
   of step 3 are drawn for every view, mixed or not, so each step's draw is independent of the others.

Each view's `aug` record (items.json) holds the draw: `gain_db`, `crop_start`, `crop_len`, `shift` (samples at
44.1 kHz, relative to the crop), `mix` (the partner's `rel`, or null), `mix_path`, `mix_offset` (seconds)
and `lam` (null without mixup); `apply_view` rebuilds the view from it. A partner that cannot be decoded
leaves the view unmixed (`mix` null, `mix_unreadable` its rel): deterministic, since decoding is.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any

import numpy as np

from tinyclap.audio import CLIP_SAMPLES, SAMPLE_RATE, AudioError, load_audio
from tinyclap.train.cache.options import VIEW_AUGMENT

__all__ = ["apply_view", "centre_clip", "draw_view", "file_views", "view_rng"]


def view_rng(seed: int, rel: str, crop: int, view: int) -> np.random.Generator:
    """The generator of view `view` of crop `crop` of the file `rel` in a cache seeded with `seed`."""
    digest = hashlib.sha256(f"view:{seed}:{rel}:{crop}:{view}".encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:8], "big"))


def draw_view(rng: np.random.Generator, audible: int, partners: int, length: int = CLIP_SAMPLES) -> dict[str, Any]:
    """One view's draw for a crop with `audible` samples of audio and `partners` candidate partner files:
    the `aug` record, with `mix` the index of the partner among the candidates (or None)."""
    audible = max(1, min(int(audible), length))
    lo, hi = VIEW_AUGMENT["keep_fraction"]
    seg = min(audible, max(1, int(round(rng.uniform(lo, hi) * audible))))
    start = int(rng.integers(0, audible - seg + 1))
    shift = int(rng.integers(0, length - seg + 1))
    gain_db = float(rng.uniform(*VIEW_AUGMENT["gain_db"]))
    mix_u = float(rng.uniform())
    partner = int(rng.integers(0, max(partners, 1)))
    lam = float(rng.uniform(*VIEW_AUGMENT["mix_lambda"]))
    mixed = partners > 0 and mix_u < VIEW_AUGMENT["mix_probability"]
    return {"gain_db": gain_db, "crop_start": start, "crop_len": seg, "shift": shift,
            "mix": partner if mixed else None, "lam": lam if mixed else None}  # fmt: skip


def centre_clip(wave: np.ndarray, length: int = CLIP_SAMPLES) -> tuple[np.ndarray, int]:
    """(the centre `length` samples of `wave`, zero-padded at the end when shorter; the start sample)."""
    start = max(0, (wave.shape[0] - length) // 2)
    out = np.zeros(length, dtype=np.float32)
    piece = wave[start : start + length]
    out[: piece.shape[0]] = piece
    return out, start


def apply_view(crop: np.ndarray, aug: dict[str, Any], partner: np.ndarray | None = None) -> np.ndarray:
    """The view of a (L,) crop that `aug` describes (`partner`: the partner's centre clip when `aug["mix"]`)."""
    a, n, shift = int(aug["crop_start"]), int(aug["crop_len"]), int(aug["shift"])
    out = np.zeros_like(crop, dtype=np.float32)
    out[shift : shift + n] = crop[a : a + n]
    out *= np.float32(10.0 ** (float(aug["gain_db"]) / 20.0))
    np.clip(out, -1.0, 1.0, out=out)
    if aug.get("mix") is not None:
        if partner is None:
            raise ValueError("this view is a mixture: give its partner's clip")
        lam = np.float32(aug["lam"])
        out = (np.float32(1.0) - lam) * out + lam * partner.astype(np.float32)
        peak = float(np.abs(out).max())
        if peak > 1.0:
            out /= np.float32(peak)
    return out.astype(np.float32, copy=False)


def _partner(path: str, decoded: dict[str, tuple[np.ndarray, int] | str]) -> tuple[np.ndarray, int] | str:
    """The partner's centre clip and start sample, or why it could not be decoded (memoised per file)."""
    if path not in decoded:
        try:
            decoded[path] = centre_clip(load_audio(path, SAMPLE_RATE))
        except AudioError as e:
            decoded[path] = e.problem
        except (OSError, ValueError, RuntimeError, MemoryError) as e:
            decoded[path] = f"decode failed ({type(e).__name__})"
    return decoded[path]


def file_views(
    wave: np.ndarray, starts: Sequence[int], crops: np.ndarray, rel: str, seed: int, views: int,
    partners: Sequence[tuple[str, str]], self_pos: int | None,
) -> tuple[np.ndarray, list[tuple[int, int, dict[str, Any] | None]]]:  # fmt: skip
    """The rows of one train-split file: for each crop j its clean crop (view 0) then views 1..`views`.

    `wave` is the file at 44.1 kHz, `starts`/`crops` (k, L) its clean crops; `partners` the (rel, path) of
    the source list's train-split files and `self_pos` this file's place among them (None: absent).
    Returns rows (k * (views + 1), L) float32 and (crop, view, aug or None) per row.
    """
    n_cand = len(partners) - (self_pos is not None)
    decoded: dict[str, tuple[np.ndarray, int] | str] = {}
    rows: list[np.ndarray] = []
    meta: list[tuple[int, int, dict[str, Any] | None]] = []
    for j, s in enumerate(starts):
        rows.append(crops[j])
        meta.append((j, 0, None))
        audible = min(crops.shape[1], wave.shape[0] - int(s))
        for v in range(1, views + 1):
            aug = draw_view(view_rng(seed, rel, j, v), audible, n_cand, crops.shape[1])
            partner, mix = None, aug["mix"]
            aug.update(mix_path=None, mix_offset=None)
            if mix is not None:
                idx = mix + (self_pos is not None and mix >= self_pos)
                p_rel, p_path = partners[idx]
                got = _partner(p_path, decoded)
                if isinstance(got, str):
                    aug.update(mix=None, lam=None, mix_unreadable=p_rel)
                else:
                    partner = got[0]
                    aug.update(mix=p_rel, mix_path=p_path, mix_offset=got[1] / SAMPLE_RATE)
            rows.append(apply_view(crops[j], aug, partner))
            meta.append((j, v, aug))
    return np.stack(rows), meta
