"""The EDM training loss (Karras et al. 2022, Eq. 2 and Table 1, "Training")."""

from __future__ import annotations

from collections.abc import Callable

import torch

from sfbd.diffusion.augment import AugmentPipe
from sfbd.diffusion.precond import append_dims


class EDMLoss:
    """lambda(sigma) * ||D(x + sigma n; sigma) - x||^2 with ln sigma ~ N(P_mean, P_std^2).

    The weighting lambda(sigma) = (sigma^2 + sigma_data^2) / (sigma * sigma_data)^2 makes the
    effective target of the raw network unit-variance. Returns one loss per sample (the mean
    over its elements), so callers can weight or average as they wish.

    With an `augment_pipe`, x is augmented first (the loss's target is the augmented image)
    and the denoiser receives the pipe's labels as `augment_labels`; without one, nothing is
    drawn beyond the noise level and the noise.
    """

    def __init__(
        self,
        P_mean: float = -1.2,
        P_std: float = 1.2,
        sigma_data: float = 0.5,
        augment_pipe: AugmentPipe | None = None,
    ):
        self.P_mean = P_mean
        self.P_std = P_std
        self.sigma_data = sigma_data
        self.augment_pipe = augment_pipe

    def __call__(
        self,
        denoiser: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
        x: torch.Tensor,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        labels = None
        if self.augment_pipe is not None:
            x, labels = self.augment_pipe(x, generator)
        rnd = torch.randn(x.shape[0], device=x.device, generator=generator)
        sigma = (rnd * self.P_std + self.P_mean).exp()
        weight = (sigma**2 + self.sigma_data**2) / (sigma * self.sigma_data) ** 2
        n = torch.randn(x.shape, device=x.device, generator=generator)
        x_noisy = x + append_dims(sigma, x.ndim) * n
        if labels is None:
            D_x = denoiser(x_noisy, sigma)
        else:
            D_x = denoiser(x_noisy, sigma, augment_labels=labels)
        per_elem = append_dims(weight, x.ndim) * (D_x - x) ** 2
        return per_elem.flatten(1).mean(dim=1)
