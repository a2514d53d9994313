"""The clean/noisy split (Lu, Wu & Yu 2025, Sec. 3): an exact, seeded clean fraction; every
other item i becomes y_i = x_i + tau * eps_i with eps_i reproducible from (seed, i). A seeded
share of the noisy observations can be held out: never denoised or trained on, it is what the
label-free `noisy_distance` compares the model's samples (pushed through the same channel) with."""

from __future__ import annotations

import numpy as np

_SPLIT_TAG = 0x5F5B1  # separate the split's stream from the noise streams
_NOISE_TAG = 0x5F5B2
_HOLDOUT_TAG = 0x5F5B3


def check_split_args(
    clean_fraction: float, tau: float, holdout_fraction: float = 0.0, clean_elsewhere: bool = False
) -> None:
    """`clean_elsewhere`: the clean set comes from another source (`data.pretrain`), so the
    clean fraction may be 0 (the whole data set observed noisy)."""
    if not (isinstance(tau, (int, float)) and np.isfinite(tau) and tau > 0):
        raise ValueError(f"tau: {tau!r}; the observation noise must be a finite number > 0")
    low = 0 <= clean_fraction if clean_elsewhere else 0 < clean_fraction
    if not (isinstance(clean_fraction, (int, float)) and low and clean_fraction < 1):
        if clean_fraction == 0:
            raise ValueError(
                "clean_fraction: 0 needs data.pretrain (a clean set from another source); "
                "otherwise it must lie strictly in (0, 1)"
            )
        allowed = "[0, 1)" if clean_elsewhere else "strictly in (0, 1)"
        raise ValueError(f"clean_fraction: {clean_fraction!r}; must lie {allowed}")
    if not (isinstance(holdout_fraction, (int, float)) and 0 <= holdout_fraction < 1):
        raise ValueError(
            f"holdout_fraction: {holdout_fraction!r}; must lie in [0, 1) (a share of the noisy "
            f"observations kept out of training; 0: none)"
        )


def clean_count(n: int, clean_fraction: float) -> int:
    """round(clean_fraction * n), at least one noisy item, and at least one clean item unless
    the fraction is 0."""
    k = int(round(clean_fraction * n))
    if not (1 if clean_fraction > 0 else 0) <= k <= n - 1:
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


def holdout_indices(
    noisy_ids: np.ndarray, holdout_fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Sorted (train_ids, holdout_ids) of the noisy ids: a seeded subset of
    round(holdout_fraction * len) held out (none on a set too small to give one), and at least
    one item left to denoise and train on."""
    n = len(noisy_ids)
    k = int(round(holdout_fraction * n))
    if k == 0:
        return noisy_ids, noisy_ids[:0]
    if k >= n:
        raise ValueError(
            f"holdout_fraction: {holdout_fraction} of {n} noisy items holds out {k}; "
            f"nothing would be left to denoise and train on"
        )
    perm = np.random.default_rng([seed, _HOLDOUT_TAG]).permutation(n)
    return np.sort(noisy_ids[perm[k:]]), np.sort(noisy_ids[perm[:k]])


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
