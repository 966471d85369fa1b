"""The MS CLAP 2023 teacher: HTS-AT audio tower + GPT-2 text tower in a shared 1024-d space.

State-dict keys follow msclap 1.3's 2023 model (`CLAP_weights_2023.pth`, `{"model": state_dict}`):
`audio_encoder.base.htsat.*` (HTS-AT, `tinyclap.models.htsat`), `audio_encoder.projection`,
`caption_encoder.base` (a transformers GPT2Model, built from a literal config, never downloaded),
`caption_encoder.projection` and `logit_scale`.

Audio, as msclap's CLAPWrapper (config_2023.yml) prepares it: 44.1 kHz mono, 7 s windows (a shorter clip is
repeated to fill them). Its HTS-AT builds the log-mel with a filterbank designed for 32 kHz (msclap's htsat
config) while the STFT runs on the 44.1 kHz signal; the front end here does the same (`frontend` has
`sample_rate` 32000, the teacher's `sample_rate` is 44100), so the embeddings match msclap's.

Text: each caption gets " <|endoftext|>" appended, GPT-2 BPE tokens, padding with "!" (id 0); the embedding
is the last hidden state at position `count(ids != 0) - 1` (msclap's rule, which a "!" in the caption also
shifts). GPT-2 is causal, so padding to the longest caption gives the same states as msclap's padding to 77;
captions are truncated at `max_length` (77) tokens, where msclap would use them whole.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from tinyclap._util import dataclass_kwargs
from tinyclap.audio.frontend import LogMel
from tinyclap.models.checkpoint import CheckpointError, build_checked, read_model, save_model
from tinyclap.models.htsat import DERIVED_SUFFIXES, HTSAT, HTSATConfig, infer_htsat
from tinyclap.models.layers import Projection
from tinyclap.models.teacher import TwoTowerTeacher

KIND = "teacher-2023"
# openai-community/gpt2's config.json, written out; keys are transformers.GPT2Config arguments
GPT2_SMALL: dict[str, Any] = {
    "vocab_size": 50257, "n_positions": 1024, "n_embd": 768, "n_layer": 12, "n_head": 12, "n_inner": None,
    "activation_function": "gelu_new", "layer_norm_epsilon": 1e-5, "bos_token_id": 50256, "eos_token_id": 50256,
}  # fmt: skip
# msclap's htsat config: the mel filterbank of its HTS-AT (applied to 44.1 kHz audio, see the module doc)
HTSAT_FRONTEND: dict[str, Any] = {
    "sample_rate": 32000, "n_fft": 1024, "hop_length": 320, "win_length": 1024, "n_mels": 64,
    "f_min": 50.0, "f_max": 14000.0, "amin": 1e-10, "ref": 1.0,
}  # fmt: skip
PAD_TOKEN = "!"  # msclap: tokenizer.add_special_tokens({"pad_token": "!"}); id 0 in GPT-2's vocabulary
EOS_TEXT = " <|endoftext|>"
# tensors of official files that are not weights: torchlibrosa's STFT/mel matrices, HTS-AT's derived
# indices and masks, GPT-2's causal-mask buffers of older transformers
FOREIGN_PREFIXES = ("audio_encoder.base.htsat.spectrogram_extractor.", "audio_encoder.base.htsat.logmel_extractor.")
FOREIGN_SUFFIXES = (*DERIVED_SUFFIXES, ".attn.bias", ".attn.masked_bias")
_TEXT_SIZES = ("vocab_size", "n_positions", "n_embd", "n_layer", "n_head")
MAX_TEXT = {"vocab_size": 1 << 20, "n_positions": 1 << 16, "n_embd": 1 << 14, "n_layer": 64, "n_head": 128}


@dataclass
class Teacher2023Config:
    """Everything needed to rebuild an MS CLAP 2023 teacher (JSON-able through `to_dict`/`from_dict`)."""

    htsat: dict[str, Any] = field(default_factory=lambda: HTSATConfig().to_dict())
    d_proj: int = 1024
    text: dict[str, Any] = field(default_factory=lambda: dict(GPT2_SMALL))  # GPT2Config arguments
    max_length: int = 77  # msclap's text_len
    frontend: dict[str, Any] = field(default_factory=lambda: dict(HTSAT_FRONTEND))
    sample_rate: int = 44100  # the audio the teacher is given
    clip_seconds: float = 7.0  # its window (msclap's `duration`)
    logit_scale_init: float = math.log(1 / 0.07)

    @classmethod
    def tiny(cls, d_proj: int = 64, vocab_size: int = 50257) -> Teacher2023Config:
        """A small random stand-in for tests: a 2-stage HTS-AT of width 16 on a 64 x 64 image, 2-layer GPT-2."""
        htsat = HTSATConfig(spec_size=64, patch=4, dim=8, depths=(2, 2), heads=(2, 4), window=4, n_mels=64,
                            classes=10)
        text = dict(GPT2_SMALL, vocab_size=vocab_size, n_positions=128, n_embd=32, n_layer=2, n_head=4,
                    bos_token_id=vocab_size - 1, eos_token_id=vocab_size - 1)
        return cls(htsat=htsat.to_dict(), d_proj=d_proj, text=text)

    @property
    def audio(self) -> HTSATConfig:
        return HTSATConfig.from_dict(self.htsat)

    def validate(self) -> None:
        parts = {"htsat": self.htsat, "text": self.text, "frontend": self.frontend}
        if not all(isinstance(v, dict) for v in parts.values()):
            kinds = {k: type(v).__name__ for k, v in parts.items()}
            raise ValueError(f"htsat, text and frontend must be objects, got {kinds}")
        unknown = sorted(set(self.text) - set(GPT2_SMALL))
        if unknown:
            raise ValueError(f"unknown GPT-2 settings {unknown}; valid: {sorted(GPT2_SMALL)}")
        inner = self.text.get("n_inner")
        if inner is not None and (not isinstance(inner, int) or not 1 <= inner <= 4 * MAX_TEXT["n_embd"]):
            raise ValueError(f"n_inner out of range: {inner}")
        self.audio.validate()
        bad = {k: self.text.get(k) for k in _TEXT_SIZES
               if not isinstance(self.text.get(k), int) or not 1 <= self.text[k] <= MAX_TEXT[k]}
        if bad or not isinstance(self.d_proj, int) or not 1 <= self.d_proj <= 1 << 16:
            raise ValueError(f"sizes out of range: text {bad}, d_proj {self.d_proj}")
        if self.text["n_embd"] % self.text["n_head"]:
            raise ValueError(f"GPT-2 width {self.text['n_embd']} is not divisible by {self.text['n_head']} heads")
        LogMel.check_config(self.frontend)
        if self.frontend.get("n_mels") != self.audio.n_mels:
            raise ValueError(f"front end n_mels {self.frontend.get('n_mels')} != HTSAT n_mels {self.audio.n_mels}")
        if not 2 < self.max_length <= self.text["n_positions"]:
            raise ValueError(f"max_length={self.max_length} must be in (2, n_positions]")
        if not 1000 <= self.sample_rate <= 768_000 or not 0.1 <= self.clip_seconds <= 60:
            raise ValueError(f"sample_rate {self.sample_rate} or clip_seconds {self.clip_seconds} out of range")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Teacher2023Config:
        return cls(**dataclass_kwargs(cls, d))


class HTSATEncoder(nn.Module):
    """HTS-AT + projection: log-mel (B, T, n_mels) -> unnormalised (B, d_proj). `base.htsat` as in msclap."""

    def __init__(self, cfg: HTSATConfig, d_out: int) -> None:
        super().__init__()
        self.base = nn.ModuleDict({"htsat": HTSAT(cfg)})
        self.projection = Projection(cfg.width, d_out)

    def forward(self, logmel: torch.Tensor) -> torch.Tensor:
        return self.projection(self.base["htsat"](logmel))


class GPT2TextEncoder(nn.Module):
    """GPT-2 (built from a config) + projection of the hidden state at the last non-pad token."""

    def __init__(self, gpt2_config: Mapping[str, Any], d_out: int) -> None:
        super().__init__()
        from transformers import GPT2Config, GPT2Model  # lazy: audio-only users never pay for transformers

        config = GPT2Config(**dict(gpt2_config))
        self.base = GPT2Model(config)
        self.projection = Projection(config.n_embd, d_out)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:  # (B, L) -> (B, D)
        hidden = self.base(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state  # (B, L, H)
        last = (input_ids != 0).sum(dim=-1).clamp(min=1) - 1  # msclap: the pad id is 0 ("!")
        return self.projection(hidden[torch.arange(hidden.shape[0], device=hidden.device), last])


def load_gpt2_tokenizer(folder: str | os.PathLike, vocab_size: int = 50257) -> Any:
    """GPT-2's byte-level BPE tokenizer from a local folder (vocab.json + merges.txt), padded with "!"."""
    from transformers import GPT2Tokenizer

    folder = Path(folder)
    if not (folder / "vocab.json").is_file() or not (folder / "merges.txt").is_file():
        raise FileNotFoundError(f"{folder}: no vocab.json + merges.txt here; MS CLAP 2023 needs GPT-2's tokenizer")
    try:
        tok = GPT2Tokenizer.from_pretrained(str(folder), local_files_only=True)
        tok.add_special_tokens({"pad_token": PAD_TOKEN})
    except Exception as e:  # transformers raises OSError/ValueError/... depending on version
        raise ValueError(f"{folder}: cannot load a GPT-2 tokenizer ({type(e).__name__}: {e})") from e
    if tok.pad_token_id != 0 or len(tok) > vocab_size or tok.convert_tokens_to_ids("<|endoftext|>") is None:
        raise ValueError(f"{folder}: not GPT-2's vocabulary: '!' must be id 0, '<|endoftext|>' present and at most "
                         f"{vocab_size} tokens (got pad id {tok.pad_token_id}, {len(tok)} tokens)")
    return tok


class CLAP2023Teacher(TwoTowerTeacher):
    """MS CLAP 2023 with msclap-compatible state-dict keys; implements `tinyclap.models.teacher.Teacher`
    (conventions: `TwoTowerTeacher`).
    """

    TOKENIZER_HINT = "a local folder with GPT-2's vocab.json and merges.txt"

    kind = KIND
    template = "this is the sound of {}"  # msclap's zero-shot examples: prompt "this is the sound of " + class

    def __init__(self, config: Teacher2023Config | None = None, tokenizer_dir: str | os.PathLike | None = None):
        super().__init__()
        config = Teacher2023Config() if config is None else config
        config.validate()
        self.config = config
        self.frontend = LogMel.from_config(config.frontend)  # non-persistent buffers only
        self.audio_encoder = HTSATEncoder(config.audio, config.d_proj)
        self.caption_encoder = GPT2TextEncoder(config.text, config.d_proj)
        self.logit_scale = nn.Parameter(torch.tensor(config.logit_scale_init, dtype=torch.float32))
        self.sample_rate: int = config.sample_rate
        self.clip_seconds: float = config.clip_seconds
        self.embed_dim: int = config.d_proj
        self.tokenizer: Any = None
        if tokenizer_dir is not None:
            self.set_tokenizer(tokenizer_dir)

    def set_tokenizer(self, tokenizer_dir: str | os.PathLike) -> None:
        self.tokenizer = load_gpt2_tokenizer(tokenizer_dir, int(self.config.text["vocab_size"]))

    def fit_waveform(self, wave: torch.Tensor) -> torch.Tensor:
        """A clip shorter than the window is repeated to fill it (msclap's load_audio_into_tensor: tile, cut)."""
        n = round(self.clip_seconds * self.sample_rate)
        return wave.repeat(1, math.ceil(n / wave.shape[-1]))[:, :n] if wave.shape[-1] < n else wave

    def caption_texts(self, texts: Sequence[str]) -> list[str]:
        return [t + EOS_TEXT for t in texts]


def is_2023_state(state: Mapping[str, Any]) -> bool:
    """True for the tensors of an MS CLAP 2023 model (an HTS-AT audio tower and a GPT-2 text tower)."""
    return any(k.startswith("audio_encoder.base.htsat.") for k in state) and "caption_encoder.base.wte.weight" in state


def infer_config(state: Mapping[str, torch.Tensor]) -> Teacher2023Config:
    """MS CLAP 2023 with the sizes read from shapes. Head counts are in no shape: GPT-2 gets one head per 64
    channels (true of every GPT-2 size), HTS-AT keeps msclap's; pass config= for other layouts."""
    cfg = Teacher2023Config()

    def shape(key: str) -> tuple[int, ...]:
        t = state.get(key)
        return tuple(t.shape) if isinstance(t, torch.Tensor) else ()

    wte, wpe = shape("caption_encoder.base.wte.weight"), shape("caption_encoder.base.wpe.weight")
    layers = sum(1 for i in range(64) if f"caption_encoder.base.h.{i}.ln_1.weight" in state)
    text = dict(cfg.text)
    if len(wte) == 2 and len(wpe) == 2 and layers:
        heads = max(1, wte[1] // 64)  # every GPT-2 size has 64-wide heads (768/12, 1024/16, 1280/20, 1600/25)
        text.update(vocab_size=wte[0], n_embd=wte[1], n_positions=wpe[0], n_layer=layers, n_head=heads)
    htsat = infer_htsat(state, "audio_encoder.base.htsat.", cfg.audio)
    d_proj = (shape("audio_encoder.projection.linear1.weight") or (cfg.d_proj,))[0]
    frontend = {**cfg.frontend, "n_mels": htsat.n_mels}
    return dataclasses.replace(cfg, htsat=htsat.to_dict(), text=text, d_proj=d_proj, frontend=frontend,
                               max_length=min(cfg.max_length, text["n_positions"]))


def build_2023(state: dict[str, torch.Tensor], source: str, config: Teacher2023Config | None) -> CLAP2023Teacher:
    """A CLAP2023Teacher holding `state` (an official state dict), its config given or inferred from shapes."""
    given = config is not None
    config = infer_config(state) if config is None else config
    try:
        config.validate()
        return build_checked(lambda: CLAP2023Teacher(config), state, source=source,
                             ignore_prefixes=FOREIGN_PREFIXES, ignore_suffixes=FOREIGN_SUFFIXES)
    except (CheckpointError, ValueError) as e:
        origin = "the given config" if given else "the config inferred from its shapes"
        raise CheckpointError(f"{e}\n  (MS CLAP 2023 model built from {origin}: HTSAT {config.htsat}, "
                              f"GPT-2 {config.text}; pass config= for other layouts)") from None


def load_ours(path: Path) -> CLAP2023Teacher:
    """A teacher written by `save_teacher_2023` (config checked before building)."""
    meta, state = read_model(path, default_stem="teacher")
    try:
        config = Teacher2023Config.from_dict(meta["teacher"])
        config.validate()
    except (KeyError, TypeError, ValueError, OverflowError) as e:
        raise CheckpointError(f"{path}: invalid MS CLAP 2023 teacher config ({type(e).__name__}: {e})") from e
    return build_checked(lambda: CLAP2023Teacher(config), state, source=str(path))


def save_teacher_2023(teacher: CLAP2023Teacher, path: str | os.PathLike) -> Path:
    """`<stem>.safetensors` + `<stem>.json` (kind "teacher-2023" and its config); a folder gets teacher.*"""
    path = Path(path)
    if path.is_dir():
        path = path / "teacher"
    meta = {"kind": KIND, "teacher": teacher.config.to_dict(), "sample_rate": teacher.sample_rate,
            "clip_seconds": teacher.clip_seconds}
    return save_model(teacher, path, meta)
