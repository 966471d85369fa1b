"""`tinyclap export --text`: the teacher's text tower as ONNX (fp32 and int8) with its tokenizer, checked.

Writes `tokenizer.json`, `text.onnx` and `text.int8.onnx` (see `tinyclap.deploy.text`, the torch-free side)
into an export's staging folder and returns the manifest's `text` block: how to run it (`max_length`,
`strip`, `logit_scale`) and what was measured: the tokenizer's agreement with the teacher's own, cosine of
the ONNX text embeddings (fp32, int8) to PyTorch's, zero-shot top-1 agreement of the int8 class matrix with
PyTorch's on the parity clips, file sizes and per-text latency. Teachers: MS CLAP 2022 (BERT-base, [CLS] +
projection) and the proxy teacher (MiniLM, mean pooling + projection).
"""

from __future__ import annotations

import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from tinyclap._util import l2_normalize, sha256_file
from tinyclap.deploy.text import TEXT_FILE, TEXT_INPUTS, TEXT_INT8_FILE, TOKENIZER_FILE, ExportText
from tinyclap.zeroshot import ZeroShotClassifier

# free text beyond the class prompts, so parity covers what users type
PARITY_TEXTS = (
    "a kettle whistling", "rain on a tin roof", "a dog barking in the distance", "church bells ringing",
    "someone typing on a keyboard", "an ambulance siren passing by", "birds singing at dawn", "a car horn",
    "footsteps on gravel", "glass breaking", "a baby crying", "thunder", "applause in a large hall",
    "water running from a tap", "a helicopter overhead", "music with drums and bass guitar",
)
MIN_TEXT_COSINE = 0.9999  # fp32 ONNX vs PyTorch, every text


class TextParityError(ValueError):
    """The exported text graph does not reproduce the teacher's text embeddings."""


class _ClapText(nn.Module):
    """MS CLAP 2022: BERT -> [CLS] -> projection -> L2 norm."""

    def __init__(self, teacher: Any) -> None:
        super().__init__()
        self.encoder = teacher.caption_encoder

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, token_type_ids: torch.Tensor
                ) -> torch.Tensor:
        return F.normalize(self.encoder(input_ids, attention_mask, token_type_ids), dim=-1)


class _ProxyText(nn.Module):
    """The proxy teacher: MiniLM -> mean over real tokens (-> L2 norm) -> projection -> L2 norm."""

    def __init__(self, teacher: Any) -> None:
        super().__init__()
        self.bert, self.normalize = teacher.text_tower.bert, bool(teacher.text_tower.normalize)
        self.projection = teacher.head.text_projection

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, token_type_ids: torch.Tensor
                ) -> torch.Tensor:
        hidden = self.bert(input_ids=input_ids, attention_mask=attention_mask,
                           token_type_ids=token_type_ids).last_hidden_state
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        emb = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)
        emb = F.normalize(emb, dim=-1) if self.normalize else emb
        return F.normalize(self.projection(emb), dim=-1)


def text_parts(teacher: Any) -> tuple[nn.Module, Any, int, bool, str]:
    """(graph module, the teacher's tokenizer, max tokens, strip texts first, kind) of a teacher's text side."""
    if hasattr(teacher, "caption_encoder") and hasattr(teacher, "tokenize"):
        if teacher.tokenizer is None:
            raise ValueError("the teacher has no tokenizer: pass --tokenizer DIR (a folder with BERT's uncased "
                             "vocab.txt) to export its text tower")
        return _ClapText(teacher), teacher.tokenizer, int(teacher.config.max_length), False, "msclap-2022-bert"
    if hasattr(teacher, "text_tower") and hasattr(teacher, "head"):
        tower = teacher.text_tower
        return _ProxyText(teacher), tower.tokenizer, int(tower.max_tokens), True, "proxy-minilm"
    kind = getattr(teacher, "kind", None) or type(teacher).__name__
    raise ValueError(f"export --text: a {kind!r} has no text tower that can be exported (a teacher is expected: "
                     "MS CLAP 2022 or a proxy teacher)")


def _fast_tokenizer(tok: Any) -> Any:
    """The teacher's tokenizer as a `tokenizers.Tokenizer` (transformers >= 5 runs one already; older: converted)."""
    from tokenizers import Tokenizer

    backend = getattr(tok, "backend_tokenizer", None)
    if backend is None:
        from transformers.convert_slow_tokenizer import convert_slow_tokenizer

        backend = convert_slow_tokenizer(tok)
    fast = Tokenizer.from_str(backend.to_str())
    fast.no_truncation()
    fast.no_padding()
    return fast


def _onnx_export(module: nn.Module, path: Path, opset: int) -> None:
    ids = torch.tensor([[101, 2023, 2003, 102], [101, 2003, 102, 0]])
    feed = (ids, (ids > 0).long(), torch.zeros_like(ids))
    axes = {name: {0: "batch", 1: "tokens"} for name in TEXT_INPUTS}
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module.eval(), feed, str(path), dynamo=False, opset_version=opset,
                          input_names=list(TEXT_INPUTS), output_names=["embedding"],
                          dynamic_axes={**axes, "embedding": {0: "batch"}}, do_constant_folding=True)


def _quantize(src: Path, dst: Path) -> None:
    """int8 weights per output channel (MatMul, Gather: the embedding table too; per tensor, MiniLM's mean cosine
    to fp32 drops from 0.993 to 0.968), activations quantised on the fly."""
    import logging

    from onnxruntime.quantization import QuantType, quantize_dynamic

    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # its advice to pre-process is for static quantisation
    try:
        quantize_dynamic(str(src), str(dst), weight_type=QuantType.QInt8, per_channel=True)
    finally:
        root.setLevel(level)


def _torch_text(teacher: Any, texts: list[str]) -> np.ndarray:
    with torch.no_grad():
        return l2_normalize(np.concatenate([teacher.encode_text(texts[i : i + 32]).float().cpu().numpy()
                                            for i in range(0, len(texts), 32)]))


def _latency_ms(enc: ExportText, text: str, runs: int = 20) -> float:
    """Median wall time of one text (batch 1), after a warm-up run."""
    enc.encode_text([text])
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        enc.encode_text([text])
        times.append(time.perf_counter() - t0)
    return round(1000 * float(np.median(times)), 3)


def export_text(teacher: Any, out: Path, *, opset: int, classifier: ZeroShotClassifier,
                audio: np.ndarray | None = None) -> dict[str, Any]:
    """Write the text files into `out` and return the manifest's `text` block (see module doc). `audio`:
    normalised (K, D) audio embeddings of real clips, for the zero-shot agreement; TextParityError when the
    fp32 graph or the tokenizer does not reproduce the teacher."""
    module, tok, max_length, strip, kind = text_parts(teacher)
    fast = _fast_tokenizer(tok)
    (out / TOKENIZER_FILE).write_text(fast.to_str(), encoding="utf-8")
    _onnx_export(module, out / TEXT_FILE, opset)
    _quantize(out / TEXT_FILE, out / TEXT_INT8_FILE)
    scale = teacher.logit_scale
    block: dict[str, Any] = {
        "teacher": kind, "max_length": max_length, "strip": strip,
        "logit_scale": float(scale.detach().cpu()) if hasattr(scale, "detach") else float(scale),
        "files": {"fp32": TEXT_FILE, "int8": TEXT_INT8_FILE, "tokenizer": TOKENIZER_FILE},
        "inputs": {"names": list(TEXT_INPUTS), "shape": ["batch", "tokens"], "dtype": "int64"},
    }
    block["parity"] = _parity(teacher, tok, out, block, classifier, audio)
    return block


def _parity(teacher: Any, tok: Any, out: Path, block: dict[str, Any], classifier: ZeroShotClassifier,
            audio: np.ndarray | None) -> dict[str, Any]:
    """Tokenizer agreement, fp32/int8 cosine to PyTorch, zero-shot agreement, sizes and latency."""
    templates = classifier.templates or ["this is the sound of {}"]
    prompts = [t.replace("{}", lb.replace("_", " ")) for t in templates for lb in classifier.labels]
    texts = list(dict.fromkeys([*prompts, *PARITY_TEXTS]))
    files = {n: {"sha256": sha256_file(out / n), "bytes": (out / n).stat().st_size}
             for n in (TEXT_FILE, TEXT_INT8_FILE, TOKENIZER_FILE)}
    manifest = {"embed_dim": classifier.embed_dim, "text": block, "files": files}
    # one ONNX Runtime thread: the latency is per text on one core, comparable with the audio tables
    fp32, int8 = ExportText(out, manifest, threads=1), ExportText(out, manifest, int8=True, threads=1)
    ref_ids = tok([t.strip() if block["strip"] else t for t in texts], truncation=True,
                  max_length=block["max_length"])["input_ids"]
    ours = fp32.tokenize(texts)  # padded to the longest text: compare the real tokens
    same_ids = sum(list(ids[mask > 0]) == list(r) for ids, mask, r in
                   zip(ours["input_ids"], ours["attention_mask"], ref_ids))
    if same_ids != len(texts):
        raise TextParityError(f"tokenizer.json tokenises {len(texts) - same_ids} of {len(texts)} texts unlike the "
                              "teacher's tokenizer")
    ref = _torch_text(teacher, texts)
    report: dict[str, Any] = {"texts": len(texts), "tokenizer_agreement": 1.0}
    for name, enc in ((TEXT_FILE, fp32), (TEXT_INT8_FILE, int8)):
        cos = np.sum(ref * enc.encode_text(texts), axis=1)
        report[name] = {"min_cosine": round(float(cos.min()), 7), "mean_cosine": round(float(cos.mean()), 7),
                        "bytes": files[name]["bytes"], "latency_ms_per_text": _latency_ms(enc, texts[0])}
    if report[TEXT_FILE]["min_cosine"] < MIN_TEXT_COSINE:
        raise TextParityError(f"{TEXT_FILE}: min cosine {report[TEXT_FILE]['min_cosine']} to the PyTorch text "
                              f"tower is below {MIN_TEXT_COSINE}")
    if audio is not None and len(audio):
        ref_clf = ZeroShotClassifier.from_teacher(teacher, classifier.labels, templates)
        for name, enc in ((TEXT_FILE, fp32), (TEXT_INT8_FILE, int8)):
            clf = ZeroShotClassifier.from_teacher(enc, classifier.labels, templates)
            same = np.argmax(audio @ ref_clf.weights.T, 1) == np.argmax(audio @ clf.weights.T, 1)
            report[name]["zero_shot_top1_agreement"] = round(float(same.mean()), 4)
            report[name]["zero_shot_clips"] = len(audio)
    return report
