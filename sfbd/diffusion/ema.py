"""Exponential moving average of weights by half-life in images (EDM's `ema_halflife_kimg`)."""

from __future__ import annotations

import copy

import torch
from torch import nn


def ema_beta(
    batch_images: int,
    halflife_images: float,
    rampup_ratio: float | None = None,
    images_seen: int = 0,
) -> float:
    """Decay per step so the weight of old parameters halves every `halflife_images` images.

    With `rampup_ratio` the half-life is capped at `rampup_ratio * images_seen`, as in EDM's
    training loop, so early averages do not cling to the random initialisation.
    """
    halflife = halflife_images
    if rampup_ratio is not None:
        halflife = min(halflife, images_seen * rampup_ratio)
    if halflife <= 0:
        return 0.0
    return 0.5 ** (batch_images / max(halflife, 1e-8))


class EMA:
    """Holds an averaged copy of a model; `update` blends in the live weights."""

    def __init__(self, model: nn.Module):
        self.model = copy.deepcopy(model).eval().requires_grad_(False)

    @torch.no_grad()
    def update(self, model: nn.Module, beta: float) -> None:
        for p_ema, p in zip(self.model.parameters(), model.parameters(), strict=True):
            p_ema.copy_(p.detach().lerp(p_ema, beta))
        for b_ema, b in zip(self.model.buffers(), model.buffers(), strict=True):
            b_ema.copy_(b)
