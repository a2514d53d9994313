"""A distance that needs no clean originals: compare the model in noisy space.

The data are observed through a known channel, y = x + tau * eps with eps ~ N(0, I). Push the
model's samples through the same channel and compare them with noisy observations that were
held out of training (the prepared data's `holdout` split):

- If p_model = p_data, then p_model * N(0, tau^2 I) = p_data * N(0, tau^2 I) = p_y: the pushed
  samples and the held-out observations come from one distribution, and the distance falls to
  the sampling floor of the two set sizes.
- The converse holds too: convolving with a Gaussian multiplies the characteristic function by
  exp(-tau^2 |w|^2 / 2), which is never zero, so two distributions that agree after the
  convolution agree before it. A noisy-space distance of zero means the model matches the
  clean data.
- But the noise hides detail: a difference at frequency w is damped by that same factor, so
  fine structure (texture, sharp edges) moves this distance far less than the clean-space
  one. A mean shift survives unchanged; a wrong spread shrinks (the covariances both gain
  tau^2 I). Read it as a trend over iterations, not as a substitute for FID.

Nothing here imports Ray or torch.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import numpy as np

R = TypeVar("R")

NOISE_STREAM = 11  # keeps these draws apart from other generators seeded by eval.seed


def push_forward(x: np.ndarray, tau: float, seed: int) -> np.ndarray:
    """x + tau * eps, eps ~ N(0, I) drawn from a generator seeded by `seed` (float32, the same
    draws for the same seed and shape). Not clamped: the observations are not either."""
    if not tau >= 0:
        raise ValueError(f"tau: {tau!r}; the observation noise must be >= 0")
    x = np.asarray(x, dtype=np.float32)
    eps = np.random.default_rng([seed, NOISE_STREAM]).standard_normal(x.shape, dtype=np.float32)
    return x + np.float32(tau) * eps


def noisy_distance(
    samples: np.ndarray,
    holdout: np.ndarray,
    tau: float,
    distance_fn: Callable[[np.ndarray, np.ndarray], R],
    seed: int,
) -> R:
    """`distance_fn(push_forward(samples, tau, seed), holdout)`: the distance in noisy space
    between the model's samples and held-out observations y = x + tau * eps. `distance_fn`
    returns a float, or a record of several numbers measured in one feature space."""
    samples, holdout = np.asarray(samples), np.asarray(holdout)
    if len(holdout) == 0:
        raise ValueError("noisy_distance: the holdout set is empty")
    if samples.shape[1:] != holdout.shape[1:]:
        raise ValueError(
            f"noisy_distance: samples of shape {samples.shape[1:]} and holdout items of "
            f"shape {holdout.shape[1:]} differ"
        )
    return distance_fn(push_forward(samples, tau, seed), holdout)
