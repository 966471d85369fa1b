"""PANNs Cnn14, the audio tower of the MS CLAP 2022 teacher, fed with a precomputed log-mel.

Follows the architecture of Kong et al., "PANNs" (2020) as msclap 1.3.x uses it (`msclap/models/audio.py`,
microsoft/CLAP): no weight-init routine (PyTorch defaults, like msclap), average pooling, dropout 0.2
between blocks, max+mean over time. The STFT/log-mel front end lives in `tinyclap.audio.frontend.LogMel` instead
of inside the network, and SpecAugment is left out (tinyclap never augments inside the model). Parameter
and buffer names equal msclap's, minus `spectrogram_extractor.*` / `logmel_extractor.*`, so official
checkpoints load as they are.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

CNN14_CHANNELS: tuple[int, ...] = (64, 128, 256, 512, 1024, 2048)


class ConvBlock(nn.Module):
    """Two 3x3 convolutions (no bias) each followed by BatchNorm and ReLU, then average pooling."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1, bias=False)
        self.conv2 = nn.Conv2d(out_channels, out_channels, kernel_size=3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.bn2 = nn.BatchNorm2d(out_channels)

    def forward(self, x: torch.Tensor, pool: int) -> torch.Tensor:  # (B, C, T, F) -> (B, C', T/pool, F/pool)
        x = F.relu(self.bn1(self.conv1(x)))
        x = F.relu(self.bn2(self.conv2(x)))
        return F.avg_pool2d(x, kernel_size=pool) if pool > 1 else x


class Cnn14(nn.Module):
    """Cnn14 on a log-mel spectrogram: forward((B, T, n_mels)) -> (B, embed_dim) clip embedding.

    The embedding is ReLU(fc1(.)), i.e. msclap's `embedding` output in eval mode. `fc_audioset` (the AudioSet
    tagging head) is unused by `forward` and kept only so that checkpoints keep their keys; see `classify`.
    `channels` may be shrunk (e.g. (8, 16, 32, 64, 64, 64)) for fast tests; the default is the real network.
    """

    def __init__(
        self,
        channels: Sequence[int] = CNN14_CHANNELS,
        n_mels: int = 64,
        classes: int = 527,
        embed_dim: int | None = None,
    ) -> None:
        super().__init__()
        channels = tuple(int(c) for c in channels)
        if len(channels) != 6:
            raise ValueError(f"Cnn14 needs 6 block widths, got {channels}")
        if n_mels < 32:
            # five 2x2 poolings: fewer than 32 bins would pool the mel axis away
            raise ValueError(f"Cnn14 needs at least 32 mel bins, got n_mels={n_mels}")
        self.channels = channels
        self.n_mels = n_mels
        self.classes = classes
        self.embed_dim = channels[-1] if embed_dim is None else int(embed_dim)

        self.bn0 = nn.BatchNorm2d(n_mels)  # per-mel-bin normalisation of the input
        widths = (1, *channels)
        for i in range(6):
            self.add_module(f"conv_block{i + 1}", ConvBlock(widths[i], widths[i + 1]))
        self.fc1 = nn.Linear(channels[-1], self.embed_dim, bias=True)
        self.fc_audioset = nn.Linear(self.embed_dim, classes, bias=True)

    @property
    def blocks(self) -> list[ConvBlock]:
        return [getattr(self, f"conv_block{i + 1}") for i in range(6)]

    def features(self, logmel: torch.Tensor) -> torch.Tensor:  # (B, T, n_mels) -> (B, embed_dim)
        if logmel.dim() != 3 or logmel.shape[-1] != self.n_mels:
            raise ValueError(
                f"Cnn14 expects a log-mel of shape (B, T, {self.n_mels}), got {tuple(logmel.shape)}"
            )
        if logmel.shape[1] < 32:
            # five 2x2 poolings need 32 frames (about 0.23 s at 44.1 kHz, hop 320)
            raise ValueError(f"Cnn14 needs at least 32 log-mel frames, got {logmel.shape[1]}")
        # BatchNorm2d over the mel axis: put mels on the channel axis and back, as PANNs does
        x = logmel.unsqueeze(1)  # (B, 1, T, M)
        x = self.bn0(x.transpose(1, 3)).transpose(1, 3)  # (B, 1, T, M)
        for i, block in enumerate(self.blocks):
            x = block(x, pool=2 if i < 5 else 1)  # last block: 1x1 pooling, i.e. none
            x = F.dropout(x, p=0.2, training=self.training)
        # x: (B, C, T/32, M/32)
        x = x.mean(dim=3)  # (B, C, T') average over mels
        x = x.amax(dim=2) + x.mean(dim=2)  # (B, C) max + mean over time
        x = F.dropout(x, p=0.5, training=self.training)
        return F.relu(self.fc1(x))  # (B, embed_dim)

    def forward(self, logmel: torch.Tensor) -> torch.Tensor:  # (B, T, n_mels) -> (B, embed_dim)
        # msclap applies one more dropout(0.5) to its 'embedding' output; it only matters in training mode
        return F.dropout(self.features(logmel), p=0.5, training=self.training)

    def classify(self, logmel: torch.Tensor) -> torch.Tensor:  # (B, T, n_mels) -> (B, classes)
        """AudioSet tag probabilities (msclap's `clipwise_output`)."""
        return torch.sigmoid(self.fc_audioset(self.features(logmel)))
