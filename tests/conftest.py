import sys
from pathlib import Path

import numpy as np
import pytest
import torch

# The entry points in jobs/ are scripts; tests import their main() functions directly.
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "jobs"))


class GaussianDenoiser:
    """The exact denoiser for data N(mu, s^2) (per dimension): E[x0 | x_sigma]."""

    def __init__(self, mu: torch.Tensor, s: torch.Tensor):
        self.mu, self.s = mu, s
        self.calls = 0

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        assert sigma.shape == (x.shape[0],)
        self.calls += 1
        sig = sigma.reshape(-1, *([1] * (x.ndim - 1)))
        return self.mu + (x - self.mu) * self.s**2 / (self.s**2 + sig**2)


@pytest.fixture
def gaussian():
    mu = torch.tensor([0.3, -0.5], dtype=torch.float64)
    s = torch.tensor([0.5, 0.2], dtype=torch.float64)
    return GaussianDenoiser(mu, s)


@pytest.fixture
def rng():
    return np.random.default_rng(0)
