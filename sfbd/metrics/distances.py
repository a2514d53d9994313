"""Distances between sample sets that need no learned features."""

from __future__ import annotations

import numpy as np


def sliced_wasserstein(
    a: np.ndarray, b: np.ndarray, projections: int = 256, seed: int = 0, quantiles: int = 1000
) -> float:
    """Sliced Wasserstein-2 distance (Rabin et al. 2011) between two sample sets.

    Items are flattened; each of `projections` random unit directions gives two 1-D
    distributions whose W2 is computed from `quantiles` matched quantiles (so the sets may
    differ in size); the result is the root mean over directions.
    """
    a = np.asarray(a, dtype=np.float64).reshape(len(a), -1)
    b = np.asarray(b, dtype=np.float64).reshape(len(b), -1)
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"sliced_wasserstein: dimensions differ ({a.shape[1]} vs {b.shape[1]})")
    rng = np.random.default_rng(seed)
    dirs = rng.standard_normal((a.shape[1], projections))
    dirs /= np.linalg.norm(dirs, axis=0, keepdims=True)
    levels = (np.arange(quantiles) + 0.5) / quantiles
    qa = np.quantile(a @ dirs, levels, axis=0)
    qb = np.quantile(b @ dirs, levels, axis=0)
    return float(np.sqrt(((qa - qb) ** 2).mean()))
