"""tinyCLAP students: audio encoders distilled into CLAP's 1024-d shared space, and their registry.

A student is `base` (a PhiNet or Cnn14 audio encoder giving a 2048-d clip embedding) followed by `projection`
(MS CLAP's projection head, 2048 -> embed_dim). The PhiNet students are built exactly as the reference
tinyCLAP code builds them (fpaissan/tinyCLAP, `modules.py`: `get_audio_encoder`, its `PhiNet` subclass and
`AudioEncoder`), with the same state-dict keys (`base._layers.*`, `base.bn0.*`, `base.pn_block.*`,
`projection.*`), so released tinyCLAP student checkpoints load as they are.

PhiNet student names have the form `phinet_alpha_{alpha:.2f}_beta_{beta:.2f}_t0_{t0}_N_{N}`. Any such name
builds a student, not only the registered ones (`list_students()`: the configurations of the paper).
Microcontroller students (`tinyclap.models.mcu`: `mcu_alpha_..._F_{features}`, presets `mcu-s`, `mcu-m`) are
PhiNets laid out for TensorFlow Lite Micro.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from tinyclap.models.cnn14 import Cnn14
from tinyclap.models.layers import Projection
from tinyclap.models.mcu import (
    INPUT_CLIP,
    MCU_FORM,
    MCU_RE,
    McuProjection,
    bn0_affine,
    is_mcu_name,
    resolve_preset,
    valid_padding,
)
from tinyclap.models.phinet import PhiNet

AUDIO_EMBED_DIM = 2048  # width of the audio encoders' clip embedding (Cnn14's fc1, PhiNet's pn_block)
SHARED_EMBED_DIM = 1024  # CLAP 2022's shared audio-text space
N_MELS = 64
# tinyCLAP builds PhiNet with input_shape (1, 640, 64); only its parity (even largest side) matters: it picks
# the stem padding (0, 1, 0, 1). The network itself runs on any number of frames.
PHINET_INPUT_FRAMES = 640

CNN14_NAME = "cnn14"
PHINET_FORM = "phinet_alpha_{alpha:.2f}_beta_{beta:.2f}_t0_{t0}_N_{N}"
_PHINET_RE = re.compile(r"phinet_alpha_(\d+\.\d\d)_beta_(\d+\.\d\d)_t0_(\d+)_N_(\d+)")

_REGISTERED: tuple[str, ...] = (
    "phinet_alpha_3.00_beta_0.75_t0_6_N_7",
    "phinet_alpha_3.00_beta_0.75_t0_6_N_9",
    "phinet_alpha_3.00_beta_0.75_t0_4_N_7",
    "phinet_alpha_1.50_beta_0.75_t0_6_N_7",
    "phinet_alpha_0.75_beta_0.75_t0_4_N_7",
    "phinet_alpha_0.75_beta_0.75_t0_4_N_4",
    "phinet_alpha_0.75_beta_0.75_t0_6_N_4",
    CNN14_NAME,
)


@dataclass(frozen=True)
class StudentSpec:
    """PhiNet hyper-parameters of a student: width `alpha`, shape factor `beta`, base expansion `t0`,
    number of blocks `N`."""

    alpha: float
    beta: float
    t0: int
    N: int

    @property
    def name(self) -> str:
        return PHINET_FORM.format(alpha=self.alpha, beta=self.beta, t0=self.t0, N=self.N)


@dataclass(frozen=True)
class McuSpec(StudentSpec):
    """A microcontroller PhiNet (`tinyclap.models.mcu`): the PhiNet's parameters and the feature width."""

    features: int = 512

    @property
    def name(self) -> str:
        return MCU_FORM.format(alpha=self.alpha, beta=self.beta, t0=self.t0, N=self.N, features=self.features)


def list_students() -> list[str]:
    """The registered student names (the tinyCLAP paper's PhiNets, then the Cnn14 teacher-size student)."""
    return list(_REGISTERED)


def _bad_name(name: object, why: str) -> ValueError:
    return ValueError(
        f"invalid student name {name!r}: {why}. Valid names are {CNN14_NAME!r} or "
        f"'{PHINET_FORM}' with alpha, beta > 0 (two decimals), integers t0 >= 1 and N >= 3, "
        f"e.g. 'phinet_alpha_1.50_beta_0.75_t0_6_N_7'. Registered students: {', '.join(_REGISTERED)}"
    )


def parse_student_name(name: str) -> StudentSpec:
    """Parse a PhiNet student name strictly; raises ValueError (with the valid form) on anything else.

    The name must be canonical, i.e. exactly `StudentSpec(...).name` (no leading zeros, two decimals).
    'cnn14' is a valid student but not a PhiNet, so it is refused here too. An MCU preset (`mcu-s`) parses as
    its student's name.
    """
    if not isinstance(name, str):
        raise _bad_name(name, "not a string")
    name = resolve_preset(name)
    if is_mcu_name(name):
        return _parse_mcu_name(name)
    m = _PHINET_RE.fullmatch(name)
    if m is None:
        why = "Cnn14 is not a PhiNet student" if name == CNN14_NAME else "not of the PhiNet form"
        raise _bad_name(name, why)
    spec = StudentSpec(alpha=float(m[1]), beta=float(m[2]), t0=int(m[3]), N=int(m[4]))
    if spec.name != name:
        raise _bad_name(name, f"not canonical (did you mean {spec.name!r}?)")
    if spec.alpha <= 0 or spec.beta <= 0 or spec.t0 < 1:
        raise _bad_name(name, "alpha and beta must be > 0 and t0 >= 1")
    if spec.N < 3:
        # blocks 1-3 always exist; N counts them, and the expansion schedule divides by N
        raise _bad_name(name, "N must be >= 3")
    return spec


def _parse_mcu_name(name: str) -> McuSpec:
    m = MCU_RE.fullmatch(name)
    if m is None:
        raise _bad_name(name, f"not of the microcontroller form '{MCU_FORM}'")
    spec = McuSpec(alpha=float(m[1]), beta=float(m[2]), t0=int(m[3]), N=int(m[4]), features=int(m[5]))
    if spec.name != name:
        raise _bad_name(name, f"not canonical (did you mean {spec.name!r}?)")
    if spec.alpha <= 0 or spec.beta <= 0 or spec.t0 < 1 or spec.N < 3 or spec.features < 1:
        raise _bad_name(name, "alpha and beta must be > 0, t0 >= 1, N >= 3 and F >= 1")
    return spec


class PhiNetAudioEncoder(PhiNet):
    """tinyCLAP's PhiNet audio encoder: bn0 over mel bins -> PhiNet (compatibility mode) -> `pn_block`
    (1x1 conv, stride 2, to 2048 channels, with bias) -> mean over time and mel.

    forward((B, T, n_mels) log-mel) -> (B, 2048). Keys `_layers.*`, `bn0.*`, `pn_block.*` as the reference.
    """

    def __init__(self, spec: StudentSpec, n_mels: int = N_MELS, embedding_dim: int = AUDIO_EMBED_DIM) -> None:
        super().__init__(
            input_shape=(1, PHINET_INPUT_FRAMES, n_mels),
            num_layers=spec.N,
            alpha=spec.alpha,
            beta=spec.beta,
            t_zero=spec.t0,
            compatibility=True,
        )
        self.spec = spec
        self.n_mels = n_mels
        self.bn0 = nn.BatchNorm2d(n_mels)
        self.pn_block = nn.Conv2d(self.out_channels, embedding_dim, kernel_size=1, stride=2)
        self.mcu = isinstance(spec, McuSpec)
        if self.mcu:
            valid_padding(self)

    def forward(self, logmel: torch.Tensor) -> torch.Tensor:  # (B, T, M) -> (B, embedding_dim)
        if self.mcu and not self.training:  # the same function, as one op a microcontroller graph keeps
            x = bn0_affine(self.bn0, logmel).unsqueeze(1)
        else:
            x = logmel.unsqueeze(1)  # (B, 1, T, M)
            # BatchNorm2d over the mel axis: mels onto the channel axis and back, as the reference does
            x = self.bn0(x.transpose(1, 3)).transpose(1, 3)  # (B, 1, T, M)
        if self.mcu:
            x = x.clamp(-INPUT_CLIP, INPUT_CLIP)
        x = super().forward(x)  # (B, C, T/32, M/32)
        x = self.pn_block(x)  # (B, 2048, T/64, M/64)
        return x.mean((-1, -2))  # (B, 2048)


class TinyCLAPStudent(nn.Module):
    """A student audio encoder: forward((B, T, n_mels) log-mel) -> (B, embed_dim) shared-space embedding.

    The output is NOT L2-normalised (it is the projection head's LayerNorm output, like CLAP's audio
    embedding before normalisation, and what distillation trains): `encode(logmel, normalize=True)` or
    `tinyclap.models.StudentEmbedder` normalise it for cosine similarity and zero-shot classification.
    `embed_dim` < 1024 gives a physically smaller projection (pruning); the base encoder is unchanged.
    `config()` holds everything `TinyCLAPStudent(**config)` needs.
    """

    def __init__(self, name: str, *, embed_dim: int = SHARED_EMBED_DIM, n_mels: int = N_MELS) -> None:
        super().__init__()
        name = resolve_preset(name)
        if embed_dim < 1:
            raise ValueError(f"student {name!r}: embed_dim must be >= 1, got {embed_dim}")
        self.spec: StudentSpec | None
        features = AUDIO_EMBED_DIM
        if name == CNN14_NAME:
            self.spec = None
            self.base: nn.Module = Cnn14(n_mels=n_mels, classes=527)
        else:
            self.spec = parse_student_name(name)
            features = self.spec.features if isinstance(self.spec, McuSpec) else features
            self.base = PhiNetAudioEncoder(self.spec, n_mels=n_mels, embedding_dim=features)
        self.name = name
        self.embed_dim = int(embed_dim)
        self.n_mels = int(n_mels)
        self.features_dim = features
        head = McuProjection if isinstance(self.spec, McuSpec) else Projection
        self.projection = head(features, self.embed_dim)

    def config(self) -> dict[str, Any]:
        """JSON-able constructor arguments: `TinyCLAPStudent(**student.config())` rebuilds the model."""
        return {"name": self.name, "embed_dim": self.embed_dim, "n_mels": self.n_mels}

    def forward(self, logmel: torch.Tensor, windows: int = 1) -> torch.Tensor:  # (B, T, M) -> (B, embed_dim)
        """(B, T, n_mels) -> (B, embed_dim); with `windows=K` the rows are K consecutive windows of each of
        B / K clips, whose backbone features are averaged before the head runs once per clip -> (B / K, D)."""
        if logmel.dim() != 3 or logmel.shape[-1] != self.n_mels:
            raise ValueError(
                f"student {self.name!r} expects a log-mel of shape (B, T, {self.n_mels}), "
                f"got {tuple(logmel.shape)}"
            )
        feats = self.features(logmel)  # (B, 2048)
        if windows != 1:
            feats = feats.reshape(-1, windows, feats.shape[-1]).mean(1)  # (B / K, 2048)
        return self.head(feats)  # (B / K, embed_dim)

    def features(self, logmel: torch.Tensor) -> torch.Tensor:
        """(B, T, n_mels) log-mel -> (B, 2048) pooled backbone features (`base`), before the head."""
        return self.base(logmel)

    def head(self, features: torch.Tensor) -> torch.Tensor:
        """(B, 2048) backbone features (one window's, or the mean over a clip's windows) -> (B, embed_dim)."""
        return self.projection(features)

    def encode(self, logmel: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        """(B, T, n_mels) -> (B, embed_dim): `forward`, L2-normalised when `normalize=True`."""
        emb = self(logmel)
        return torch.nn.functional.normalize(emb, dim=-1) if normalize else emb


def create_student(name: str, *, embed_dim: int = SHARED_EMBED_DIM, n_mels: int = N_MELS) -> TinyCLAPStudent:
    """Build a (randomly initialised) student by name: 'cnn14', any valid PhiNet or MCU name, or an MCU preset
    (`mcu-s`: its student's name is recorded; see module doc)."""
    return TinyCLAPStudent(name, embed_dim=embed_dim, n_mels=n_mels)


def count_params(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameters (shared ones once; buffers such as BN running statistics not included)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def count_macs(model: nn.Module, n_frames: int = 690, n_mels: int | None = None) -> int:
    """Multiply-accumulates of one forward pass on a single (1, n_frames, n_mels) log-mel.

    690 frames is a 5 s clip (44.1 kHz, hop 320). Counted with forward hooks on convolutions and linear
    layers only: a conv costs out_elements * in_channels/groups * kernel_area, a linear layer
    out_elements * in_features. Biases, BatchNorm/LayerNorm, activations, pooling, means and residual adds
    are not counted (they are cheap element-wise work, and BN folds into the convs at deployment).
    Modules the forward pass does not call (e.g. Cnn14's AudioSet head) cost nothing.
    """
    if n_mels is None:
        n_mels = int(getattr(model, "n_mels", N_MELS))
    total = 0

    def hook(mod: nn.Module, inputs: tuple[torch.Tensor, ...], out: torch.Tensor) -> None:
        nonlocal total
        if isinstance(mod, nn.modules.conv._ConvNd):
            k = 1
            for s in mod.kernel_size:
                k *= s
            total += out.numel() * (mod.in_channels // mod.groups) * k
        elif isinstance(mod, nn.Linear):
            total += out.numel() * mod.in_features

    counted = (nn.modules.conv._ConvNd, nn.Linear)
    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, counted)]
    param = next(model.parameters(), None)
    kw: dict[str, Any] = {} if param is None else {"device": param.device, "dtype": param.dtype}
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            model(torch.zeros(1, n_frames, n_mels, **kw))
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()
    return int(total)
