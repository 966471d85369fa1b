"""Building blocks shared by the teacher and the students."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class Projection(nn.Module):
    """MS CLAP's projection head into the shared space.

    linear1 (no bias) -> GELU -> linear2 (no bias) -> dropout -> + linear1's output -> LayerNorm.
    Attribute names (`linear1`, `linear2`, `layer_norm`) match msclap so its checkpoints load as they are.
    """

    def __init__(self, d_in: int, d_out: int, p: float = 0.5) -> None:
        super().__init__()
        self.linear1 = nn.Linear(d_in, d_out, bias=False)
        self.linear2 = nn.Linear(d_out, d_out, bias=False)
        self.layer_norm = nn.LayerNorm(d_out)
        self.drop = nn.Dropout(p)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, d_in) -> (B, d_out)
        embed1 = self.linear1(x)
        embed2 = self.drop(self.linear2(F.gelu(embed1)))
        return self.layer_norm(embed1 + embed2)
