"""CNN seed blueprints: modules mapping (B, C, H, W) -> (B, C, H, W) with C = dim.

Every seed starts as the exact identity (its last layer is zero-initialised), so
grafting a fresh seed into a host network does not change the host's function.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from esper.kasmina.blueprints.registry import BlueprintRegistry


def _zero_(layer: nn.Module) -> nn.Module:
    """Zero a layer's weight and bias so a residual branch starts at exactly 0."""
    for p in layer.parameters():
        nn.init.zeros_(p)
    return layer


class GroupNormSeed(nn.Module):
    """x + GroupNorm(x); the affine scale starts at zero, so the seed starts as identity."""

    def __init__(self, dim: int, groups: int | None = None) -> None:
        super().__init__()
        self.norm = _zero_(nn.GroupNorm(groups or math.gcd(dim, 8), dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.norm(x)


class SqueezeExciteSeed(nn.Module):
    """Channel attention: x * gate, gate = 2*sigmoid(z) in (0, 2), exactly 1 at init."""

    def __init__(self, dim: int, reduction: int = 4) -> None:
        super().__init__()
        hidden = max(dim // reduction, 1)
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = _zero_(nn.Linear(hidden, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.fc2(F.relu(self.fc1(x.mean(dim=(2, 3)))))
        return x * (2 * torch.sigmoid(z))[:, :, None, None]


class DepthwiseSeed(nn.Module):
    """x + pointwise(gelu(depthwise3x3(x))): spatial mixing per channel, then channel mixing."""

    def __init__(self, dim: int, kernel_size: int = 3) -> None:
        super().__init__()
        self.depthwise = nn.Conv2d(dim, dim, kernel_size, padding=kernel_size // 2, groups=dim)
        self.pointwise = _zero_(nn.Conv2d(dim, dim, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.pointwise(F.gelu(self.depthwise(x)))


class ConvLightSeed(nn.Module):
    """x + expand1x1(gelu(conv3x3 into a dim/reduction bottleneck))."""

    def __init__(self, dim: int, reduction: int = 4) -> None:
        super().__init__()
        hidden = max(dim // reduction, 1)
        self.conv = nn.Conv2d(dim, hidden, 3, padding=1)
        self.expand = _zero_(nn.Conv2d(hidden, dim, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.expand(F.gelu(self.conv(x)))


class ConvHeavySeed(nn.Module):
    """x + conv3x3(gelu(conv3x3(x))), both convolutions at full width."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(dim, dim, 3, padding=1)
        self.conv2 = _zero_(nn.Conv2d(dim, dim, 3, padding=1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv2(F.gelu(self.conv1(x)))


class InvertedBottleneckSeed(nn.Module):
    """MobileNetV2's inverted residual: x + project(dw3x3(expand1x1(x))), each inner conv
    followed by BatchNorm and ReLU6.

    Real capacity at a modest cost: the branch is `expansion` times wider than the
    host's features, and the 3x3 spatial mixing there is depthwise (9 weights per
    channel). The 1x1 projection back to `dim` starts at zero: identity at birth.
    """

    def __init__(self, dim: int, expansion: int = 4) -> None:
        super().__init__()
        if expansion < 1:
            raise ValueError(f"inverted_bottleneck needs expansion >= 1, got {expansion}")
        hidden = dim * expansion
        self.expand = nn.Conv2d(dim, hidden, 1, bias=False)
        self.norm1 = nn.BatchNorm2d(hidden)
        self.depthwise = nn.Conv2d(hidden, hidden, 3, padding=1, groups=hidden, bias=False)
        self.norm2 = nn.BatchNorm2d(hidden)
        self.project = _zero_(nn.Conv2d(hidden, dim, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu6(self.norm1(self.expand(x)))
        h = F.relu6(self.norm2(self.depthwise(h)))
        return x + self.project(h)


class ResidualBlockSeed(nn.Module):
    """ResNet's basic block as a residual branch: x + conv3x3(relu(bn(conv3x3(x)))), full width.

    Unlike `conv_heavy`, the first convolution is normalised, so a stack of these
    trains at the host's learning rate. The last convolution starts at zero.
    """

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(dim, dim, 3, padding=1, bias=False)
        self.norm = nn.BatchNorm2d(dim)
        self.conv2 = _zero_(nn.Conv2d(dim, dim, 3, padding=1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv2(F.relu(self.norm(self.conv1(x))))


# param_estimate: exact parameter counts at dim=64 with default options.


@BlueprintRegistry.register("norm", "cnn", 128, "Residual GroupNorm, identity at init")
def norm(dim: int, groups: int | None = None) -> nn.Module:
    return GroupNormSeed(dim, groups)


@BlueprintRegistry.register("attention", "cnn", 2_128, "Squeeze-and-excite channel gate")
def attention(dim: int, reduction: int = 4) -> nn.Module:
    return SqueezeExciteSeed(dim, reduction)


@BlueprintRegistry.register("depthwise", "cnn", 4_800, "Residual depthwise-separable conv")
def depthwise(dim: int, kernel_size: int = 3) -> nn.Module:
    return DepthwiseSeed(dim, kernel_size)


@BlueprintRegistry.register("conv_light", "cnn", 10_320, "Residual 3x3 conv, narrow bottleneck")
def conv_light(dim: int, reduction: int = 4) -> nn.Module:
    return ConvLightSeed(dim, reduction)


@BlueprintRegistry.register("conv_heavy", "cnn", 73_856, "Residual pair of full-width 3x3 convs")
def conv_heavy(dim: int) -> nn.Module:
    return ConvHeavySeed(dim)


@BlueprintRegistry.register(
    "inverted_bottleneck", "cnn", 36_160, "MobileNetV2 inverted residual, 4x wider inside"
)
def inverted_bottleneck(dim: int, expansion: int = 4) -> nn.Module:
    return InvertedBottleneckSeed(dim, expansion)


@BlueprintRegistry.register(
    "residual_block", "cnn", 73_920, "ResNet basic block (conv-BN-ReLU-conv), full width"
)
def residual_block(dim: int) -> nn.Module:
    return ResidualBlockSeed(dim)
