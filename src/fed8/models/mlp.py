"""The '2NN' multilayer perceptron of McMahan et al. 2017: two hidden ReLU layers."""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["MLP"]


class MLP(nn.Module):
    """flatten -> fc(hidden) -> ReLU -> fc(hidden) -> ReLU -> fc(classes)."""

    def __init__(self, in_channels: int, height: int, width: int, num_classes: int, hidden: int = 200) -> None:
        super().__init__()
        self.fc1 = nn.Linear(in_channels * height * width, hidden)
        self.fc2 = nn.Linear(hidden, hidden)
        self.fc3 = nn.Linear(hidden, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.fc1(torch.flatten(x, 1)))
        return self.fc3(torch.relu(self.fc2(x)))
