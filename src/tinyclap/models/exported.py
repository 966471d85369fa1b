"""An export folder (`tinyclap export`) behind the `AudioEmbedder` interface, so `load_model(EXPORT_DIR)`
evaluates the deployed ONNX graph (fp32 or int8) exactly as it runs on a device.

An export folder holds no torch weights, so there is nothing to fine-tune, prune or re-export: this wrapper
only embeds. It runs `tinyclap.deploy.runtime.Runtime` (onnxruntime + numpy) and imports no torch itself;
a torch tensor in gives a torch tensor out (torch is then already loaded by the caller).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["ExportedModel", "is_export"]



def is_export(path: str | os.PathLike) -> bool:
    """True for an export folder (it has a manifest), or for `model.onnx`/`model.int8.onnx` inside one."""
    from tinyclap.deploy.runtime import MANIFEST_FILE

    path = Path(path)
    folder = path.parent if path.suffix == ".onnx" else path
    return folder.is_dir() and (folder / MANIFEST_FILE).is_file()


class ExportedModel:
    """`embed_waveform`, `sample_rate`, `embed_dim` (and `classifier`, `labels`) of an exported student.

    The graph L2-normalises its output, so `normalize=False` is refused rather than silently ignored.
    Waveforms must be the export's clip length (`clip_samples`, 5 s), as `tinyclap eval` feeds them.
    """

    kind = "export"

    def __init__(self, export_dir: str | os.PathLike, int8: bool = False, threads: int | None = None) -> None:
        from tinyclap.deploy.runtime import Runtime

        self.runtime = Runtime(export_dir, int8=int8, threads=threads)
        self.sample_rate = self.runtime.sample_rate
        self.embed_dim = self.runtime.embed_dim
        self.clip_samples = self.runtime.clip_samples
        self.classifier = self.runtime.classifier
        self.name = f"{Path(export_dir).name}/{self.runtime.model_file}"
        self.pool_window = self.runtime.manifest.get("pool_window")  # pooled inside the graph (None: whole clips)

    @classmethod
    def load(cls, path: str | os.PathLike) -> ExportedModel:
        """An export folder (its fp32 model), or the `model.onnx` / `model.int8.onnx` file inside one."""
        from tinyclap.deploy.runtime import MODEL_INT8_FILE

        path = Path(path)
        if path.suffix == ".onnx":
            return cls(path.parent, int8=path.name == MODEL_INT8_FILE)
        return cls(path)

    @property
    def labels(self) -> list[str]:
        return self.runtime.labels

    def embed_waveform(self, wave: Any, normalize: bool = True) -> Any:
        """(B, clip_samples) waveforms (numpy or torch) -> L2-normalised (B, D) of the same kind."""
        if not normalize:
            raise ValueError("an exported model's graph L2-normalises its output; normalize=False is not available")
        if isinstance(wave, np.ndarray):
            return self.runtime.embed(wave)
        out = self.runtime.embed(wave.detach().float().cpu().numpy())
        import torch

        return torch.from_numpy(out).to(wave.device)

    def eval(self) -> ExportedModel:
        """No-op (nothing trains), so callers may treat it like a module."""
        return self

    def to(self, *args: Any, **kwargs: Any) -> ExportedModel:
        """No-op: ONNX Runtime runs on the CPU whatever device the inputs come from."""
        return self
