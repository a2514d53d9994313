"""Frechet distance between Gaussian fits of feature sets (Heusel et al. 2017, Eq. 6), with
any feature network: pytorch-fid's InceptionV3 (FID) or a user-given TorchScript module."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from pytorch_fid.fid_score import calculate_frechet_distance

FeatureFn = Callable[[torch.Tensor], torch.Tensor]


def feature_stats(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and covariance of `[N, D]` features (float64)."""
    f = np.asarray(features, dtype=np.float64)
    if f.ndim != 2 or len(f) < 2:
        raise ValueError(f"features: need [N >= 2, D], got shape {f.shape}")
    return f.mean(axis=0), np.cov(f, rowvar=False)


def frechet_distance(mu1, sigma1, mu2, sigma2) -> float:
    """||mu1 - mu2||^2 + Tr(S1 + S2 - 2 (S1 S2)^(1/2))."""
    return float(
        calculate_frechet_distance(
            np.atleast_1d(mu1), np.atleast_2d(sigma1), np.atleast_1d(mu2), np.atleast_2d(sigma2)
        )
    )


@torch.no_grad()
def extract_features(
    fn: FeatureFn, images: np.ndarray, batch_size: int = 200, device: torch.device | str = "cpu"
) -> np.ndarray:
    """Features of float images `[N, C, H, W]` in [-1, 1], batch by batch."""
    out = []
    for start in range(0, len(images), batch_size):
        # A copy: `images` may be a read-only view (object store, Arrow), which torch warns about.
        x = torch.from_numpy(np.array(images[start : start + batch_size]))
        out.append(fn(x.to(device).float()).reshape(len(x), -1).double().cpu().numpy())
    return np.concatenate(out)


def load_feature_net(path: str | Path, device: torch.device | str = "cpu") -> FeatureFn:
    """A feature extractor saved as TorchScript (`torch.jit.save`) or, for `.pt2` files, as an
    exported program (`torch.export.save`): images [B, C, H, W] in [-1, 1] -> [B, D].

    Neither runs Python from the file: TorchScript archives are read by torch's own restricted
    unpickler, and an exported program is loaded with every `torch.load` weights-only and its
    opaque pickled objects refused (torch.export alone would unpickle them in full)."""
    from sfbd.safeload import reason, weights_only_torch

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"feature network: {path} does not exist")
    try:
        if path.suffix == ".pt2":
            with weights_only_torch():
                return torch.export.load(str(path)).module().to(device)
        net = torch.jit.load(str(path), map_location=device)
    except Exception as exc:
        raise ValueError(
            f"feature network: {path} is not a TorchScript file or exported program ({reason(exc)})"
        ) from exc
    return net.eval()
