"""Distances between sample sets that need no learned features."""

from __future__ import annotations

import numpy as np


def _flat(x, what: str = "items") -> np.ndarray:
    """Items as float64 rows (torch tensors are moved to host memory first)."""
    if hasattr(x, "detach"):  # a torch.Tensor, without importing torch here
        x = x.detach().cpu().numpy()
    return np.asarray(x, dtype=np.float64).reshape(len(x), -1)


def column_quantiles(values: np.ndarray, levels: np.ndarray) -> np.ndarray:
    """Column quantiles at `levels`, linearly interpolated, by one sort: the numbers of
    `np.quantile(values, levels, axis=0)` (its default `linear` method, including its
    interpolation from the upper neighbour at fractions >= 0.5), without its partitions."""
    ordered = np.sort(values, axis=0)
    pos = (len(ordered) - 1) * levels
    lo = np.floor(pos).astype(np.int64)
    hi = np.minimum(lo + 1, len(ordered) - 1)
    frac = (pos - lo)[:, None]
    below, above = ordered[lo], ordered[hi]
    step = above - below
    return np.where(frac >= 0.5, above - step * (1 - frac), below + step * frac)


class SlicedW2:
    """Sliced Wasserstein-2 distance (Rabin et al. 2011) to one fixed reference set.

    Items are flattened; each of `projections` random unit directions (drawn from `seed`)
    gives two 1-D distributions whose W2 is computed from `quantiles` matched quantiles (so
    the sets may differ in size); the result is the root mean over directions. The
    directions and the reference's projected quantiles are computed once, so measuring many
    sets against one reference (the NFE study) costs one projection and sort per set.
    """

    def __init__(
        self, reference: np.ndarray, projections: int = 256, seed: int = 0, quantiles: int = 1000
    ):
        ref = _flat(reference)
        rng = np.random.default_rng(seed)
        self.dirs = rng.standard_normal((ref.shape[1], projections))
        self.dirs /= np.linalg.norm(self.dirs, axis=0, keepdims=True)
        self.levels = (np.arange(quantiles) + 0.5) / quantiles
        self.reference_quantiles = column_quantiles(ref @ self.dirs, self.levels)
        self.count = len(ref)

    def __call__(self, items) -> float:
        """The distance of `items` (array or tensor, any item shape) to the reference."""
        flat = _flat(items)
        if flat.shape[1] != self.dirs.shape[0]:
            raise ValueError(
                f"sliced_wasserstein distance: dimensions differ "
                f"({flat.shape[1]} vs {self.dirs.shape[0]})"
            )
        q = column_quantiles(flat @ self.dirs, self.levels)
        return float(np.sqrt(((q - self.reference_quantiles) ** 2).mean()))


def sliced_wasserstein(
    a: np.ndarray, b: np.ndarray, projections: int = 256, seed: int = 0, quantiles: int = 1000
) -> float:
    """Sliced Wasserstein-2 distance (Rabin et al. 2011) between two sample sets: `SlicedW2`
    with `b` as the reference, measured once on `a`."""
    return SlicedW2(b, projections, seed, quantiles)(a)
