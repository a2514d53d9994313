"""EDM preconditioning (Karras et al. 2022, Table 1 and Eq. 7)."""

from __future__ import annotations

import torch
from torch import nn


def append_dims(v: torch.Tensor, ndim: int) -> torch.Tensor:
    """Reshape a per-sample tensor `[B]` to `[B, 1, ..., 1]` with `ndim` dimensions."""
    return v.reshape(v.shape + (1,) * (ndim - v.ndim))


class EDMPrecond(nn.Module):
    """D(x; sigma) = c_skip(sigma) x + c_out(sigma) F(c_in(sigma) x; c_noise(sigma)).

    `net` is the raw network F(x, c_noise) -> tensor of the shape of x. The wrapper is the
    denoiser of the project's contract: `D(x, sigma) -> x0_hat` with `sigma` of shape `[B]`.
    Training with augmentation also passes `augment_labels` `[B, augment_dim]`, which `net`
    then takes as a third argument; None (every sampler) means zero labels: no augmentation.
    """

    def __init__(self, net: nn.Module, sigma_data: float = 0.5):
        super().__init__()
        self.net = net
        self.sigma_data = sigma_data

    def forward(
        self, x: torch.Tensor, sigma: torch.Tensor, augment_labels: torch.Tensor | None = None
    ) -> torch.Tensor:
        sigma = sigma.to(torch.float32).reshape(-1).expand(x.shape[0])
        s = append_dims(sigma, x.ndim)
        sd2 = self.sigma_data**2
        c_skip = sd2 / (s**2 + sd2)
        c_out = s * self.sigma_data / (s**2 + sd2).sqrt()
        c_in = 1 / (sd2 + s**2).sqrt()
        c_noise = sigma.log() / 4
        if augment_labels is None:
            F_x = self.net((c_in * x).to(torch.float32), c_noise)
        else:
            F_x = self.net((c_in * x).to(torch.float32), c_noise, augment_labels)
        D_x = c_skip * x + c_out * F_x.to(torch.float32)
        return D_x
