"""The clean/noisy split (Lu, Wu & Yu 2025, Sec. 3): an exact, seeded clean fraction; every
other item i becomes y_i = x_i + tau * eps_i with eps_i reproducible from (seed, i)."""

from __future__ import annotations

import numpy as np

_SPLIT_TAG = 0x5F5B1  # separate the split's stream from the noise streams
_NOISE_TAG = 0x5F5B2


def check_split_args(clean_fraction: float, tau: float) -> None:
    if not (isinstance(tau, (int, float)) and np.isfinite(tau) and tau > 0):
        raise ValueError(f"tau: {tau!r}; the observation noise must be a finite number > 0")
    if not (isinstance(clean_fraction, (int, float)) and 0 < clean_fraction < 1):
        raise ValueError(f"clean_fraction: {clean_fraction!r}; must lie strictly in (0, 1)")


def clean_count(n: int, clean_fraction: float) -> int:
    """round(clean_fraction * n), and at least one item on each side."""
    k = int(round(clean_fraction * n))
    if not 1 <= k <= n - 1:
        raise ValueError(
            f"clean_fraction: {clean_fraction} of {n} items gives {k} clean items; "
            f"need at least one clean and one noisy item"
        )
    return k


def split_indices(n: int, clean_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Sorted (clean_ids, noisy_ids): a seeded random subset of exactly clean_count items."""
    k = clean_count(n, clean_fraction)
    perm = np.random.default_rng([seed, _SPLIT_TAG]).permutation(n)
    return np.sort(perm[:k]).astype(np.int64), np.sort(perm[k:]).astype(np.int64)


def noise_for(seed: int, ids: np.ndarray, item_shape: tuple[int, ...]) -> np.ndarray:
    """eps_i ~ N(0, I) for each id, from a generator seeded by (seed, i) alone."""
    out = np.empty((len(ids), *item_shape), dtype=np.float32)
    for row, i in enumerate(ids):
        rng = np.random.default_rng([seed, _NOISE_TAG, int(i)])
        out[row] = rng.standard_normal(item_shape, dtype=np.float32)
    return out


def observe(x: np.ndarray, ids: np.ndarray, tau: float, seed: int) -> np.ndarray:
    """The noisy observations y = x + tau * eps (forward process at sigma = tau)."""
    return (x + np.float32(tau) * noise_for(seed, ids, x.shape[1:])).astype(np.float32)
