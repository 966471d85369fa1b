"""Real recordings for the deployment checks: fp32 parity, int8 calibration and the held-out int8 comparison.

Torch-free: audio is named as everywhere else (`tinyclap.data.parse_data_spec`: a folder, a manifest or a
KIND:PATH#.. spec), samples are drawn deterministically (`pick`), and clips are decoded and fitted to the
model's 5 s (`load_clips`), listing the files that do not decode instead of failing on them.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from tinyclap._util import display_path, progress
from tinyclap.audio import CLIP_SAMPLES, SAMPLE_RATE, AudioError, fit_clip, load_audio
from tinyclap.data import AUDIO_EXTENSIONS


def find_audio(spec: str | os.PathLike) -> list[Path]:
    """Audio files named by `spec`: an audio file, a folder (recursive, by extension, hidden files skipped), a
    list of files named explicitly (`@LIST` or `manifest:LIST`), or a dataset spec in the one grammar
    (`us8k:DIR#folds=1&limit=64`, see `tinyclap.data.spec`); absolute and sorted. Any other file is refused
    (it is never read as a list by accident). An error names the spec when there are none."""
    from tinyclap.data import DatasetError, parse_data_spec
    from tinyclap.data.files import is_audio_name

    text = os.fspath(spec)
    if text.startswith("@"):
        text = "manifest:" + text[1:]
    elif os.path.isfile(text):
        if is_audio_name(text):
            return [Path(text).resolve()]
        raise ValueError(f"{display_path(text)}: not an audio file ({', '.join(AUDIO_EXTENSIONS)}); a list of "
                         f"files is given as @{display_path(text)}")
    try:
        files = parse_data_spec(text)
    except DatasetError as e:
        raise ValueError(f"{e} (audio files: {', '.join(AUDIO_EXTENSIONS)})") from None
    return sorted(Path(f).resolve() for f in files)


def pick(files: Sequence[Path], n: int, seed: int = 0) -> list[Path]:
    """A deterministic, order-independent sample of up to `n` files (seeded shuffle of the sorted list)."""
    files = sorted(files)
    if len(files) <= n:
        return files
    idx = np.random.default_rng(seed).permutation(len(files))[:n]
    return [files[i] for i in sorted(idx)]


@dataclass
class Clips:
    """5 s clips (centre crop / zero pad) of the files that decoded; bad files are listed, not fatal."""

    paths: list[str] = field(default_factory=list)
    waves: np.ndarray = field(default_factory=lambda: np.zeros((0, CLIP_SAMPLES), np.float32))  # (K, N)
    failed: list[tuple[str, str]] = field(default_factory=list)


def load_clips(paths: Iterable[str | os.PathLike], *, desc: str = "", show_progress: bool = False) -> Clips:
    """Decode `paths` at 44.1 kHz and fit each to one 5 s clip (centre crop or zero pad).

    `show_progress` shows `tinyclap._util.progress` under `desc` (decoding dozens of files takes a while).
    """
    out = Clips()
    waves = []
    for p in progress(list(paths), desc=desc or "decoding", unit="file", enabled=show_progress):
        try:
            waves.append(fit_clip(load_audio(p, SAMPLE_RATE), CLIP_SAMPLES, policy="eval"))
        except AudioError as e:
            out.failed.append((os.fsdecode(p), e.problem))
            continue
        out.paths.append(os.fsdecode(p))
    if waves:
        out.waves = np.stack(waves)
    return out
