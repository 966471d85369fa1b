"""Zero-shot classification as one normalised class matrix (open_clip style).

The class matrix is computed once from a teacher's text tower and saved with its labels, logit scale and
prompt template, so inference needs only the audio model and this file — never the text encoder.
A class file made by `tinyclap adapt` may also carry *example affinities* (`ExampleAffinity`, Tip-Adapter
style): the example clips' embeddings, each of which adds to its class's score when a clip is close to it.
`TextSide` is what encodes new labels when there is one: a PyTorch teacher (found by
`tinyclap.evaluation.run.resolve_text_model`), or an export's text tower (`tinyclap export --text`,
`tinyclap.deploy.text`: onnxruntime + tokenizers). This module imports torch only when it is handed torch
tensors or a PyTorch teacher, so the torch-free runtime can use it.
"""

from __future__ import annotations

import io
import json
import math
import os
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from tinyclap._util import display_path, l2_normalize, loads_json, read_list_file, read_regular_file

DEFAULT_TEMPLATE = "this is the sound of {}"
# Bounds on a class-matrix file, checked before anything is inflated or allocated (docs/robustness.md):
# 100k classes of up to 16384 dims, at most 512 MiB of float32 weights, 64 MiB of labels/metadata per member,
# and a logit scale whose exp() stays a plausible temperature (CLAP clamps exp(scale) at 100).
MAX_CLASSES = 100_000
MAX_EMBED_DIM = 16384
MAX_WEIGHTS_BYTES = 512 << 20
MAX_MEMBER_BYTES = 64 << 20
MAX_CLASSES_FILE_BYTES = 2 * MAX_WEIGHTS_BYTES + 4 * MAX_MEMBER_BYTES + (1 << 20)  # with example affinities
MAX_LABEL_CHARS = 1000
MAX_LOGIT_SCALE = math.log(1e4)
NPZ_MEMBERS = {"weights.npy": MAX_WEIGHTS_BYTES + 4096, "labels.npy": MAX_MEMBER_BYTES, "meta.npy": MAX_MEMBER_BYTES}
AFFINITY_MEMBERS = {"affinity_keys.npy": MAX_WEIGHTS_BYTES + 4096, "affinity_classes.npy": MAX_MEMBER_BYTES,
                    "affinity_weights.npy": MAX_MEMBER_BYTES}  # optional, all three or none
MAX_AFFINITY_EXAMPLES = 1_000_000
MAX_SHARPNESS = 1000.0


def class_prompt(label: str, template: str = DEFAULT_TEMPLATE) -> str:
    """Prompt for one class: underscores become spaces (the paper's protocol), then the template."""
    return template.format(label.replace("_", " ").strip())


def read_templates(values: Sequence[str] | None, default: str = DEFAULT_TEMPLATE) -> list[str]:
    """Prompt templates from the command line: each value is a template or a file of templates (one a
    line, blank lines and '#' comments skipped). Every template must contain one '{}'. None given: `default`
    (a text model's own prompt style, its `template`, where it has one)."""
    if not values:
        return [default]
    out: list[str] = []
    for v in values:
        p = Path(os.path.expanduser(v))
        if "{}" not in v and p.is_file():
            found = read_list_file(p, "templates")
            for t in found:
                if t.count("{}") != 1:
                    raise ValueError(f"{p}: template {t!r} must contain exactly one '{{}}'")
            out.extend(found)
        elif v.count("{}") == 1:
            out.append(v)
        else:
            raise ValueError(f"template {v!r} must contain exactly one '{{}}' (or be a file of templates)")
    return out


def _rows(emb: Any) -> np.ndarray:
    """Text embeddings as float32 numpy: a torch tensor (a teacher) or an array (an export's text tower)."""
    return emb.detach().float().cpu().numpy() if hasattr(emb, "detach") else np.asarray(emb, np.float32)


@dataclass
class ExampleAffinity:
    """Labelled example embeddings that add to their classes' scores (a training-free cache, Tip-Adapter
    style): a clip x gains, for each example i of class c, weights_i * exp(-sharpness * (1 - cos(x, keys_i)))
    on class c's cosine. Near an example the gain is its full weight; a few tenths of cosine away it is
    gone, so it helps clips like the examples (their recordings, their sources) and leaves the rest to the
    class vectors."""

    keys: np.ndarray  # (N, D) float32, rows L2-normalised: the examples' embeddings
    classes: np.ndarray  # (N,) int64: each example's class (a row of the class matrix)
    weights: np.ndarray  # (N,) float32 >= 0: each example's largest gain, in cosine units
    sharpness: float  # how fast the gain falls with the cosine distance

    def check(self, num_classes: int, embed_dim: int) -> None:
        """Shapes, ranges and finiteness against the class matrix; a ValueError saying what is wrong. Rows of
        keys are renormalised when needed; arrays are made contiguous of their dtypes."""
        k = np.asarray(self.keys, dtype=np.float32)
        if k.ndim != 2 or not 1 <= k.shape[0] <= MAX_AFFINITY_EXAMPLES or k.shape[1] != embed_dim:
            raise ValueError(f"affinity keys of shape {k.shape}: need (N, {embed_dim}) with 1 <= N <= "
                             f"{MAX_AFFINITY_EXAMPLES}")
        c, w = np.asarray(self.classes), np.asarray(self.weights, dtype=np.float32)
        if c.shape != (k.shape[0],) or c.dtype.kind not in "iu" or w.shape != (k.shape[0],):
            raise ValueError(f"affinity classes {c.shape} {c.dtype} / weights {w.shape}: need one integer class "
                             f"and one weight per key ({k.shape[0]})")
        if c.min() < 0 or c.max() >= num_classes:
            raise ValueError(f"affinity classes must be in 0..{num_classes - 1}, got {c.min()}..{c.max()}")
        if not (np.isfinite(k).all() and np.isfinite(w).all() and (w >= 0).all()):
            raise ValueError("affinity keys/weights must be finite, weights >= 0")
        s = self.sharpness
        if isinstance(s, bool) or not isinstance(s, (int, float, np.floating, np.integer)) or not (
                0 < float(s) <= MAX_SHARPNESS):
            raise ValueError(f"affinity sharpness {s!r} is not a number in (0, {MAX_SHARPNESS:g}]")
        if not np.allclose(np.linalg.norm(k, axis=-1), 1.0, atol=1e-6):
            k = l2_normalize(k)
        self.keys, self.classes, self.weights, self.sharpness = k, c.astype(np.int64), w, float(s)

    def example_gains(self, audio: np.ndarray) -> np.ndarray:
        """(B, D) normalised audio embeddings -> (B, N) each example's gain (numpy, in audio's precision)."""
        return np.exp(-self.sharpness * (1.0 - audio @ self.keys.T)) * self.weights

    def class_sums(self, gains: np.ndarray, num_classes: int) -> np.ndarray:
        """(B, N) per-example gains -> (B, C) their sums per class."""
        out = np.zeros((gains.shape[0], num_classes), dtype=gains.dtype)
        np.add.at(out.T, self.classes, gains.T)
        return out

    def gains(self, audio: np.ndarray, num_classes: int) -> np.ndarray:
        """(B, D) normalised audio embeddings -> (B, C) the examples' gains per class (numpy)."""
        return self.class_sums(self.example_gains(audio), num_classes)

    def gains_torch(self, audio: Any, num_classes: int) -> Any:
        """As `gains`, for a (B, D) normalised torch tensor."""
        import torch

        keys = torch.from_numpy(self.keys).to(audio.device, audio.dtype)
        w = torch.from_numpy(self.weights).to(audio.device, audio.dtype)
        g = torch.exp(-self.sharpness * (1.0 - audio @ keys.T)) * w
        out = torch.zeros(audio.shape[0], num_classes, device=audio.device, dtype=audio.dtype)
        return out.index_add_(1, torch.from_numpy(self.classes).to(audio.device), g)

    def select(self, dims: np.ndarray) -> ExampleAffinity:
        """The examples restricted to the latent entries `dims`, renormalised."""
        return ExampleAffinity(l2_normalize(self.keys[:, dims]), self.classes, self.weights, self.sharpness)


@dataclass
class ZeroShotClassifier:
    """A (C, D) matrix of L2-normalised class text embeddings with its labels and logit scale, and, from
    `tinyclap adapt`, optional example affinities.

    `logit_scale` is the log value, as in CLAP: logits = exp(logit_scale) * (cos(audio, class) + the
    examples' gains, `ExampleAffinity`).
    """

    labels: list[str]
    weights: np.ndarray  # (C, D) float32, rows L2-normalised
    logit_scale: float
    templates: list[str] = field(default_factory=lambda: [DEFAULT_TEMPLATE])
    affinity: ExampleAffinity | None = None

    def __post_init__(self) -> None:
        _check_labels(self.labels)
        w = np.asarray(self.weights, dtype=np.float32)
        if w.ndim != 2 or not (1 <= w.shape[0] <= MAX_CLASSES and 1 <= w.shape[1] <= MAX_EMBED_DIM):
            raise ValueError(f"class matrix of shape {w.shape}: need (C, D) with C <= {MAX_CLASSES}, "
                             f"D <= {MAX_EMBED_DIM}")
        if not np.isfinite(w).all():
            raise ValueError(f"class matrix has {int((~np.isfinite(w)).sum())} NaN/inf values")
        scale = self.logit_scale
        if isinstance(scale, bool) or not isinstance(scale, (int, float, np.floating, np.integer)) or not (
            abs(float(scale)) <= MAX_LOGIT_SCALE
        ):
            raise ValueError(f"logit_scale {scale!r} is not a finite number in [-{MAX_LOGIT_SCALE:.2f}, "
                             f"{MAX_LOGIT_SCALE:.2f}] (exp(scale) is the softmax's inverse temperature)")
        self.logit_scale = float(scale)
        if not isinstance(self.templates, list) or not all(isinstance(t, str) for t in self.templates):
            raise ValueError("templates must be a list of strings")
        # renormalise only when needed, so a saved matrix loads back bit-identical
        if not np.allclose(np.linalg.norm(w, axis=-1), 1.0, atol=1e-6):
            w = l2_normalize(w)
        self.weights = w
        if self.weights.ndim != 2 or self.weights.shape[0] != len(self.labels):
            raise ValueError(f"class matrix {self.weights.shape} does not match {len(self.labels)} labels")
        if len(set(self.labels)) != len(self.labels):
            raise ValueError("class labels must be unique")
        if self.affinity is not None:
            self.affinity.check(len(self.labels), self.weights.shape[1])

    @property
    def num_classes(self) -> int:
        return len(self.labels)

    @property
    def embed_dim(self) -> int:
        return int(self.weights.shape[1])

    @classmethod
    def from_teacher(
        cls,
        teacher: Any,
        labels: Sequence[str],
        templates: Sequence[str] | str = DEFAULT_TEMPLATE,
        batch_size: int = 64,
    ) -> ZeroShotClassifier:
        """Encode `labels` with `teacher.encode_text`; several templates are averaged (prompt ensembling)."""
        import contextlib

        templates = [templates] if isinstance(templates, str) else list(templates)
        if not labels:
            raise ValueError("need at least one class label")
        per_template = []
        if getattr(teacher, "torch_free", False):  # an export's text tower (tinyclap.deploy.text)
            no_grad: Any = contextlib.nullcontext()
        else:
            import torch

            no_grad = torch.no_grad()
        with no_grad:
            for tpl in templates:
                prompts = [class_prompt(lb, tpl) for lb in labels]
                embs = [teacher.encode_text(prompts[i : i + batch_size]) for i in range(0, len(prompts), batch_size)]
                per_template.append(l2_normalize(np.concatenate([_rows(e) for e in embs])))  # (C, D)
        weights = l2_normalize(np.mean(per_template, axis=0))  # ensembling: mean of unit vectors, renormalised
        scale = teacher.logit_scale
        scale = float(scale.detach().cpu()) if hasattr(scale, "detach") else float(scale)
        return cls(list(labels), weights, scale, templates)

    def select(self, dims: np.ndarray | Sequence[int]) -> ZeroShotClassifier:
        """The classifier restricted to the latent entries `dims` (pruned shared space), renormalised."""
        dims = np.asarray(dims)
        return ZeroShotClassifier(self.labels, self.weights[:, dims], self.logit_scale, self.templates,
                                  None if self.affinity is None else self.affinity.select(dims))

    def subset(self, rows: Sequence[int], labels: Sequence[str]) -> ZeroShotClassifier:
        """The classes `rows` of this one, named `labels` (their examples' affinities kept)."""
        rows = list(rows)
        aff = self.affinity
        if aff is not None:
            where = {r: i for i, r in enumerate(rows)}
            keep = np.array([int(c) in where for c in aff.classes])
            aff = None if not keep.any() else ExampleAffinity(
                aff.keys[keep], np.array([where[int(c)] for c in aff.classes[keep]]), aff.weights[keep], aff.sharpness)
        return ZeroShotClassifier(list(labels), self.weights[rows], self.logit_scale, self.templates, aff)

    def scores(self, audio: Any) -> Any:
        """(B, D) audio embeddings (numpy or torch; normalised here) -> (B, C) unscaled scores: cosines with
        the class vectors plus the examples' gains (`ExampleAffinity`), when the file has them."""
        if isinstance(audio, np.ndarray):
            if not np.isfinite(audio).all():
                raise ValueError(NON_FINITE_AUDIO)
            a = l2_normalize(audio.astype(np.float32))
            s = a @ self.weights.T
            return s if self.affinity is None else s + self.affinity.gains(a, self.num_classes)
        import torch
        import torch.nn.functional as F

        if not bool(torch.isfinite(audio).all()):
            raise ValueError(NON_FINITE_AUDIO)
        a = F.normalize(audio, dim=-1)
        s = a @ torch.from_numpy(self.weights).to(audio.device, audio.dtype).T
        return s if self.affinity is None else s + self.affinity.gains_torch(a, self.num_classes)

    def logits(self, audio: Any) -> Any:
        """(B, D) audio embeddings (numpy or torch; normalised here) -> (B, C) logits: exp(logit_scale) times
        `scores`."""
        return float(np.exp(self.logit_scale)) * self.scores(audio)

    def predict_proba(self, audio: Any) -> Any:
        """(B, D) -> (B, C) class probabilities (softmax over the scaled logits)."""
        z = self.logits(audio)
        if isinstance(z, np.ndarray):
            z = z - z.max(axis=-1, keepdims=True)
            e = np.exp(z)
            return e / e.sum(axis=-1, keepdims=True)
        return z.softmax(dim=-1)

    def rank(self, audio: Any, top: int | None = None) -> list[list[tuple[str, float]]]:
        """Ranked (label, probability) lists, one per clip."""
        p = self.predict_proba(audio)
        p = p if isinstance(p, np.ndarray) else p.detach().float().cpu().numpy()
        top = top or self.num_classes
        return [[(self.labels[j], float(row[j])) for j in np.argsort(-row, kind="stable")[:top]] for row in p]

    # -- files: .npz with plain arrays only (np.load(allow_pickle=False) reads it, no torch needed) --
    def save(self, path: str | os.PathLike) -> Path:
        from tinyclap._util import atomic_save_npz

        meta: dict[str, Any] = {"labels": self.labels, "logit_scale": self.logit_scale, "templates": self.templates}
        extra = {}
        if self.affinity is not None:
            meta["affinity"] = {"sharpness": self.affinity.sharpness, "examples": int(len(self.affinity.classes))}
            extra = {"affinity_keys": self.affinity.keys, "affinity_classes": self.affinity.classes,
                     "affinity_weights": self.affinity.weights}
        return atomic_save_npz(path, weights=self.weights, labels=np.asarray(self.labels, dtype=str),
                               meta=np.asarray(json.dumps(meta)), **extra)

    @classmethod
    def load(cls, source: str | os.PathLike | bytes, name: str | os.PathLike | None = None) -> ZeroShotClassifier:
        """Read a class-matrix file from a path, or from its bytes (the runtime passes the bytes it verified,
        so no second read can see another file); `name` labels errors (default: the path).

        Everything is bounded before it is read: the file must be a regular file (a FIFO is refused, not
        waited on) of at most MAX_CLASSES_FILE_BYTES; each zip member's declared size, and the bytes it
        actually inflates to, stay under its limit (a decompression bomb is refused after at most that many
        bytes); each .npy header's shape must match its data before any array is made. Plain arrays only
        (allow_pickle=False): a pickled payload is refused, never run. Every error is a ValueError naming
        the file."""
        label = display_path(name if name is not None else "class-matrix bytes" if isinstance(source, bytes)
                             else source)
        try:
            data = source if isinstance(source, bytes) else read_regular_file(source, MAX_CLASSES_FILE_BYTES)
        except ValueError as e:
            raise ValueError(f"{e} (expected a tinyclap class-matrix file)") from e
        try:
            arrays = _read_npz(data)
            meta = _parse_meta(arrays["meta.npy"])
            weights = np.array(arrays["weights.npy"], dtype=np.float32)
            return cls(meta["labels"], weights, meta["logit_scale"], meta["templates"], _read_affinity(arrays, meta))
        except (OSError, KeyError, ValueError, TypeError, RecursionError, zipfile.BadZipFile) as e:
            raise ValueError(f"{label}: not a usable tinyclap class-matrix file ({e})") from e


NON_FINITE_AUDIO = "audio embeddings contain NaN/inf values (the audio model's weights or output are broken)"


def _check_labels(labels: Any) -> None:
    """Labels: a list of distinct printable strings (a control character could forge lines in a report)."""
    if not isinstance(labels, list) or not all(isinstance(lb, str) for lb in labels):
        raise ValueError("labels must be a list of strings")
    for i, lb in enumerate(labels):
        if not lb or len(lb) > MAX_LABEL_CHARS or not lb.isprintable():
            raise ValueError(f"label {i} ({display_path(lb[:60])!r}) must be 1-{MAX_LABEL_CHARS} printable "
                             "characters (no newlines or other control characters)")


def _read_npz(data: bytes) -> dict[str, np.ndarray]:
    """The members of an .npz held in `data`, each inflated with a bounded read and parsed by `_read_npy`."""
    out = {}
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        infos = zf.infolist()
        if len(infos) > 16:
            raise ValueError(f"{len(infos)} zip members (a class-matrix file has 3)")
        for info in infos:
            limit = NPZ_MEMBERS.get(info.filename, AFFINITY_MEMBERS.get(info.filename))
            if limit is None:
                continue  # an unknown member is never read
            if info.file_size > limit:
                raise ValueError(f"member {info.filename} declares {info.file_size} bytes (limit {limit})")
            with zf.open(info) as member:
                raw = member.read(info.file_size + 1)  # inflating past its declared size is cut here
            if len(raw) > info.file_size:
                raise ValueError(f"member {info.filename} inflates past {limit} bytes (a decompression bomb?)")
            out[info.filename] = _read_npy(raw, info.filename)
    missing = sorted(set(NPZ_MEMBERS) - set(out))
    if missing:
        raise ValueError(f"missing member(s) {', '.join(missing)}")
    return out


def _read_affinity(arrays: dict[str, np.ndarray], meta: dict[str, Any]) -> ExampleAffinity | None:
    """The example affinities of a class file: all three members and meta's `affinity` block, or none."""
    present = [m for m in AFFINITY_MEMBERS if m in arrays]
    block = meta.get("affinity")
    if not present and block is None:
        return None
    if len(present) != len(AFFINITY_MEMBERS) or not isinstance(block, dict):
        raise ValueError("example affinities need the members " + ", ".join(AFFINITY_MEMBERS) +
                         " and meta's affinity block, all of them")
    return ExampleAffinity(np.array(arrays["affinity_keys.npy"], dtype=np.float32),
                           np.array(arrays["affinity_classes.npy"]), np.array(arrays["affinity_weights.npy"]),
                           block.get("sharpness"))


def _read_npy(raw: bytes, what: str) -> np.ndarray:
    """An .npy from bytes: the header's shape and dtype must account for exactly the bytes that follow, so
    no header can make numpy allocate more than the file holds; object dtypes (pickles) are refused."""
    f = io.BytesIO(raw)
    version = np.lib.format.read_magic(f)
    if version == (1, 0):
        shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
    elif version == (2, 0):
        shape, fortran, dtype = np.lib.format.read_array_header_2_0(f)
    else:
        raise ValueError(f"{what}: unsupported .npy version {version}")
    if dtype.hasobject:
        raise ValueError(f"{what}: object arrays (pickles) are not allowed")
    count = math.prod(shape)
    body = memoryview(raw)[f.tell() :]
    if count * dtype.itemsize != len(body):
        raise ValueError(f"{what}: header declares {shape} {dtype} but {len(body)} data bytes follow")
    arr = np.frombuffer(body, dtype=dtype, count=count)
    return arr.reshape(shape, order="F" if fortran else "C")


def _parse_meta(arr: np.ndarray) -> dict[str, Any]:
    """The JSON metadata (labels, logit_scale, templates) with its types checked."""
    if arr.shape != () or arr.dtype.kind != "U":
        raise ValueError(f"meta.npy: expected one string, got {arr.dtype} {arr.shape}")
    meta = loads_json(str(arr), "meta.npy", expect=None, finite=False)  # bounded; NaN read, then refused
    if not isinstance(meta, dict) or not all(k in meta for k in ("labels", "logit_scale", "templates")):
        raise ValueError("meta.npy: expected an object with labels, logit_scale and templates")
    return meta


# ------------------------------------------------------------------------------------- the text side


class TextSide:
    """The text encoder of a model, found on first use: `load()` when given (an export's text tower), else
    `evaluation.run.resolve_text_model` (a PyTorch teacher)."""

    def __init__(self, model: Any, spec: Any, teacher: Any, tokenizer: Any, templates: Sequence[str] | None,
                 load: Any = None):
        self.model, self.spec, self.teacher, self.tokenizer = model, spec, teacher, tokenizer
        self.templates, self.load = templates, load
        self._resolved: Any = None
        self._error: str | None = None

    def resolve(self) -> Any:
        if self._resolved is None and self._error is None:
            try:
                if self.load is not None:
                    self._resolved = self.load()
                else:
                    from tinyclap.evaluation.run import resolve_text_model

                    self._resolved = resolve_text_model(self.model, self.spec, teacher=self.teacher,
                                                        tokenizer=self.tokenizer)[0]
            except (ValueError, OSError) as e:
                self._error = str(e)
            except ImportError as e:
                self._error = f"free-text labels need the {e.name or 'tokenizers'} package ({e})"
        if self._resolved is None:
            raise ValueError(self._error or "no text encoder")
        return self._resolved

    def available(self) -> bool:
        try:
            self.resolve()
        except ValueError:
            return False
        return True

    def encode(self, labels: list[str], templates: Sequence[str] | None = None) -> ZeroShotClassifier:
        return ZeroShotClassifier.from_teacher(self.resolve(), labels, read_templates(templates or self.templates))

    def embed(self, texts: list[str]) -> np.ndarray:
        text_model = self.resolve()
        if getattr(text_model, "torch_free", False):  # an export's text tower: numpy out
            return l2_normalize(np.asarray(text_model.encode_text(texts, normalize=True), np.float32))
        import torch

        with torch.no_grad():
            emb = text_model.encode_text(texts, normalize=True)
        return l2_normalize(emb.float().cpu().numpy())


def export_text_side(rt: Any, int8: bool, threads: int | None, templates: Sequence[str] | None) -> TextSide:
    """An export's text tower (`tinyclap export --text`), loaded on first use; or, without one, a text side
    that says so and how to get one."""
    from tinyclap.deploy.text import ExportText, has_text

    if not has_text(rt.manifest):
        return NoText(f"{display_path(rt.export_dir)}: this export has no text tower, so it takes no labels: "
                       "re-export with `tinyclap export --text`, or give a class matrix (.npz)")
    return TextSide(None, None, None, None, templates or rt.classifier.templates or None,
                     load=lambda: ExportText(rt.export_dir, rt.manifest, int8=int8, threads=threads))


class NoText(TextSide):
    """An export without a text tower: every use says why, and how to get one."""

    def __init__(self, why: str) -> None:
        super().__init__(None, None, None, None, None)
        self._error = why
