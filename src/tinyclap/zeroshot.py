"""Zero-shot classification as one normalised class matrix (open_clip style).

The class matrix is computed once from a teacher's text tower and saved with its labels, logit scale and
prompt template, so inference needs only the audio model and this file — never the text encoder.
This module imports torch only when it is handed torch tensors, so the torch-free runtime can use it.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from tinyclap._util import l2_normalize

DEFAULT_TEMPLATE = "this is the sound of {}"


def class_prompt(label: str, template: str = DEFAULT_TEMPLATE) -> str:
    """Prompt for one class: underscores become spaces (the paper's protocol), then the template."""
    return template.format(label.replace("_", " ").strip())


@dataclass
class ZeroShotClassifier:
    """A (C, D) matrix of L2-normalised class text embeddings with its labels and logit scale.

    `logit_scale` is the log value, as in CLAP: logits = exp(logit_scale) * cos(audio, class).
    """

    labels: list[str]
    weights: np.ndarray  # (C, D) float32, rows L2-normalised
    logit_scale: float
    templates: list[str] = field(default_factory=lambda: [DEFAULT_TEMPLATE])

    def __post_init__(self) -> None:
        w = np.asarray(self.weights, dtype=np.float32)
        # renormalise only when needed, so a saved matrix loads back bit-identical
        if not np.allclose(np.linalg.norm(w, axis=-1), 1.0, atol=1e-6):
            w = l2_normalize(w)
        self.weights = w
        if self.weights.ndim != 2 or self.weights.shape[0] != len(self.labels):
            raise ValueError(f"class matrix {self.weights.shape} does not match {len(self.labels)} labels")
        if len(set(self.labels)) != len(self.labels):
            raise ValueError("class labels must be unique")

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
        import torch

        templates = [templates] if isinstance(templates, str) else list(templates)
        if not labels:
            raise ValueError("need at least one class label")
        per_template = []
        with torch.no_grad():
            for tpl in templates:
                prompts = [class_prompt(lb, tpl) for lb in labels]
                embs = [teacher.encode_text(prompts[i : i + batch_size]) for i in range(0, len(prompts), batch_size)]
                per_template.append(l2_normalize(torch.cat(embs).float().cpu().numpy()))  # (C, D)
        weights = l2_normalize(np.mean(per_template, axis=0))  # ensembling: mean of unit vectors, renormalised
        scale = teacher.logit_scale
        scale = float(scale.detach().cpu()) if hasattr(scale, "detach") else float(scale)
        return cls(list(labels), weights, scale, templates)

    def select(self, dims: np.ndarray | Sequence[int]) -> ZeroShotClassifier:
        """The classifier restricted to the latent entries `dims` (pruned shared space), renormalised."""
        return ZeroShotClassifier(self.labels, self.weights[:, np.asarray(dims)], self.logit_scale, self.templates)

    def logits(self, audio: Any) -> Any:
        """(B, D) audio embeddings (numpy or torch; normalised here) -> (B, C) scaled cosine logits."""
        if isinstance(audio, np.ndarray):
            return float(np.exp(self.logit_scale)) * l2_normalize(audio.astype(np.float32)) @ self.weights.T
        import torch
        import torch.nn.functional as F

        w = torch.from_numpy(self.weights).to(audio.device, audio.dtype)
        return float(np.exp(self.logit_scale)) * F.normalize(audio, dim=-1) @ w.T

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

        meta = {"labels": self.labels, "logit_scale": self.logit_scale, "templates": self.templates}
        return atomic_save_npz(
            path, weights=self.weights, labels=np.asarray(self.labels, dtype=str), meta=np.asarray(json.dumps(meta))
        )

    @classmethod
    def load(cls, source: str | os.PathLike | bytes, name: str | os.PathLike | None = None) -> ZeroShotClassifier:
        """Read a class-matrix file from a path, or from its bytes (the runtime passes the bytes it verified,
        so no second read can see another file); `name` labels errors (default: the path).
        Plain arrays only (allow_pickle=False): a pickled payload is refused, never run."""
        import io

        label = name if name is not None else "class-matrix bytes" if isinstance(source, bytes) else source
        try:
            with np.load(io.BytesIO(source) if isinstance(source, bytes) else source, allow_pickle=False) as z:
                meta = json.loads(str(z["meta"]))
                weights = np.asarray(z["weights"], dtype=np.float32)
        except (OSError, KeyError, ValueError) as e:
            raise ValueError(f"{os.fsdecode(label)}: not a tinyclap class-matrix file ({e})") from e
        return cls(list(meta["labels"]), weights, float(meta["logit_scale"]), list(meta["templates"]))
