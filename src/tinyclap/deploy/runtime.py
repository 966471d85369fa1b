"""Torch-free loading of an export folder (`tinyclap export`): onnxruntime + numpy, every file hash-checked.

`Runtime` loads `model.onnx` (or `model.int8.onnx`) and `classes.npz`, after checking each file's SHA-256
against `manifest.json` (a modified or corrupted file is refused), and embeds 5 s waveforms. Files, long
clips and timelines go through `tinyclap.Classifier.from_export` (`tinyclap.classifier`, `tinyclap.timeline`),
the one path `tinyclap classify`, `tinyclap serve` and `python -m tinyclap.runtime` (`tinyclap.runtime`) run.
This module must never import torch (tests run it with torch made unimportable).
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from tinyclap._util import display_path, is_int_in, loads_json, read_regular_file
from tinyclap.audio.io import MAX_SAMPLE_RATE, MIN_SAMPLE_RATE
from tinyclap.zeroshot import MAX_CLASSES_FILE_BYTES, MAX_EMBED_DIM, ZeroShotClassifier

# the export folder's layout, written by `tinyclap.deploy.export` and read here (one definition, torch-free)
EXPORT_FORMAT = "tinyclap-export/1"
MANIFEST_FILE = "manifest.json"
MODEL_FILE = "model.onnx"  # waveform -> embedding
STUDENT_FILE = "student.onnx"  # log-mel -> embedding
MODEL_INT8_FILE = "model.int8.onnx"
STUDENT_INT8_FILE = "student.int8.onnx"
CLASSES_FILE = "classes.npz"
# Bounds checked before anything is read (docs/robustness.md): a manifest is small JSON (its labels
# included); an ONNX file cannot exceed protobuf's 2 GiB; a clip of a minute is far past any student's input.
MAX_MANIFEST_BYTES = 64 << 20
MAX_ONNX_BYTES = 2 << 30
MAX_CLIP_SECONDS = 60
# Sane upper bounds on the numbers a user types (here, `tinyclap classify`, `python -m tinyclap.runtime`)
MAX_TOP = 100_000
MAX_BATCH = 1024  # windows embedded together: 1024 x 5 s x 44.1 kHz float32 is 0.9 GB
MAX_THREADS = 1024


class ExportError(ValueError):
    """An export folder that cannot be used: missing files, a bad manifest, or a file that was modified."""


def read_manifest(export_dir: str | os.PathLike) -> dict[str, Any]:
    """Parse `manifest.json` of an export folder and check its schema (types, required keys, plausible
    rates and sizes, file names inside the folder); every problem is a one-line ExportError naming it."""
    path = Path(export_dir) / MANIFEST_FILE
    if not Path(export_dir).is_dir():
        raise ExportError(f"{display_path(export_dir)}: not an export folder (no such directory)")
    if not os.path.lexists(path):
        raise ExportError(f"{display_path(path)}: missing; not a (complete) tinyclap export folder")
    try:  # bounded, strict JSON: no NaN/Infinity, no 1e999, no deep nesting
        manifest = loads_json(read_regular_file(path, MAX_MANIFEST_BYTES), display_path(path), expect=None)
    except ValueError as e:
        raise ExportError(f"{str(e)[:300]} (an unreadable export manifest)") from None
    if not isinstance(manifest, dict) or manifest.get("format") != EXPORT_FORMAT:
        fmt = manifest.get("format") if isinstance(manifest, dict) else None
        raise ExportError(f"{display_path(path)}: unknown export format {fmt!r:.80} (expected {EXPORT_FORMAT!r})")
    problem = _manifest_problem(manifest)
    if problem:
        raise ExportError(f"{display_path(path)}: invalid manifest: {problem}")
    return manifest


def _manifest_problem(m: dict[str, Any]) -> str | None:
    """What is wrong with a manifest's fields (None: nothing the runtime relies on)."""
    for key in ("sample_rate", "clip_samples", "embed_dim", "files"):
        if key not in m:
            return f"lacks {key!r}"
    rate, clip, dim = m["sample_rate"], m["clip_samples"], m["embed_dim"]
    if not is_int_in(rate, MIN_SAMPLE_RATE, MAX_SAMPLE_RATE):
        return f"sample_rate {rate!r:.40} is not an integer in {MIN_SAMPLE_RATE}..{MAX_SAMPLE_RATE}"
    if not is_int_in(clip, 1, MAX_CLIP_SECONDS * rate):
        return f"clip_samples {clip!r:.40} is not an integer in 1..{MAX_CLIP_SECONDS * rate} ({MAX_CLIP_SECONDS} s)"
    if not is_int_in(dim, 1, MAX_EMBED_DIM):
        return f"embed_dim {dim!r:.40} is not an integer in 1..{MAX_EMBED_DIM}"
    pool = m.get("pool_window")
    if pool is not None and (isinstance(pool, bool) or not isinstance(pool, (int, float))
                             or not 0 < pool <= clip / rate):
        return f"pool_window {pool!r:.40} is not a number of seconds in (0, clip length]"
    files = m["files"]
    if not isinstance(files, dict):
        return "'files' is not an object"
    for name, entry in files.items():
        if not _plain_name(name):
            return f"file name {display_path(str(name))[:80]!r} is not a plain name inside the folder"
        if not isinstance(entry, dict) or not isinstance(entry.get("sha256"), str) or not re.fullmatch(
            r"[0-9a-f]{64}", entry["sha256"]
        ):
            return f"files[{name!r}] lacks a hex SHA-256"
        if not is_int_in(entry.get("bytes"), 0, MAX_ONNX_BYTES):
            return f"files[{name!r}] lacks a size in bytes (0..{MAX_ONNX_BYTES})"
    classes = m.get("classes", {})
    if not isinstance(classes, dict) or not _plain_name(classes.get("file", CLASSES_FILE)):
        return "'classes' is not an object naming a plain file"
    return None


def _plain_name(name: Any) -> bool:
    """A file name that can only mean a file directly inside the export folder."""
    return (
        isinstance(name, str)
        and 0 < len(name) <= 255
        and name not in (".", "..")
        and not any(c in name for c in "/\\\0")
        and name.isprintable()
    )


def read_verified(export_dir: str | os.PathLike, name: str, manifest: dict[str, Any]) -> bytes:
    """The bytes of one exported file, after checking it BEFORE reading (a plain name; a regular file, not a
    FIFO, device or link leading out of the folder; the manifest's size) and its SHA-256 after."""
    path = Path(export_dir) / name
    entry = manifest["files"].get(name)
    if entry is None:
        raise ExportError(f"{display_path(path)}: not listed in {MANIFEST_FILE} (export it, e.g. with --quantize int8)")
    if not _plain_name(name) or Path(os.path.realpath(path)).parent != Path(os.path.realpath(export_dir)):
        raise ExportError(f"{display_path(path)}: refusing a file (or symbolic link) leading outside the export folder")
    limit = MAX_CLASSES_FILE_BYTES if name.endswith(".npz") else MAX_ONNX_BYTES
    try:
        data = read_regular_file(path, limit, size=entry["bytes"])
    except ValueError as e:
        raise ExportError(f"{e} (refusing to load it; re-run tinyclap export)") from e
    digest = hashlib.sha256(data).hexdigest()
    if digest != entry["sha256"]:
        raise ExportError(
            f"{display_path(path)}: SHA-256 mismatch: the manifest says {entry['sha256']}, the file has {digest}. "
            "The file was modified or corrupted after export; refusing to load it (re-run tinyclap export)."
        )
    if name.endswith(".onnx"):
        refs = external_data_refs(data)
        if refs:
            raise ExportError(
                f"{display_path(path)}: refers to external tensor data ({display_path(refs[0])[:80]}), which the "
                "manifest cannot vouch for; tinyclap exports never use it, so it is refused"
            )
    return data


# ONNX protobuf messages that can hold tensors: field number -> message kind (onnx.proto)
_PROTO_CHILDREN: dict[str, dict[int, str]] = {
    "model": {7: "graph", 20: "training", 25: "function"},
    "training": {1: "graph", 2: "graph"},
    "graph": {1: "node", 5: "tensor", 15: "sparse"},
    "function": {7: "node", 11: "attr"},
    "node": {5: "attr"},
    "attr": {5: "tensor", 6: "graph", 10: "tensor", 11: "graph", 22: "sparse", 23: "sparse"},
    "sparse": {1: "tensor", 2: "tensor"},
}


def _varint(buf: memoryview, i: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if i >= len(buf) or shift > 63:
            raise ValueError("malformed protobuf varint")
        b = buf[i]
        value |= (b & 0x7F) << shift
        i, shift = i + 1, shift + 7
        if b < 0x80:
            return value, i


def _proto_fields(buf: memoryview) -> Iterator[tuple[int, int, Any]]:
    """(field number, wire type, value) of one protobuf message: an int, or a memoryview for length-delimited."""
    i = 0
    while i < len(buf):
        key, i = _varint(buf, i)
        wire, value = key & 7, None
        if wire == 0:
            value, i = _varint(buf, i)
        elif wire == 2:
            n, i = _varint(buf, i)
            value, i = buf[i : i + n], i + n
        elif wire in (1, 5):
            i += 8 if wire == 1 else 4
        else:
            raise ValueError(f"unsupported protobuf wire type {wire}")
        if i > len(buf):
            raise ValueError("truncated protobuf message")
        yield key >> 3, wire, value


def external_data_refs(model: bytes) -> list[str]:
    """Where the tensors of a serialised ONNX model keep external data (an empty list for a self-contained
    model). A plain protobuf walk (no onnx package): initializers, Constant/attribute tensors, sparse tensors,
    subgraphs and functions. ONNX Runtime would read such data from a path the model chooses (for a model
    loaded from bytes: relative to the current folder), unhashed, so the runtime refuses any."""
    refs: list[str] = []
    stack: list[tuple[memoryview, str, int]] = [(memoryview(model), "model", 0)]
    try:
        while stack:
            buf, kind, depth = stack.pop()
            if depth > 64:
                raise ValueError("nested deeper than 64 messages")
            for field, wire, value in _proto_fields(buf):
                if kind == "tensor":
                    if field == 13 and wire == 2:
                        refs.append(_location(value))
                    elif field == 14 and wire == 0 and value == 1:
                        refs.append("(data_location EXTERNAL)")
                elif wire == 2 and field in _PROTO_CHILDREN[kind]:
                    stack.append((value, _PROTO_CHILDREN[kind][field], depth + 1))
    except ValueError as e:
        return [f"unparseable model: {e}"]
    return refs


def _location(entry: memoryview) -> str:
    """The value of one StringStringEntryProto (key=1, value=2) of a tensor's external_data."""
    fields = {f: bytes(v).decode("utf-8", "replace") for f, w, v in _proto_fields(entry) if w == 2}
    return f"{fields.get(1, '?')}={fields.get(2, '')}"


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
        check_count("batch_size", batch_size, MAX_BATCH)
        if threads is not None:
            check_count("threads", threads, MAX_THREADS)
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
        emb = np.concatenate(out) if out else np.zeros((0, self.embed_dim), np.float32)
        if emb.shape != (len(waves), self.embed_dim) or not np.isfinite(emb).all():
            raise ExportError(
                f"{display_path(self.export_dir / self.model_file)}: the model gave "
                + ("NaN/inf embeddings" if emb.shape[-1:] == (self.embed_dim,) else f"output {emb.shape}")
                + f" for finite audio (expected finite ({len(waves)}, {self.embed_dim})): its weights are broken"
            )
        return emb


def check_count(name: str, value: Any, most: int) -> int:
    """`value` as an int in 1..most, else a ValueError naming the option."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or not 1 <= value <= most:
        raise ValueError(f"{name} must be an integer from 1 to {most}, got {value!r}")
    return int(value)
