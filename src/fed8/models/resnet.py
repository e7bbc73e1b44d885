"""ResNet-20 for 32x32 images (He et al. 2016, arXiv:1512.03385, Sec. 4.2).

Three stages of three basic blocks with 16, 32 and 64 channels; shortcuts that
change shape use option A (stride-2 subsampling and zero-padded channels), so the
network has about 0.27 M parameters. ``norm="group"`` swaps BatchNorm for GroupNorm
with 2 groups (Hsieh et al. 2020, arXiv:1910.00189), which does not mix samples and
suits non-IID clients and differential privacy.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ParameterError

__all__ = ["ResNet20"]


def _norm(kind: str, channels: int) -> nn.Module:
    return nn.BatchNorm2d(channels) if kind == "batch" else nn.GroupNorm(2, channels)


class _Block(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, norm: str) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.n1 = _norm(norm, cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.n2 = _norm(norm, cout)
        self.pad = cout - cin
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.n1(self.conv1(x)))
        out = self.n2(self.conv2(out))
        short = x
        if self.stride != 1 or self.pad:
            short = x[:, :, :: self.stride, :: self.stride]
            short = F.pad(short, (0, 0, 0, 0, self.pad // 2, self.pad - self.pad // 2))
        return F.relu(out + short)


class ResNet20(nn.Module):
    """conv3x3(16) -> 3x[16] -> 3x[32, /2] -> 3x[64, /2] -> global average pool -> fc(classes)."""

    def __init__(self, in_channels: int, height: int, width: int, num_classes: int, norm: str = "batch") -> None:
        super().__init__()
        if norm not in ("batch", "group"):
            raise ParameterError(f"norm must be 'batch' or 'group'; got {norm!r}.")
        self.conv = nn.Conv2d(in_channels, 16, 3, 1, 1, bias=False)
        self.norm = _norm(norm, 16)
        blocks, cin = [], 16
        for cout, stride in ((16, 1), (32, 2), (64, 2)):
            for i in range(3):
                blocks.append(_Block(cin, cout, stride if i == 0 else 1, norm))
                cin = cout
        self.blocks = nn.Sequential(*blocks)
        self.fc = nn.Linear(64, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.blocks(F.relu(self.norm(self.conv(x))))  # [N, 64, H/4, W/4]
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))
