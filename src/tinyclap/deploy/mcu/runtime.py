"""A TFLM export folder (`tinyclap export --target tflm`) as a classifier engine: TFLM's own kernels through
the tflite-micro interpreter, numpy for the front end, no torch (`Classifier.from_export` uses it, so
`tinyclap classify --export-dir` and `python -m tinyclap.runtime` check a device's decisions on any file).

Each clip is cut into the export's windows (back to back, the last aligned to the clip's end), each window's
log-mel (`NumpyLogMel`) normalised per mel bin and run through `backbone.tflite`, the features averaged and
`head.tflite` run once: what the firmware does. Every file is hash-checked against the manifest first.
"""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Any

import numpy as np

from tinyclap._util import l2_normalize, loads_json, read_regular_file

TFLM_FORMAT = "tinyclap-tflm/1"
MANIFEST_FILE = "manifest.json"
BACKBONE_FILE, HEAD_FILE = "backbone.tflite", "head.tflite"
CLASSES_FILE, NORM_FILE = "classes.npz", "input_norm.npy"


MAX_MANIFEST_BYTES = 16 << 20


def read_manifest(folder: str | os.PathLike) -> Any:
    """The folder's manifest.json, read only as far as its size (bounded, strict JSON)."""
    path = Path(folder) / MANIFEST_FILE
    return loads_json(read_regular_file(path, MAX_MANIFEST_BYTES), path)


def is_tflm_export(folder: str | os.PathLike) -> bool:
    """True when `folder` holds a TFLM export's manifest (no other export has a backbone.tflite)."""
    if not (Path(folder) / BACKBONE_FILE).is_file():
        return False
    try:
        return read_manifest(folder).get("format") == TFLM_FORMAT
    except (OSError, ValueError):
        return False


def window_starts(n: int, length: int) -> list[int]:
    """Starts of back-to-back windows of `length` covering `n` samples, the last aligned to the end."""
    if n <= length:
        return [0]
    starts = list(range(0, n - length + 1, length))
    if starts[-1] + length < n:
        starts.append(n - length)
    return starts


class TflmEngine:
    """The engine `tinyclap.Classifier` runs (see `classifier._ExportEngine`): `embed_waves` on TFLM."""

    def __init__(self, export_dir: str | os.PathLike) -> None:
        from tinyclap.audio import CLIP_SAMPLES
        from tinyclap.audio.mel import NumpyLogMel
        from tinyclap.deploy.mcu.tflm import TflmGraph
        from tinyclap.deploy.runtime import ExportError, read_verified
        from tinyclap.zeroshot import ZeroShotClassifier

        self.export_dir = Path(export_dir)
        self.manifest = read_manifest(self.export_dir)
        try:
            self.window_samples = int(self.manifest["window"]["samples"])
            self.pool_window = float(self.manifest["window"]["seconds"])
            self.logmel = NumpyLogMel(self.manifest["frontend"])
            self.embed_dim = int(self.manifest["embed_dim"])
            clip = self.manifest["window"].get("input_clip")  # None: an export made before inputs were clipped
            self.input_clip = float(clip) if clip is not None else np.inf
        except (KeyError, TypeError, ValueError) as e:
            raise ExportError(f"{self.export_dir / MANIFEST_FILE}: not a valid TFLM export manifest ({e})") from e

        def read(name: str) -> bytes:
            return read_verified(self.export_dir, name, self.manifest)

        self.backbone, self.head = TflmGraph(read(BACKBONE_FILE)), TflmGraph(read(HEAD_FILE))
        self.norm = np.load(io.BytesIO(read(NORM_FILE)), allow_pickle=False).astype(np.float32)
        self.classifier = ZeroShotClassifier.load(read(CLASSES_FILE), self.export_dir / CLASSES_FILE)
        self.sample_rate = self.logmel.sample_rate
        self.clip_samples = CLIP_SAMPLES
        self.frontend = None  # timelines: whole windows through embed_waves

    def embed_wave(self, wave: np.ndarray) -> np.ndarray:
        """(N,) -> (D,) L2-normalised: head(mean of backbone(normalised log-mel of each window))."""
        wave = np.asarray(wave, np.float32)
        if wave.shape[0] < self.window_samples:
            wave = np.pad(wave, (0, self.window_samples - wave.shape[0]))
        feats = []
        for s in window_starts(wave.shape[0], self.window_samples):
            mel = np.clip(self.logmel(wave[s : s + self.window_samples]) * self.norm[0] + self.norm[1],
                          -self.input_clip, self.input_clip)
            feats.append(self.backbone.run(mel[None]))
        return l2_normalize(self.head.run(np.mean(feats, axis=0)[None]).astype(np.float32))

    def embed_waves(self, waves: np.ndarray) -> np.ndarray:
        return np.stack([self.embed_wave(w) for w in np.asarray(waves, np.float32)])
