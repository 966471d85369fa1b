"""Torch-free inference on an export folder (`tinyclap export`): onnxruntime + numpy + soundfile + soxr.

    python -m tinyclap.runtime EXPORT_DIR FILE... [--top K] [--json] [--int8] [--window 5 --hop 1]

`Runtime` loads `model.onnx` (or `model.int8.onnx`) and `classes.npz`, after checking each file's SHA-256
against `manifest.json` (a modified or corrupted file is refused). Clips longer than the model's 5 s are
classified by the mean of their window embeddings (`tinyclap.audio.eval_windows`), exactly as
`tinyclap classify` does; `timeline` streams a file of any length window by window with bounded memory.
This module must never import torch (tests run it with torch made unimportable).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tinyclap._util import l2_normalize
from tinyclap.audio import AudioError, audio_info, eval_windows, fit_clip, load_audio, stream_windows
from tinyclap.zeroshot import ZeroShotClassifier

# the export folder's layout, written by `tinyclap.deploy.export` and read here (one definition, torch-free)
EXPORT_FORMAT = "tinyclap-export/1"
MANIFEST_FILE = "manifest.json"
MODEL_FILE = "model.onnx"  # waveform -> embedding
STUDENT_FILE = "student.onnx"  # log-mel -> embedding
MODEL_INT8_FILE = "model.int8.onnx"
STUDENT_INT8_FILE = "student.int8.onnx"
CLASSES_FILE = "classes.npz"


class ExportError(ValueError):
    """An export folder that cannot be used: missing files, a bad manifest, or a file that was modified."""


def read_manifest(export_dir: str | os.PathLike) -> dict[str, Any]:
    """Parse and sanity-check `manifest.json` of an export folder."""
    path = Path(export_dir) / MANIFEST_FILE
    if not Path(export_dir).is_dir():
        raise ExportError(f"{export_dir}: not an export folder (no such directory)")
    if not path.is_file():
        raise ExportError(f"{path}: missing; not a (complete) tinyclap export folder")
    try:
        manifest = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ExportError(f"{path}: unreadable manifest ({e})") from e
    if not isinstance(manifest, dict) or manifest.get("format") != EXPORT_FORMAT:
        fmt = manifest.get("format") if isinstance(manifest, dict) else None
        raise ExportError(f"{path}: unknown export format {fmt!r} (expected {EXPORT_FORMAT!r})")
    for key in ("sample_rate", "clip_samples", "embed_dim", "files"):
        if key not in manifest:
            raise ExportError(f"{path}: manifest lacks {key!r}")
    return manifest


def read_verified(export_dir: str | os.PathLike, name: str, manifest: dict[str, Any]) -> bytes:
    """The bytes of one exported file, after checking them against the manifest's SHA-256."""
    path = Path(export_dir) / name
    entry = manifest["files"].get(name)
    if entry is None:
        raise ExportError(f"{path}: not listed in {MANIFEST_FILE} (export it, e.g. with --quantize int8)")
    try:
        data = path.read_bytes()
    except OSError as e:
        raise ExportError(f"{path}: cannot read ({e.strerror or e})") from e
    digest = hashlib.sha256(data).hexdigest()
    if digest != entry.get("sha256"):
        raise ExportError(
            f"{path}: SHA-256 mismatch: the manifest says {entry.get('sha256')}, the file has {digest}. "
            "The file was modified or corrupted after export; refusing to load it (re-run tinyclap export)."
        )
    return data


def ort_session(path: str | os.PathLike | bytes, threads: int | None = None) -> Any:
    """A CPU InferenceSession with all graph optimisations; `threads` sets intra-op threads (None = ORT's)."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.inter_op_num_threads = 1
    if threads:
        so.intra_op_num_threads = int(threads)
    so.log_severity_level = 3  # warnings about unused initialisers etc. are noise here
    model = path if isinstance(path, bytes) else str(path)
    return ort.InferenceSession(model, so, providers=["CPUExecutionProvider"])


@dataclass(frozen=True)
class TimelineRow:
    """One window of a timeline: [start, end) seconds, the top label and every class's probability."""

    start: float
    end: float
    top_label: str
    probabilities: np.ndarray  # (C,) float32, in the classifier's label order

    def to_dict(self, labels: Sequence[str]) -> dict[str, Any]:
        return {
            "start": round(self.start, 6),
            "end": round(self.end, 6),
            "top_label": self.top_label,
            "probabilities": {lb: float(p) for lb, p in zip(labels, self.probabilities)},
        }


def iter_timeline(
    embed: Callable[[np.ndarray], np.ndarray],
    path: str | os.PathLike,
    classifier: ZeroShotClassifier,
    *,
    window: float = 5.0,
    hop: float = 1.0,
    sample_rate: int = 44100,
    clip_samples: int = 220500,
    batch_size: int = 8,
    block_seconds: float = 10.0,
) -> Iterator[TimelineRow]:
    """Stream `path` as windows (`tinyclap.audio.stream_windows`) and yield one TimelineRow per window.

    `embed` maps (B, clip_samples) waveforms to (B, D) embeddings (torch or ONNX, the caller decides).
    A window of another length than the model's clip is fitted like any clip (`eval_windows`: padded, or
    the mean of its 5 s windows). Memory: one streaming block (`block_seconds` of audio) plus `batch_size`
    windows, never the whole file.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    info = audio_info(path)  # raises AudioError for a bad file before anything is yielded
    duration = info.duration if info.duration > 0 else float("inf")
    win_n = int(round(window * sample_rate))
    pending: list[tuple[float, np.ndarray]] = []

    def flush() -> Iterator[TimelineRow]:
        if win_n == clip_samples:
            emb = embed(np.stack([w for _, w in pending]))  # (b, D)
        else:  # windows of another length: each one is embedded like a clip
            embs = []
            for _, w in pending:
                sub = eval_windows(w, clip_samples)  # (K, clip_samples)
                embs.append(l2_normalize(l2_normalize(embed(sub)).mean(0)))
            emb = np.stack(embs)
        probs = classifier.predict_proba(np.asarray(emb, dtype=np.float32))  # (b, C)
        for (start, _), p in zip(pending, probs):
            yield TimelineRow(start, min(start + window, duration), classifier.labels[int(np.argmax(p))], p)
        pending.clear()

    for start, wave in stream_windows(
        path, window=window, hop=hop, sample_rate=sample_rate, block_seconds=block_seconds
    ):
        pending.append((start, wave))
        if len(pending) == batch_size:
            yield from flush()
    if pending:
        yield from flush()


class Runtime:
    """An exported student + class matrix on ONNX Runtime (CPU), without torch.

    `int8=True` loads `model.int8.onnx`; `threads` sets ONNX Runtime's intra-op threads (None: its
    default). Every file loaded is checked against the manifest's SHA-256 first.
    """

    def __init__(
        self,
        export_dir: str | os.PathLike,
        int8: bool = False,
        threads: int | None = None,
        batch_size: int = 8,
    ) -> None:

        self.export_dir = Path(export_dir)
        self.manifest = read_manifest(export_dir)
        self.sample_rate = int(self.manifest["sample_rate"])
        self.clip_samples = int(self.manifest["clip_samples"])
        self.embed_dim = int(self.manifest["embed_dim"])
        self.batch_size = int(batch_size)
        self.model_file = MODEL_INT8_FILE if int8 else MODEL_FILE
        model_bytes = read_verified(export_dir, self.model_file, self.manifest)
        classes_name = self.manifest.get("classes", {}).get("file", CLASSES_FILE)
        classes_bytes = read_verified(export_dir, classes_name, self.manifest)
        # the classes come from the verified bytes: no second read of a file that could change meanwhile
        try:
            self.classifier = ZeroShotClassifier.load(classes_bytes, name=self.export_dir / classes_name)
        except ValueError as e:
            raise ExportError(str(e)) from e
        if self.classifier.embed_dim != self.embed_dim:
            raise ExportError(
                f"{self.export_dir}: classes.npz has {self.classifier.embed_dim} dims, "
                f"the model {self.embed_dim}"
            )
        try:
            self.session = ort_session(model_bytes, threads)
        except Exception as e:  # onnxruntime raises its own exception types (Fail, InvalidGraph, ...)
            raise ExportError(
                f"{self.export_dir / self.model_file}: ONNX Runtime cannot load it ({e})"
            ) from e
        del model_bytes  # the session holds its own copy
        self.input_name = self.session.get_inputs()[0].name

    @property
    def labels(self) -> list[str]:
        return self.classifier.labels

    def embed(self, waves: np.ndarray) -> np.ndarray:
        """(B, clip_samples) float waveforms at `sample_rate` -> (B, D) L2-normalised embeddings."""
        waves = np.asarray(waves, dtype=np.float32)
        if waves.ndim == 1:
            waves = waves[None, :]
        if waves.ndim != 2 or waves.shape[1] != self.clip_samples:
            raise ValueError(
                f"expected waveforms of shape (B, {self.clip_samples}) at {self.sample_rate} Hz, "
                f"got {waves.shape}"
            )
        out = [
            self.session.run(None, {self.input_name: np.ascontiguousarray(waves[i : i + self.batch_size])})[0]
            for i in range(0, len(waves), self.batch_size)
        ]
        return np.concatenate(out) if out else np.zeros((0, self.embed_dim), np.float32)

    def embed_file(self, path: str | os.PathLike, mode: str = "windows") -> np.ndarray:
        """One file -> (D,): the renormalised mean of its window embeddings (or its centre crop)."""
        wave = load_audio(path, self.sample_rate)
        if mode == "windows":
            windows = eval_windows(wave, self.clip_samples)
        elif mode == "centre":
            windows = fit_clip(wave, self.clip_samples, policy="eval")[None]
        else:
            raise ValueError(f"mode must be 'windows' or 'centre', got {mode!r}")
        return l2_normalize(self.embed(windows).mean(0))

    def classify(
        self, path: str | os.PathLike, top: int | None = 5, mode: str = "windows"
    ) -> list[tuple[str, float]]:
        """Ranked (label, probability) for one file; raises AudioError for a bad file."""
        return self.classifier.rank(self.embed_file(path, mode)[None], top)[0]

    def timeline(
        self, path: str | os.PathLike, window: float = 5.0, hop: float = 1.0
    ) -> Iterator[TimelineRow]:
        """Per-window predictions over a file of any length, streamed (bounded memory)."""
        return iter_timeline(
            self.embed,
            path,
            self.classifier,
            window=window,
            hop=hop,
            sample_rate=self.sample_rate,
            clip_samples=self.clip_samples,
            batch_size=self.batch_size,
        )


# ---------------------------------------------------------------------------------------------------------
# command line
# ---------------------------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m tinyclap.runtime",
        description="Zero-shot audio classification with an exported tinyclap model (no torch needed).",
    )
    p.add_argument("export_dir", help="folder written by `tinyclap export`")
    p.add_argument("files", nargs="+", help="audio files")
    p.add_argument("--top", type=int, default=5, help="labels shown per file (default 5)")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.add_argument("--int8", action="store_true", help="use model.int8.onnx")
    p.add_argument("--threads", type=int, help="ONNX Runtime intra-op threads")
    p.add_argument("--window", type=float, help="timeline mode: window length in seconds (e.g. 5)")
    p.add_argument("--hop", type=float, default=1.0, help="timeline hop in seconds (default 1)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.top < 1:
        print("error: --top must be >= 1", file=sys.stderr)
        return 2
    try:
        rt = Runtime(args.export_dir, int8=args.int8, threads=args.threads)
    except (ExportError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    results: list[dict[str, Any]] = []
    failed: list[tuple[str, str]] = []
    for f in args.files:
        try:
            if args.window:
                rows = [r.to_dict(rt.labels) for r in rt.timeline(f, args.window, args.hop)]
                results.append({"file": f, "window": args.window, "hop": args.hop, "timeline": rows})
            else:
                ranked = rt.classify(f, args.top)
                results.append({"file": f, "labels": [{"label": lb, "score": s} for lb, s in ranked]})
        except AudioError as e:
            failed.append((f, e.problem))
        except ValueError as e:
            failed.append((f, str(e)))
    if args.json:
        print(
            json.dumps({"results": results, "failed": [{"file": f, "error": e} for f, e in failed]}, indent=2)
        )
    else:
        for r in results:
            print(r["file"])
            if "labels" in r:
                for item in r["labels"]:
                    print(f"  {item['score']:7.4f}  {item['label']}")
            else:
                for row in r["timeline"]:
                    p = row["probabilities"][row["top_label"]]
                    print(f"  {row['start']:9.2f} {row['end']:9.2f}  {p:6.3f}  {row['top_label']}")
    for f, e in failed:
        print(f"skipped {f}: {e}", file=sys.stderr)
    if failed:
        print(f"{len(failed)} of {len(args.files)} files could not be read", file=sys.stderr)
    return 0 if results else 1


if __name__ == "__main__":
    sys.exit(main())
