"""Memorization check: how close generated samples come to training items.

For each generated sample, the nearest neighbour in a training set by RMS distance per
element (L2 / sqrt(D), in the [-1, 1] pixel scale); a sample closer than `threshold` counts as
a copy. Run against the clean set and the denoised set (which stands in for the noisy set's
originals the model never saw).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch


@dataclass
class NearestNeighbours:
    distance: np.ndarray  # [N] RMS distance to the nearest training item
    index: np.ndarray  # [N] its row in the training set

    def fraction_below(self, threshold: float) -> float:
        return float((self.distance < threshold).mean())


@torch.no_grad()
def nearest_neighbours(
    samples: np.ndarray, train: np.ndarray, chunk: int = 1024
) -> NearestNeighbours:
    """Exact nearest neighbours by brute force, in chunks of training items."""
    # Copies: the inputs may be read-only views of Arrow buffers, which torch warns about.
    a = torch.from_numpy(np.array(samples, np.float32).reshape(len(samples), -1))
    dim = a.shape[1]
    best = torch.full((len(a),), float("inf"))
    arg = torch.zeros(len(a), dtype=torch.int64)
    flat = np.asarray(train, np.float32).reshape(len(train), -1)
    for start in range(0, len(flat), chunk):
        b = torch.from_numpy(np.array(flat[start : start + chunk]))
        d, i = torch.cdist(a, b).min(dim=1)
        better = d < best
        best[better], arg[better] = d[better], i[better] + start
    return NearestNeighbours((best / dim**0.5).numpy(), arg.numpy())


def memorization_report(
    samples: np.ndarray, sets: dict[str, np.ndarray], threshold: float
) -> tuple[dict, dict[str, NearestNeighbours]]:
    """Per training set: fraction of samples nearer than `threshold`, and distance quantiles;
    also the nearest neighbours themselves (for pictures of the closest pairs)."""
    out: dict = {"threshold": threshold}
    found = {}
    for name, train in sets.items():
        nn = found[name] = nearest_neighbours(samples, train)
        out[name] = {
            "fraction_copies": nn.fraction_below(threshold),
            "min": float(nn.distance.min()),
            "median": float(np.median(nn.distance)),
        }
    return out, found
