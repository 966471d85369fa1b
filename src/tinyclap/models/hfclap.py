"""Any transformers `ClapModel` (LAION-CLAP and its fine-tunes) as a teacher: `hf:REPO[@REVISION]` or a local
`save_pretrained` folder.

The Hub is reached only through `huggingface_hub.snapshot_download` (its cache, resumed downloads, offline
mode with `HF_HUB_OFFLINE=1`); tinyclap has no downloader of its own for it. The audio goes through the
model's own `ClapFeatureExtractor` (48 kHz, its window, fusion or not, its padding), the text through the
model's own tokenizer; the embeddings are `ClapModel.get_audio_features` / `get_text_features`.

Before anything is built, `config.json` is read with the bounded JSON reader and refused unless it is a CLAP
(`model_type` "clap") of bounded sizes; weights are loaded by transformers (safetensors first; a `.bin` is read
with `torch.load(weights_only=True)`) and any missing or unexpected tensor is refused, naming them.

Two deviations, for determinism: a waveform longer than the extractor's window is cut to its first window
(the extractor would pick random crops), and so no clip is "longer" (for a fused model the extractor marks a
random clip of a batch as longer when none is, which sends it through the fusion branch); shorter clips are
padded the extractor's way. laion_clap's own inference does the same for clips within the window.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from tinyclap._util import read_json
from tinyclap.models.checkpoint import CheckpointError

KIND = "hf-clap"
PREFIX = "hf:"
# the prompt style of transformers' zero-shot-audio-classification pipeline (its default hypothesis_template)
TEMPLATE = "This is a sound of {}."
# the files a ClapModel folder needs; weights in safetensors first, a pickle only where that is all there is
NEEDED = ["config.json", "*processor_config.json", "tokenizer*", "vocab.json", "merges.txt",
          "special_tokens_map.json"]
MAX_SIZE = 1 << 16  # bound on any width, length or vocabulary size read from config.json (far above LAION-CLAP's)
_SIZES = {"text_config": ("vocab_size", "hidden_size", "num_hidden_layers", "intermediate_size",
                          "max_position_embeddings"),
          "audio_config": ("hidden_size", "patch_embeds_hidden_size", "spec_size", "num_mel_bins", "window_size")}


def is_hf_spec(spec: str | os.PathLike) -> bool:
    """True for `hf:REPO[@REVISION]`, or a local folder of a transformers model (a processor config, or a
    `config.json` naming a model_type): it is then loaded as a ClapModel, or refused by `check_clap_config`
    saying what was expected."""
    if isinstance(spec, str) and spec.startswith(PREFIX):
        return True
    path = Path(spec)
    if not path.is_dir() or not (path / "config.json").is_file() or (path / "student.safetensors").exists():
        return False
    if _has_processor(path):
        return True
    try:  # a transformers config.json always names its model_type; a tinyclap run's config.json never does
        return "model_type" in read_json(path / "config.json")
    except (ValueError, TypeError):
        return False


def _has_processor(folder: Path) -> bool:
    """The extractor's settings: preprocessor_config.json (Hub repos), processor_config.json (transformers 5)."""
    return any((folder / n).is_file() for n in ("preprocessor_config.json", "processor_config.json"))


def resolve_folder(spec: str | os.PathLike) -> Path:
    """The local folder of `spec`: itself, or the Hub snapshot of `hf:REPO[@REVISION]` (cache first)."""
    if not (isinstance(spec, str) and spec.startswith(PREFIX)):
        return Path(spec)
    repo, _, revision = spec[len(PREFIX):].partition("@")
    if not repo or repo.count("/") != 1:
        raise CheckpointError(f"{spec}: expected hf:OWNER/NAME[@REVISION] (a transformers ClapModel on the Hub)")
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    try:
        folder = Path(snapshot_download(repo, revision=revision or None, allow_patterns=[*NEEDED, "*.safetensors"]))
        if not any(folder.glob("*.safetensors")):
            folder = Path(snapshot_download(repo, revision=revision or None, allow_patterns=[*NEEDED, "*.bin"]))
    except LocalEntryNotFoundError as e:
        raise CheckpointError(
            f"{spec}: not in the Hugging Face cache and the Hub cannot be reached (offline); expected a cached "
            f"snapshot of a transformers ClapModel ({type(e).__name__}); fetch it once online, or pass a local folder"
        ) from None
    except (HfHubHTTPError, OSError, ValueError) as e:
        raise CheckpointError(f"{spec}: cannot fetch from the Hugging Face Hub ({type(e).__name__}: "
                              f"{str(e).splitlines()[0] if str(e) else ''})") from None
    return folder


def check_clap_config(folder: Path) -> dict[str, Any]:
    """`config.json` of a ClapModel folder, refused (one line, saying what was expected) unless it is one."""
    expected = "expected a transformers ClapModel folder (config.json with model_type 'clap', and its processor's)"
    if not (folder / "config.json").is_file():
        raise CheckpointError(f"{folder}: not a CLAP (no config.json): {expected}")
    try:
        config = read_json(folder / "config.json")
    except ValueError as e:
        raise CheckpointError(f"{folder}: unreadable config.json ({e}); {expected}") from None
    if not isinstance(config, dict) or config.get("model_type") != "clap":
        kind = config.get("model_type") if isinstance(config, dict) else type(config).__name__
        raise CheckpointError(f"{folder}: not a CLAP (model_type {kind!r}); {expected}")
    if not _has_processor(folder):
        raise CheckpointError(f"{folder}: a CLAP without its processor (no preprocessor_config.json): {expected}")
    bad = {f"{part}.{k}": v for part, keys in _SIZES.items() for k in keys
           if (v := (config.get(part) or {}).get(k)) is not None and (not isinstance(v, int) or not 0 < v <= MAX_SIZE)}
    dim = config.get("projection_dim", 512)
    if bad or not isinstance(dim, int) or not 0 < dim <= MAX_SIZE:
        bad = bad or {"projection_dim": dim}
        raise CheckpointError(f"{folder}: CLAP config sizes out of range (1..{MAX_SIZE}): {bad}")
    return config


def _load(folder: Path) -> tuple[Any, Any, Any]:
    """(ClapModel, feature extractor, tokenizer) from a checked folder, strictly."""
    from transformers import AutoTokenizer, ClapFeatureExtractor, ClapModel
    from transformers.utils import logging as hf_logging

    bar = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # no "Loading weights" bar on stderr
    try:
        model, info = ClapModel.from_pretrained(str(folder), local_files_only=True, output_loading_info=True)
        extractor = ClapFeatureExtractor.from_pretrained(str(folder), local_files_only=True)
        tokenizer = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    except Exception as e:  # transformers raises OSError/ValueError/RuntimeError depending on what is wrong
        raise CheckpointError(f"{folder}: cannot load the ClapModel ({type(e).__name__}: "
                              f"{str(e).splitlines()[0] if str(e) else ''})") from None
    finally:
        if bar:
            hf_logging.enable_progress_bar()
    checked = ("missing_keys", "unexpected_keys", "mismatched_keys")
    problems = {k: sorted(map(str, v)) for k, v in info.items() if k in checked and v}
    if problems:
        raise CheckpointError(f"{folder}: weights do not match the ClapModel config: {problems}")
    return model, extractor, tokenizer


class HFClapTeacher(nn.Module):
    """A transformers ClapModel behind the `Teacher` protocol (embed_waveform, encode_text, sample_rate, ...)."""

    kind = KIND
    template = TEMPLATE  # the default prompt style for class names

    def __init__(self, model: Any, extractor: Any, tokenizer: Any, source: str = "") -> None:
        super().__init__()
        self.model = model.eval()
        self.extractor = extractor
        self.tokenizer = tokenizer
        self.source = source
        self.sample_rate: int = int(extractor.sampling_rate)
        self.window: int = int(extractor.nb_max_samples)
        self.clip_seconds: float = self.window / self.sample_rate
        self.embed_dim: int = int(model.config.projection_dim)
        self.fusion: bool = bool(getattr(model.config.audio_config, "enable_fusion", False))

    @property
    def logit_scale(self) -> torch.Tensor:
        """The log of the text-audio similarity scale (`logit_scale_t`, what ClapModel's text logits use)."""
        return self.model.logit_scale_t.detach()

    @property
    def device(self) -> torch.device:
        return self.model.logit_scale_t.device

    def features(self, wave: torch.Tensor) -> dict[str, torch.Tensor]:
        """(B, N) waveforms at `sample_rate` -> the extractor's inputs (input_features, is_longer) on device."""
        clips = [w[: self.window].detach().cpu().double().numpy() for w in wave.reshape(-1, wave.shape[-1])]
        out = self.extractor(clips, sampling_rate=self.sample_rate, return_tensors="pt")
        feats = {k: out[k].to(self.device) for k in ("input_features", "is_longer") if k in out}
        if "is_longer" in feats:  # the extractor marks a random clip "longer" when none is: none is, here
            feats["is_longer"] = torch.zeros_like(feats["is_longer"])
        return feats

    def encode_waveform(self, wave: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        """(B, N) at `sample_rate` -> (B, projection_dim), with autograd (the extractor itself is numpy)."""
        x = self.model.audio_projection(self.model.audio_model(**self.features(wave)).pooler_output)
        return F.normalize(x, dim=-1) if normalize else x

    def embed_waveform(self, wave: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        """(B, N) at `sample_rate` -> (B, projection_dim), without autograd."""
        with torch.no_grad():
            return self.encode_waveform(wave, normalize=normalize)

    def encode_text(self, texts: list[str], normalize: bool = True) -> torch.Tensor:
        if isinstance(texts, str) or not texts or not all(isinstance(t, str) for t in texts):
            raise TypeError("encode_text expects a non-empty list of strings")
        tok = self.tokenizer(list(texts), padding=True, truncation=True, return_tensors="pt")
        tok = {k: v.to(self.device) for k, v in tok.items() if k in ("input_ids", "attention_mask")}
        x = self.model.text_projection(self.model.text_model(**tok).pooler_output)
        return F.normalize(x, dim=-1) if normalize else x

    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        return self.encode_waveform(wave)


def load_hf_clap(spec: str | os.PathLike, device: str | torch.device = "cpu") -> HFClapTeacher:
    """`hf:REPO[@REVISION]` (through the Hub cache) or a local `save_pretrained` folder as a teacher."""
    folder = resolve_folder(spec)
    check_clap_config(folder)
    model, extractor, tokenizer = _load(folder)
    return HFClapTeacher(model, extractor, tokenizer, source=os.fspath(spec)).to(device).eval()
