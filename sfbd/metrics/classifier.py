"""A small classifier whose penultimate layer serves as the feature space of a Frechet
distance on MNIST-family data (where Inception features fit poorly)."""

from __future__ import annotations

import torch
from torch import nn


class SmallCNN(nn.Module):
    """28 px grayscale classifier; `features` gives the 128-d penultimate activations."""

    def __init__(self, channels: int = 1, classes: int = 10, feature_dim: int = 128):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(channels, 32, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Flatten(),
            nn.LazyLinear(feature_dim),
            nn.ReLU(),
        )
        self.head = nn.Linear(feature_dim, classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


class FeatureExtractor(nn.Module):
    """What gets exported: images [B, C, H, W] in [-1, 1] -> features [B, D]."""

    def __init__(self, model: SmallCNN):
        super().__init__()
        self.body = model.body

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)
