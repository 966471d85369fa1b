"""The build side's inputs: source specs -> unique files, crop placement, the file-level split, and the
DataLoader dataset that decodes a file into its crops (in worker processes)."""

from __future__ import annotations

import hashlib
import math
import os
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import soxr
import torch

from tinyclap.audio import CLIP_SAMPLES, SAMPLE_RATE, AudioError, load_audio
from tinyclap.data import AUDIO_EXTENSIONS, DATA_KINDS, parse_data_spec
from tinyclap.train.cache.options import CROP_MODES
from tinyclap.train.cache.store import PathLike
from tinyclap.train.cache.views import file_views


def crop_starts(
    n: int,
    length: int = CLIP_SAMPLES,
    k: int = 1,
    mode: Literal["even", "random"] = "even",
    rng: np.random.Generator | None = None,
) -> list[int]:
    """Start samples of up to `k` non-overlapping `length`-sample crops of an `n`-sample clip.

    n <= length: [0] (the caller zero-pads). Otherwise min(k, n // length) crops: "even" spreads them from
    the start to the end (one crop = the centre crop); "random" places them uniformly at random without
    overlap (sorted gaps drawn from `rng`).
    """
    if mode not in CROP_MODES:
        raise ValueError(f"crop mode must be one of {CROP_MODES}, got {mode!r}")
    if k < 1 or length < 1:
        raise ValueError(f"need k >= 1 and length >= 1, got k={k}, length={length}")
    if n <= length:
        return [0]
    k = min(k, n // length)
    if mode == "even":
        if k == 1:
            return [(n - length) // 2]
        step = (n - length) / (k - 1)  # >= length because k <= n // length: crops never overlap
        return [int(math.floor(i * step)) for i in range(k)]
    rng = np.random.default_rng() if rng is None else rng
    slack = n - k * length  # free samples to distribute around the k crops
    gaps = np.sort(rng.integers(0, slack + 1, size=k))
    return [int(g) + i * length for i, g in enumerate(gaps)]


def _hash_fraction(*parts: str) -> float:
    digest = hashlib.sha256(":".join(parts).encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64


def split_of(rel: str, seed: int, val_fraction: float) -> str:
    """ "val" or "train" for a source file, from sha256(f"{seed}:{rel}"): stable across runs and machines."""
    return "val" if _hash_fraction(str(seed), rel) < val_fraction else "train"


def _crop_rng(rel: str, seed: int) -> np.random.Generator:
    digest = hashlib.sha256(f"crop:{seed}:{rel}".encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:8], "big"))


@dataclass(frozen=True)
class SourceFile:
    """One unique audio file to cache: its absolute path, the path relative to its source root, its index."""

    path: str
    rel: str
    index: int


def _rel(path: Path, root: Path) -> str:
    try:
        return path.relative_to(root).as_posix()
    except ValueError:  # listed by a manifest but stored elsewhere: keep what identifies it portably
        return f"{path.parent.name}/{path.name}"


def resolve_sources(paths_or_specs: Iterable[PathLike] | PathLike) -> tuple[list[str], list[SourceFile]]:
    """Normalised source specs and the unique files they list (first occurrence wins, by real path).

    Each entry is an audio file path, or a data spec for `tinyclap.data.parse_data_spec`
    ("KIND:PATH", a folder, or a manifest file).
    """
    specs: list[str] = []
    files: list[SourceFile] = []
    seen: set[str] = set()
    entries = [paths_or_specs] if isinstance(paths_or_specs, (str, os.PathLike)) else list(paths_or_specs)
    if not entries:
        raise ValueError("no data given: pass audio files or data specs (KIND:PATH, a folder or a manifest)")
    for entry in entries:
        norm, root, listed = _expand(os.fspath(entry))
        specs.append(norm)
        for p in listed:
            p = Path(os.path.abspath(p))
            real = os.path.realpath(p)
            if real in seen:
                continue
            seen.add(real)
            files.append(SourceFile(path=str(p), rel=_rel(p, root), index=len(files)))
    return specs, files


def _expand(text: str) -> tuple[str, Path, list[Path]]:
    """One source entry -> (normalised spec, the root its files' `rel` is taken from, the files it lists)."""
    plain = Path(os.path.abspath(os.path.expanduser(text)))
    if plain.is_file() and plain.suffix.lower() in AUDIO_EXTENSIONS:
        return f"file:{plain}", plain.parent, [plain]
    kind, sep, rest = text.partition(":")
    target = rest if sep and kind.lower() in DATA_KINDS else text
    tpath = Path(os.path.abspath(os.path.expanduser(target)))
    root = tpath if tpath.is_dir() else tpath.parent
    norm = f"{kind.lower()}:{tpath}" if target is rest else str(tpath)
    return norm, root, parse_data_spec(text)


class DecodeSet(torch.utils.data.Dataset):
    """Worker side: decode one file at 44.1 kHz, cut its crops, resample them for the teacher if needed.

    An item is a dict: `index`, `error` (None, or why the file was skipped), `seconds` (decode time) and,
    without error, `crops` (n, L) at 44.1 kHz, `teacher` (n, L_t) at the teacher's rate or None, `offsets`
    (one per crop) and `rows`: None without views (the n = k rows are the crops), else (crop, view, aug) per
    row (`tinyclap.train.cache.views.file_views`).
    """

    def __init__(self, files: Sequence[SourceFile], k: int, crop: str, seed: int, teacher_rate: int,
                 views: int = 0, partners: Sequence[SourceFile] = (), val_fraction: float = 0.0) -> None:
        self.files, self.k, self.crop, self.seed, self.teacher_rate = list(files), k, crop, seed, teacher_rate
        # augmented views (train-split files only): `partners` are the source list's train-split files
        self.views, self.val_fraction = int(views), float(val_fraction)
        self.partners = [(p.rel, p.path) for p in partners]
        self.partner_pos = {p.path: i for i, p in enumerate(partners)}

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, j: int) -> dict[str, Any]:
        t0 = time.perf_counter()
        try:
            item = self._decode(self.files[j])
        except AudioError as e:
            item = {"error": e.problem}
        except (OSError, ValueError, RuntimeError, MemoryError) as e:  # never let one file end a long run
            item = {"error": f"decode failed ({type(e).__name__}: {e})"}
        return {"index": j, "error": None, **item, "seconds": time.perf_counter() - t0}

    def _decode(self, src: SourceFile) -> dict[str, Any]:
        wave = load_audio(src.path, SAMPLE_RATE)  # (N,) float32 at 44.1 kHz
        rng = _crop_rng(src.rel, self.seed) if self.crop == "random" else None
        starts = crop_starts(wave.shape[0], CLIP_SAMPLES, self.k, self.crop, rng)  # type: ignore[arg-type]
        crops = np.zeros((len(starts), CLIP_SAMPLES), dtype=np.float32)  # (k, L), zero-padded short clips
        for i, s in enumerate(starts):
            piece = wave[s : s + CLIP_SAMPLES]
            crops[i, : piece.shape[0]] = piece
        offsets = [s / SAMPLE_RATE for s in starts]
        rows = None
        if self.views > 0:  # rows in (crop, view) order; a val-split file keeps its clean rows only
            rows = [(j, 0, None) for j in range(len(starts))]
            if split_of(src.rel, self.seed, self.val_fraction) == "train":
                crops, rows = file_views(wave, starts, crops, src.rel, self.seed, self.views, self.partners,
                                         self.partner_pos.get(src.path))  # fmt: skip
        teacher = None
        if self.teacher_rate != SAMPLE_RATE:
            # the same crops at the teacher's rate: soxr takes (frames, channels), one channel per crop
            teacher = soxr.resample(np.ascontiguousarray(crops.T), SAMPLE_RATE, self.teacher_rate, quality="HQ")
            teacher = torch.from_numpy(np.ascontiguousarray(teacher.T, dtype=np.float32))  # (k, L_t)
        return {"crops": torch.from_numpy(crops), "teacher": teacher, "offsets": offsets, "rows": rows}


def keep_item(item: Any) -> Any:
    """DataLoader collate for batch_size=None: pass items through untouched."""
    return item
