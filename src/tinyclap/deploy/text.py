"""An export's text tower (`tinyclap export --text`) on ONNX Runtime + `tokenizers`: free-text labels without
torch or transformers.

An export made with `--text` adds three files, each hash-checked against the manifest like the audio graphs:

- `tokenizer.json`   the teacher's WordPiece tokenizer as the `tokenizers` library runs it (lower-casing,
                     truncation at the teacher's token limit, padding to the longest text of a batch);
- `text.onnx`        (input_ids, attention_mask, token_type_ids) int64 (B, L) -> L2-normalised (B, D): the
                     teacher's text tower, its pooling and its projection into the shared space;
- `text.int8.onnx`   the same with int8 weights (ONNX Runtime dynamic quantisation), used with `int8=True`.

The manifest's `text` block says how (`max_length`, `strip`, `logit_scale`, the files) and records the parity
measured at export time (`tinyclap.deploy.text_export`). This module never imports torch.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from tinyclap._util import display_path, is_int_in, l2_normalize
from tinyclap.deploy.runtime import ExportError, ort_session, read_verified

__all__ = ["TEXT_FILE", "TEXT_INT8_FILE", "TOKENIZER_FILE", "ExportText", "has_text", "text_problem"]

TEXT_FILE = "text.onnx"
TEXT_INT8_FILE = "text.int8.onnx"
TOKENIZER_FILE = "tokenizer.json"
TEXT_FILES = (TEXT_FILE, TEXT_INT8_FILE, TOKENIZER_FILE)
TEXT_INPUTS = ("input_ids", "attention_mask", "token_type_ids")
MAX_TEXT_TOKENS = 512  # BERT's position table
MAX_TEXT_CHARS = 2000  # a label or a query, not a document
MAX_TEXT_BATCH = 64


def has_text(manifest: dict[str, Any]) -> bool:
    """Whether an export carries a text tower (made with `tinyclap export --text`)."""
    return isinstance(manifest.get("text"), dict)


def text_problem(text: Any) -> str | None:
    """What is wrong with a manifest's `text` block (None: usable)."""
    if not isinstance(text, dict):
        return "'text' is not an object"
    if not is_int_in(text.get("max_length"), 3, MAX_TEXT_TOKENS):
        return f"text.max_length {text.get('max_length')!r:.40} is not an integer in 3..{MAX_TEXT_TOKENS}"
    if not isinstance(text.get("strip", False), bool):
        return "text.strip is not a boolean"
    scale = text.get("logit_scale")
    if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not 0 <= scale <= 10:
        return f"text.logit_scale {scale!r:.40} is not a number in 0..10 (the log of the similarity scale)"
    return None


class ExportText:
    """The text side of an export folder: `encode_text(texts)` -> (B, D) normalised numpy embeddings, and
    `logit_scale`, so `ZeroShotClassifier.from_teacher` builds class matrices from it as from a teacher."""

    torch_free = True

    def __init__(self, export_dir: str | os.PathLike, manifest: dict[str, Any], int8: bool = False,
                 threads: int | None = None) -> None:
        from tokenizers import Tokenizer

        self.export_dir = Path(export_dir)
        text = manifest.get("text")
        problem = text_problem(text)
        if problem:
            raise ExportError(f"{display_path(self.export_dir / 'manifest.json')}: invalid manifest: {problem}")
        assert isinstance(text, dict)
        self.embed_dim = int(manifest["embed_dim"])
        self.max_length, self.strip = int(text["max_length"]), bool(text.get("strip", False))
        self.logit_scale = float(text["logit_scale"])
        missing = [n for n in (TOKENIZER_FILE, TEXT_INT8_FILE if int8 else TEXT_FILE) if n not in manifest["files"]]
        if missing:
            raise ExportError(f"{display_path(self.export_dir)}: {missing[0]} is not in the manifest; re-export with "
                              "`tinyclap export --text`")
        raw = read_verified(export_dir, TOKENIZER_FILE, manifest)
        try:
            self.tokenizer = Tokenizer.from_str(raw.decode("utf-8"))
        except Exception as e:  # tokenizers raises its own exception type (and UnicodeDecodeError)
            raise ExportError(f"{display_path(self.export_dir / TOKENIZER_FILE)}: not a tokenizer ({e})") from e
        self.tokenizer.enable_truncation(self.max_length)
        self.tokenizer.enable_padding(pad_id=self.tokenizer.token_to_id("[PAD]") or 0)
        self.model_file = TEXT_INT8_FILE if int8 else TEXT_FILE
        data = read_verified(export_dir, self.model_file, manifest)
        try:
            self.session = ort_session(data, threads)
        except Exception as e:  # onnxruntime's own exception types
            raise ExportError(f"{display_path(self.export_dir / self.model_file)}: ONNX Runtime cannot load it "
                              f"({e})") from e
        self.inputs = [i.name for i in self.session.get_inputs()]
        if sorted(self.inputs) != sorted(TEXT_INPUTS):
            raise ExportError(f"{display_path(self.export_dir / self.model_file)}: inputs {self.inputs} are not "
                              f"{list(TEXT_INPUTS)}")

    def tokenize(self, texts: list[str]) -> dict[str, np.ndarray]:
        """int64 (B, L) ids, attention mask and type ids, as the teacher's tokenizer gives them."""
        if isinstance(texts, str) or not texts or not all(isinstance(t, str) for t in texts):
            raise TypeError("encode_text expects a non-empty list of strings")
        long = [t for t in texts if len(t) > MAX_TEXT_CHARS]
        if long:
            raise ValueError(f"a text of {len(long[0])} characters; at most {MAX_TEXT_CHARS} are taken")
        enc = self.tokenizer.encode_batch([t.strip() if self.strip else t for t in texts])
        return {"input_ids": np.array([e.ids for e in enc], np.int64),
                "attention_mask": np.array([e.attention_mask for e in enc], np.int64),
                "token_type_ids": np.array([e.type_ids for e in enc], np.int64)}

    def encode_text(self, texts: list[str], normalize: bool = True) -> np.ndarray:
        """B texts -> (B, D) float32 embeddings (normalised: the graph ends with an L2 norm)."""
        out = []
        for i in range(0, len(texts), MAX_TEXT_BATCH):
            feed = self.tokenize(list(texts[i : i + MAX_TEXT_BATCH]))
            out.append(self.session.run(None, {k: feed[k] for k in self.inputs})[0])
        emb = np.concatenate(out).astype(np.float32) if out else np.zeros((0, self.embed_dim), np.float32)
        if emb.shape != (len(texts), self.embed_dim) or not np.isfinite(emb).all():
            raise ExportError(f"{display_path(self.export_dir / self.model_file)}: gave output {emb.shape} "
                              f"(expected finite ({len(texts)}, {self.embed_dim})): its weights are broken")
        return l2_normalize(emb) if normalize else emb
