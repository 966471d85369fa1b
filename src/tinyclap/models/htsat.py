"""HTS-AT (Chen et al., ICASSP 2022): the Swin-transformer audio tower of MS CLAP 2023.

Written from the paper and from what msclap 1.3's `HTSATWrapper` computes at inference, with its module and
tensor names (`bn0`, `patch_embed`, `layers.I.blocks.J`, `layers.I.downsample`, `norm`, `tscam_conv`,
`head`) so the official state dict loads as it is. What the CLAP embedding uses:

1. the log-mel (B, T, n_mels) is batch-normalised per mel band (`bn0`);
2. it becomes a square "image": T is stretched (bicubic, corners aligned) to `spec_size * freq_ratio`
   frames, cut into `freq_ratio` time chunks that are stacked along the mel axis -> (B, 1, spec, spec);
   longer inputs are cut into overlapping crops whose latents are averaged (msclap's eval path);
3. 4x4 patches, four Swin stages (shifted 8x8 windows, patch merging between stages), a final LayerNorm;
4. the latent is the mean over all tokens (msclap's `latent_output`).

The token-semantic head (`tscam_conv`, `head`) gives AudioSet tags only: it is kept so checkpoints load
strictly, but never runs. The relative-position indices and shift masks are recomputed here (non-persistent
buffers), so those saved in official files are known extras.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from tinyclap._util import dataclass_kwargs

# tensors that msclap's HTSAT saves but that are derived from the config (recomputed here)
DERIVED_SUFFIXES = (".relative_position_index", ".attn_mask")
MAX_SIZE = 1 << 14  # bound on every size of a config read from a file (full size: 768 wide, 1024 frames)


@dataclass(frozen=True)
class HTSATConfig:
    """The sizes of an HTS-AT; the defaults are msclap's (HTSAT-tiny: 96 wide, depths 2-2-6-2, 28 M weights)."""

    spec_size: int = 256  # the square image side
    patch: int = 4  # patch size and stride
    dim: int = 96  # patch embedding width; doubles at every stage
    depths: tuple[int, ...] = (2, 2, 6, 2)
    heads: tuple[int, ...] = (4, 8, 16, 32)
    window: int = 8
    mlp_ratio: float = 4.0
    n_mels: int = 64
    classes: int = 527  # AudioSet head, unused by the embedding but part of the checkpoint

    @property
    def freq_ratio(self) -> int:
        return self.spec_size // self.n_mels

    @property
    def width(self) -> int:
        """The latent width: `dim * 2 ** (stages - 1)` (768 at full size)."""
        return self.dim * 2 ** (len(self.depths) - 1)

    @property
    def frames(self) -> int:
        """Log-mel frames of one image (1024 at full size); longer inputs are cropped and averaged."""
        return self.spec_size * self.freq_ratio

    def validate(self) -> None:
        stages = len(self.depths)
        ints = {"spec_size": self.spec_size, "patch": self.patch, "dim": self.dim, "window": self.window,
                "n_mels": self.n_mels, "classes": self.classes, **{f"depth{i}": d for i, d in enumerate(self.depths)},
                **{f"heads{i}": h for i, h in enumerate(self.heads)}}
        bad = {k: v for k, v in ints.items() if not isinstance(v, int) or not 1 <= v <= MAX_SIZE}
        if bad or not 1 <= stages <= 8 or len(self.heads) != stages:
            raise ValueError(f"HTSAT sizes out of range (1..{MAX_SIZE}, 1..8 stages, one head count each): {bad}")
        if not 0 < self.mlp_ratio <= 64:
            raise ValueError(f"HTSAT mlp_ratio must be in (0, 64], got {self.mlp_ratio}")
        if self.spec_size % self.n_mels or self.spec_size < self.n_mels:
            raise ValueError(f"HTSAT spec_size {self.spec_size} must be a multiple of n_mels {self.n_mels}")
        grid = self.spec_size // self.patch
        if self.spec_size % self.patch or grid % 2 ** (stages - 1):
            raise ValueError(f"HTSAT patch grid {self.spec_size}/{self.patch} must halve {stages - 1} times")
        for i, h in enumerate(self.heads):
            if (self.dim * 2**i) % h:
                raise ValueError(f"HTSAT stage {i}: width {self.dim * 2**i} is not divisible by {h} heads")
        if self.freq_ratio > 1 and (grid // 2 ** (stages - 1)) % self.freq_ratio:
            raise ValueError("HTSAT last grid must split into freq_ratio bands (spec_size too small)")

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        return {**d, "depths": list(self.depths), "heads": list(self.heads)}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> HTSATConfig:
        d = dataclass_kwargs(cls, d)
        for key in ("depths", "heads"):
            if key in d:
                d[key] = tuple(int(v) for v in d[key])
        return cls(**d)


def relative_index(window: int) -> torch.Tensor:
    """(w*w, w*w) index into the (2w-1)^2 relative-position table: row offset * (2w-1) + column offset."""
    rows, cols = torch.meshgrid(torch.arange(window), torch.arange(window), indexing="ij")
    rows, cols = rows.flatten(), cols.flatten()
    dr = rows[:, None] - rows[None, :] + window - 1
    dc = cols[:, None] - cols[None, :] + window - 1
    return dr * (2 * window - 1) + dc


def to_windows(x: torch.Tensor, w: int) -> torch.Tensor:
    """(B, H, W, C) -> (B * H/w * W/w, w*w, C), windows in row-major order."""
    b, h, wd, c = x.shape
    x = x.view(b, h // w, w, wd // w, w, c).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(-1, w * w, c)


def from_windows(x: torch.Tensor, w: int, h: int, wd: int) -> torch.Tensor:
    """Inverse of `to_windows`: (B * h/w * wd/w, w*w, C) -> (B, h, wd, C)."""
    c = x.shape[-1]
    x = x.view(-1, h // w, wd // w, w, w, c).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(-1, h, wd, c)


def shift_mask(size: int, window: int, shift: int) -> torch.Tensor:
    """(windows, w*w, w*w) additive mask of a cyclically shifted grid: -100 between tokens that came from
    different regions of the unshifted grid (they must not attend to each other), 0 elsewhere."""
    edges = (0, size - window, size - shift, size)
    region = torch.zeros(size, dtype=torch.long)
    for i in range(3):
        region[edges[i]:edges[i + 1]] = i
    labels = (region[:, None] * 3 + region[None, :]).float()[None, :, :, None]  # (1, H, W, 1)
    labels = to_windows(labels, window)[..., 0]  # (windows, w*w)
    differs = labels[:, None, :] != labels[:, :, None]
    return torch.zeros(differs.shape).masked_fill(differs, -100.0)


class WindowAttention(nn.Module):
    """Multi-head self-attention inside each window, with a learned bias per relative position and head."""

    def __init__(self, dim: int, window: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.scale = (dim // heads) ** -0.5
        self.relative_position_bias_table = nn.Parameter(torch.zeros((2 * window - 1) ** 2, heads))
        self.register_buffer("relative_position_index", relative_index(window), persistent=False)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:  # (nW*B, N, C), (nW, N, N)
        b, n, c = x.shape
        q, k, v = self.qkv(x).view(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        scores = (q * self.scale) @ k.transpose(-2, -1)  # (nW*B, heads, N, N)
        bias = self.relative_position_bias_table[self.relative_position_index.view(-1)]
        scores = scores + bias.view(n, n, self.heads).permute(2, 0, 1)[None]
        if mask is not None:
            windows = mask.shape[0]
            scores = (scores.view(b // windows, windows, self.heads, n, n) + mask[None, :, None]).view(b, -1, n, n)
        out = scores.softmax(dim=-1) @ v  # (nW*B, heads, N, C/heads)
        return self.proj(out.transpose(1, 2).reshape(b, n, c))


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class SwinBlock(nn.Module):
    """LayerNorm -> (shifted) window attention -> residual; LayerNorm -> MLP -> residual, on a size x size grid."""

    def __init__(self, dim: int, size: int, heads: int, window: int, shift: int, mlp_ratio: float) -> None:
        super().__init__()
        if size <= window:  # the grid fits one window: no partition, no shift
            window, shift = size, 0
        self.size, self.window, self.shift = size, window, shift
        self.norm1 = nn.LayerNorm(dim)
        self.attn = WindowAttention(dim, window, heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        mask = shift_mask(size, window, shift) if shift else None
        self.register_buffer("attn_mask", mask, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, size*size, C)
        b, _, c = x.shape
        s, w = self.size, self.window
        h = self.norm1(x).view(b, s, s, c)
        if self.shift:
            h = torch.roll(h, shifts=(-self.shift, -self.shift), dims=(1, 2))
        h = from_windows(self.attn(to_windows(h, w), self.attn_mask), w, s, s)
        if self.shift:
            h = torch.roll(h, shifts=(self.shift, self.shift), dims=(1, 2))
        x = x + h.reshape(b, s * s, c)
        return x + self.mlp(self.norm2(x))


class PatchMerging(nn.Module):
    """2x2 neighbouring tokens concatenated (4C), normalised and projected to 2C: the grid halves."""

    def __init__(self, dim: int, size: int) -> None:
        super().__init__()
        self.size = size
        self.norm = nn.LayerNorm(4 * dim)
        self.reduction = nn.Linear(4 * dim, 2 * dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, size*size, C) -> (B, size*size/4, 2C)
        b, _, c = x.shape
        x = x.view(b, self.size, self.size, c)
        x = torch.cat([x[:, 0::2, 0::2], x[:, 1::2, 0::2], x[:, 0::2, 1::2], x[:, 1::2, 1::2]], dim=-1)
        return self.reduction(self.norm(x.view(b, -1, 4 * c)))


class Stage(nn.Module):
    def __init__(self, cfg: HTSATConfig, i: int, size: int) -> None:
        super().__init__()
        dim = cfg.dim * 2**i
        self.blocks = nn.ModuleList(
            SwinBlock(dim, size, cfg.heads[i], cfg.window, 0 if j % 2 == 0 else cfg.window // 2, cfg.mlp_ratio)
            for j in range(cfg.depths[i])
        )
        self.downsample = PatchMerging(dim, size) if i < len(cfg.depths) - 1 else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = block(x)
        return x if self.downsample is None else self.downsample(x)


class PatchEmbed(nn.Module):
    def __init__(self, cfg: HTSATConfig) -> None:
        super().__init__()
        self.proj = nn.Conv2d(1, cfg.dim, kernel_size=cfg.patch, stride=cfg.patch)
        self.norm = nn.LayerNorm(cfg.dim)

    def forward(self, image: torch.Tensor) -> torch.Tensor:  # (B, 1, S, S) -> (B, (S/p)^2, dim)
        return self.norm(self.proj(image).flatten(2).transpose(1, 2))


class HTSAT(nn.Module):
    """Log-mel (B, T, n_mels) -> latent (B, width): the mean token of the last Swin stage."""

    def __init__(self, cfg: HTSATConfig | None = None) -> None:
        super().__init__()
        cfg = HTSATConfig() if cfg is None else cfg
        cfg.validate()
        self.cfg = cfg
        grid = cfg.spec_size // cfg.patch
        self.bn0 = nn.BatchNorm2d(cfg.n_mels)
        self.patch_embed = PatchEmbed(cfg)
        self.layers = nn.ModuleList(Stage(cfg, i, grid // 2**i) for i in range(len(cfg.depths)))
        self.norm = nn.LayerNorm(cfg.width)
        bands = grid // 2 ** (len(cfg.depths) - 1) // cfg.freq_ratio
        self.tscam_conv = nn.Conv2d(cfg.width, cfg.classes, kernel_size=(bands, 3), padding=(0, 1))  # tags only
        self.head = nn.Linear(cfg.classes, cfg.classes)  # tags only

    def image(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 1, T, n_mels) with T <= frames -> (B, 1, spec, spec): time stretched, chunks stacked on mels."""
        cfg = self.cfg
        if x.shape[2] < cfg.frames:
            x = F.interpolate(x, (cfg.frames, x.shape[3]), mode="bicubic", align_corners=True)
        b = x.shape[0]
        x = x.transpose(2, 3).reshape(b, 1, cfg.n_mels, cfg.freq_ratio, cfg.spec_size)  # (B, 1, F, chunk, t)
        return x.transpose(2, 3).reshape(b, 1, cfg.spec_size, cfg.spec_size)

    def latent(self, image: torch.Tensor) -> torch.Tensor:  # (B, 1, S, S) -> (B, width)
        x = self.patch_embed(image)
        for stage in self.layers:
            x = stage(x)
        return self.norm(x).mean(dim=1)

    def forward(self, logmel: torch.Tensor) -> torch.Tensor:  # (B, T, n_mels) -> (B, width)
        x = self.bn0(logmel.transpose(1, 2)[..., None])[..., 0].transpose(1, 2)[:, None]  # (B, 1, T, F)
        frames = x.shape[2]
        if frames <= self.cfg.frames:
            return self.latent(self.image(x))
        # msclap's eval path for long inputs: crops of 689 frames every 344 (at full size), latents averaged
        crop, hop = 689 * self.cfg.frames // 1024, 344 * self.cfg.frames // 1024
        starts = range(0, frames - crop - 1, hop)
        return torch.stack([self.latent(self.image(x[:, :, s:s + crop])) for s in starts]).mean(dim=0)


def infer_htsat(state: Mapping[str, torch.Tensor], prefix: str, default: HTSATConfig) -> HTSATConfig:
    """The HTSAT sizes of a state dict under `prefix` (stages, depths, width, mels, classes from shapes);
    head counts and spec_size cannot be read from shapes and keep `default`'s (msclap's) values."""

    def shape(key: str) -> tuple[int, ...] | None:
        t = state.get(prefix + key)
        return tuple(t.shape) if isinstance(t, torch.Tensor) else None

    stages = sum(1 for i in range(8) if shape(f"layers.{i}.blocks.0.norm1.weight") is not None)
    depths = tuple(sum(1 for j in range(64) if shape(f"layers.{i}.blocks.{j}.norm1.weight") is not None)
                   for i in range(stages))
    proj = shape("patch_embed.proj.weight")
    if not stages or proj is None or len(proj) != 4:
        return default
    heads = default.heads if stages == len(default.heads) else tuple(default.heads[0] * 2**i for i in range(stages))
    n_mels = (shape("bn0.weight") or (default.n_mels,))[0]
    classes = (shape("head.weight") or (default.classes,))[0]
    return dataclasses.replace(default, dim=proj[0], patch=proj[-1], depths=depths, heads=heads,
                               n_mels=n_mels, classes=classes)
