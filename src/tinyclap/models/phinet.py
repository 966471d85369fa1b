"""PhiNet (Paissan et al., ACM TECS 2022, https://doi.org/10.1145/3510832), the tinyCLAP students' backbone.

Our own implementation, written to be numerically and state-dict compatible with micromind 0.2.1's
`micromind/networks/phinet.py` (followed for the architecture and its quirks; no code copied), so that
tinyCLAP checkpoints trained with micromind load here as they are (keys `_layers.*`, plus `classifier.*`
with `include_top=True`). micromind is not a dependency.

Layout (`pool=False`, the tinyCLAP setting):

    _layers.0   ZeroPad2d                      # padding chosen from input_shape (see `stem_padding`)
    _layers.1   SeparableConv2d                # 3x3 depthwise (stride 2) + 1x1 + BN + act
    _layers.2   PhiNetConvBlock  (block 1)     # no expansion conv, never squeeze-excite
    _layers.3   PhiNetConvBlock  (block 2)     # stride 2
    _layers.4   PhiNetConvBlock  (block 3)
    _layers.5   PhiNetConvBlock  (block 4)     # stride 2, 48 * alpha channels
    _layers.6.. PhiNetConvBlock  (blocks 4..num_layers)  # stride 2 and doubled width at `downsampling_layers`

Not supported (unused by tinyCLAP): micromind's `conv2d_input` stem and `return_layers`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

# Hard-coded widths of the stem and the first blocks (before the alpha width multiplier), as in micromind.
FIRST_CONV_FILTERS = 48
B1_FILTERS = 24
B2_FILTERS = 48
# All PhiNet batch norms use these (Keras-style) settings; PyTorch momentum 0.999 means the running
# statistics are almost replaced by each batch's, which matters for BN-statistics parity in training.
BN_EPS = 1e-3
BN_MOMENTUM = 0.999


def make_divisible(v: float, divisor: int = 8, min_value: int | None = None) -> int:
    """Round `v` to the nearest multiple of `divisor` (at least `min_value`), never 10 % below `v`.

    The MobileNet rule; with `divisor=1` (PhiNet's default) it is the identity on ints.
    """
    if min_value is None:
        min_value = divisor
    new_v = max(min_value, int(v + divisor / 2) // divisor * divisor)
    if new_v < 0.9 * v:
        new_v += divisor
    return new_v


def stem_padding(res: int, kernel_size: int = 3) -> tuple[int, int, int, int]:
    """Zero padding (left, right, top, bottom) before the stride-2 stem, as Keras' `correct_pad`.

    micromind decides it from the largest side of `input_shape` only: an even side gets one extra
    column/row on the right/bottom (`(0, 1, 0, 1)` for 3x3), an odd one symmetric padding.
    """
    adjust = 1 - res % 2
    half = kernel_size // 2
    return (half - adjust, half, half - adjust, half)


def expansion_factor(t_zero: float, beta: float, block_id: int, num_blocks: int) -> float:
    """PhiNet's expansion factor t(block): linear from `t_zero` (first block) to `t_zero * beta` (last).

    The operation order is kept exactly as micromind's so that int() of the expanded width agrees bit for bit.
    """
    return (t_zero * beta) * block_id / num_blocks + t_zero * (num_blocks - block_id) / num_blocks


class ClippedReLU(nn.Module):
    """min(max(x, 0), max_value): ReLU6 for `max_value=6` (compatibility mode's activation)."""

    def __init__(self, max_value: float = 6.0) -> None:
        super().__init__()
        self.max_value = max_value

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # clamp (not hardtanh) so that gradients at the boundaries match micromind's ReLUMax too
        return torch.clamp(x, min=0, max=self.max_value)

    def extra_repr(self) -> str:
        return f"max_value={self.max_value}"


def _activation(h_swish: bool) -> nn.Module:
    # a fresh module per use: Module.children()/named_modules() would otherwise hide repeated ones
    return nn.Hardswish() if h_swish else ClippedReLU(6.0)


def _bn(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, eps=BN_EPS, momentum=BN_MOMENTUM)


class SqueezeExcite(nn.Module):
    """Squeeze-and-excitation: x * sigmoid(conv2(act(conv1(avgpool(x))))). Keys: se_conv, se_conv2."""

    def __init__(self, channels: int, reduced: int, h_swish: bool = True) -> None:
        super().__init__()
        self.se_conv = nn.Conv2d(channels, reduced, kernel_size=1, bias=False)
        self.se_conv2 = nn.Conv2d(reduced, channels, kernel_size=1, bias=False)
        self.activation = _activation(h_swish)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, H, W) -> (B, C, H, W)
        s = F.adaptive_avg_pool2d(x, (1, 1))  # (B, C, 1, 1)
        s = torch.sigmoid(self.se_conv2(self.activation(self.se_conv(s))))
        return x * s


class SeparableConv2d(nn.Module):
    """PhiNet's stem: 3x3 depthwise conv -> 1x1 conv -> BN -> activation, in `_layers` (keys 0, 1, 2)."""

    def __init__(
        self, in_channels: int, out_channels: int, activation: nn.Module, stride: int = 1, bias: bool = True
    ) -> None:
        super().__init__()
        self._layers = nn.ModuleList(
            [
                nn.Conv2d(in_channels, in_channels, 3, stride=stride, groups=in_channels, bias=bias),
                nn.Conv2d(in_channels, out_channels, 1, bias=bias),
                _bn(out_channels),
                activation,
            ]
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self._layers:
            x = layer(x)
        return x


class PhiNetConvBlock(nn.Module):
    """Inverted residual block: [1x1 expand -> BN -> act] -> dropout -> kxk depthwise -> BN -> act
    -> [squeeze-excite] -> 1x1 project -> BN, plus the identity when shapes allow (and `res`).

    The expansion part exists only for `expand=True` (micromind: a truthy `block_id`), i.e. not for block 1.
    """

    def __init__(
        self,
        in_channels: int,
        filters: int,
        *,
        expansion: float,
        stride: int,
        expand: bool,
        has_se: bool,
        res: bool = True,
        h_swish: bool = True,
        k_size: int = 3,
        dp_rate: float = 0.05,
        divisor: int = 1,
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        if expand:
            hidden = make_divisible(int(expansion * in_channels), divisor=divisor)
            layers += [nn.Conv2d(in_channels, hidden, 1, bias=False), _bn(hidden), _activation(h_swish)]
        else:
            hidden = in_channels
        # micromind pads a stride-2 depthwise conv by 1 on each side whatever the kernel size
        padding = k_size // 2 if stride == 1 else 1
        layers += [
            nn.Dropout2d(dp_rate),
            nn.Conv2d(hidden, hidden, k_size, stride=stride, padding=padding, groups=hidden, bias=False),
            _bn(hidden),
            _activation(h_swish),
        ]
        if has_se:
            reduced = make_divisible(max(1, int(hidden / 6)), divisor=divisor)
            layers.append(SqueezeExcite(hidden, reduced, h_swish=h_swish))
        layers += [nn.Conv2d(hidden, filters, 1, bias=False), _bn(filters)]
        self._layers = nn.ModuleList(layers)
        self.skip_conn = bool(res and in_channels == filters and stride == 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C_in, H, W) -> (B, filters, H', W')
        inp = x
        for layer in self._layers:
            x = layer(x)
        return x + inp if self.skip_conn else x


@dataclass(frozen=True)
class _Plan:
    """The PhiNet arguments the block builders need (see `PhiNet`)."""

    num_layers: int
    alpha: float
    beta: float
    t_zero: float
    pool: bool
    squeeze_excite: bool
    downsampling_layers: tuple[int, ...]
    conv5_percent: float
    block_kw: dict[str, Any]  # res, h_swish, divisor: passed to every PhiNetConvBlock

    def width(self, filters: float) -> int:
        return make_divisible(int(filters * self.alpha), divisor=self.block_kw["divisor"])

    def block(self, c_in: int, c_out: int, block_id: int, stride: int, k_size: int = 3) -> PhiNetConvBlock:
        """Block `block_id` >= 1 (with expansion, squeeze-excite when enabled)."""
        return PhiNetConvBlock(
            c_in, c_out, expansion=expansion_factor(self.t_zero, self.beta, block_id, self.num_layers),
            stride=stride, expand=True, has_se=self.squeeze_excite, k_size=k_size, **self.block_kw,
        )


def _first_blocks(plan: _Plan, input_shape: Sequence[int], first_conv_stride: int) -> tuple[list[nn.Module], int]:
    """Padding, stem and the blocks of fixed width (`_layers.0` to `_layers.5`); returns them and their width."""
    c_stem, c1, c2 = plan.width(FIRST_CONV_FILTERS), plan.width(B1_FILTERS), plan.width(B2_FILTERS)
    down = 1 if plan.pool else 2  # with pool=True, max pooling does the downsampling instead of strides
    h_swish = plan.block_kw["h_swish"]
    layers: list[nn.Module] = [
        nn.ZeroPad2d(stem_padding(max(input_shape[1], input_shape[2]), 3)),
        SeparableConv2d(input_shape[0], c_stem, _activation(h_swish), stride=first_conv_stride, bias=False),
        PhiNetConvBlock(c_stem, c1, expansion=1, stride=1, expand=False, has_se=False, **plan.block_kw),
        plan.block(c1, c1, 1, stride=down),
    ]
    # micromind reuses one MaxPool2d object; it has no state, so separate ones are equivalent
    if plan.pool:
        layers.append(nn.MaxPool2d((2, 2)))
    layers += [plan.block(c1, c1, 2, stride=1), plan.block(c1, c2, 3, stride=down)]
    if plan.pool:
        layers.append(nn.MaxPool2d((2, 2)))
    return layers, c2


def _later_blocks(plan: _Plan, in_channels: int) -> tuple[list[nn.Module], int]:
    """Blocks 4..num_layers (doubling the width at `downsampling_layers`); returns them and the final width."""
    layers: list[nn.Module] = []
    block_filters = B2_FILTERS
    for block_id in range(4, plan.num_layers + 1):
        downsample = block_id in plan.downsampling_layers
        if downsample:
            block_filters *= 2
            if plan.pool:
                layers.append(nn.MaxPool2d((2, 2)))
        k_size = 5 if block_id / plan.num_layers > 1 - plan.conv5_percent else 3
        stride = 2 if downsample and not plan.pool else 1
        layers.append(plan.block(in_channels, plan.width(block_filters), block_id, stride, k_size))
        in_channels = plan.width(block_filters)
    return layers, in_channels


class PhiNet(nn.Module):
    """PhiNet backbone; forward (B, C, H, W) -> (B, C_out, H / 2**k, W / 2**k) features (or logits with
    `include_top`). Arguments and defaults follow micromind 0.2.1's `PhiNet`.

    `input_shape` (C, H, W): C is the number of input channels; H and W only choose the stem padding
    (see `stem_padding`), the network itself accepts any spatial size. tinyCLAP uses (1, 640, 64).
    `compatibility=True` turns off Hardswish (-> ReLU6) and squeeze-excite, as tinyCLAP does.
    `out_channels` is the width of the last block.
    """

    def __init__(
        self,
        input_shape: Sequence[int],
        num_layers: float = 7,
        alpha: float = 0.2,
        beta: float = 1.0,
        t_zero: float = 6,
        include_top: bool = False,
        num_classes: int = 10,
        compatibility: bool = False,
        downsampling_layers: Sequence[int] = (5, 7),
        conv5_percent: float = 0.0,
        first_conv_stride: int = 2,
        residuals: bool = True,
        pool: bool = False,
        h_swish: bool = True,
        squeeze_excite: bool = True,
        divisor: int = 1,
    ) -> None:
        super().__init__()
        if len(input_shape) != 3:
            raise ValueError(f"PhiNet: input_shape must be (C, H, W), got {tuple(input_shape)}")
        if compatibility:  # operations that are hard on some microcontroller runtimes
            h_swish, squeeze_excite = False, False
        self.input_shape = tuple(input_shape)
        self.alpha, self.beta, self.t_zero = alpha, beta, t_zero
        self.num_layers = num_layers
        self.num_classes = num_classes
        self.classify = include_top
        plan = _Plan(
            num_layers=round(num_layers),  # tinyCLAP passes floats parsed from the model name
            alpha=alpha, beta=beta, t_zero=t_zero, pool=pool, squeeze_excite=squeeze_excite,
            downsampling_layers=tuple(downsampling_layers), conv5_percent=conv5_percent,
            block_kw=dict(res=residuals, h_swish=h_swish, divisor=divisor),
        )
        layers, c2 = _first_blocks(plan, input_shape, first_conv_stride)
        later, in_channels = _later_blocks(plan, c2)
        self._layers = nn.ModuleList(layers + later)
        self.out_channels = in_channels

        if include_top:
            self.classifier = nn.Sequential(
                nn.AdaptiveAvgPool2d((1, 1)), nn.Flatten(), nn.Linear(in_channels, num_classes, bias=True)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, H, W) -> (B, C_out, H', W') or (B, classes)
        for layer in self._layers:
            x = layer(x)
        if self.classify:
            x = self.classifier(x)
        return x
