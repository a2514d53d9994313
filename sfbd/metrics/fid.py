"""FID with pytorch-fid's InceptionV3 (pool3, 2048-d) and its standard weights.

The weights come from an explicit file, or torch hub's cache
(`$TORCH_HOME/hub/checkpoints/pt_inception-2015-12-05-6726825d.pth`), or a download; when
none works, the error says where to put the file. Grayscale images are replicated to 3
channels; images in [-1, 1] are mapped to [0, 1], which pytorch-fid resizes to 299 px and
normalises itself.
"""

from __future__ import annotations

import hashlib
import io
from pathlib import Path
from unittest import mock

import numpy as np
import torch
from pytorch_fid import inception as pf_inception

from sfbd.metrics.frechet import extract_features, feature_stats

WEIGHTS_NAME = "pt_inception-2015-12-05-6726825d.pth"


def hub_weights_path() -> Path:
    return Path(torch.hub.get_dir()) / "checkpoints" / WEIGHTS_NAME


def build_inception(
    weights: str | Path | None = None, download: bool = True, device: torch.device | str = "cpu"
) -> pf_inception.InceptionV3:
    """pytorch-fid's FID InceptionV3, from `weights`, the hub cache, or a download."""
    from sfbd.safeload import reason, torch_load

    path = Path(weights) if weights else hub_weights_path()
    if weights and not path.is_file():
        raise FileNotFoundError(f"FID: Inception weights file {path} does not exist")
    refusal = f"FID: {path} is not pytorch-fid's Inception weights ({WEIGHTS_NAME})"
    if path.is_file():

        def from_file(*_args, **_kwargs):
            return torch_load(path, refusal)  # tensors only: a pickle with code is refused

        with mock.patch.object(pf_inception, "load_state_dict_from_url", from_file):
            try:
                model = pf_inception.InceptionV3([3])
            except RuntimeError as exc:  # a state dict of some other network
                raise ValueError(f"{refusal}: {reason(exc)}") from exc
    elif not download:
        raise FileNotFoundError(_missing_message(path, "downloads are off"))
    else:
        download_weights = pf_inception.load_state_dict_from_url  # torch.hub's

        def from_url(url, *args, **kwargs):  # pytorch-fid's own call would unpickle in full
            return download_weights(url, *args, **{**kwargs, "weights_only": True})

        try:
            with mock.patch.object(pf_inception, "load_state_dict_from_url", from_url):
                model = pf_inception.InceptionV3([3])
        except Exception as exc:
            raise FileNotFoundError(
                _missing_message(path, f"download failed: {reason(exc)}")
            ) from exc
    return model.to(device).eval()


def _missing_message(path: Path, why: str) -> str:
    return (
        f"FID: Inception weights not found ({why}); put {WEIGHTS_NAME} (from pytorch-fid's "
        f"release fid_weights) at {path} or pass its path as eval.inception_weights"
    )


def inception_feature_fn(model: pf_inception.InceptionV3):
    """images [B, C, H, W] in [-1, 1] (C = 1 or 3) -> pool3 features [B, 2048]."""

    def fn(x: torch.Tensor) -> torch.Tensor:
        if x.shape[1] == 1:
            x = x.repeat(1, 3, 1, 1)
        return model(((x + 1) / 2).clamp(0, 1))[0].flatten(1)

    return fn


KID_REFERENCE_MAX = 10_000  # reference features kept for KID (a seeded subset beyond that)


def reference_features(
    images: np.ndarray,
    feature_fn,
    cache_dir,
    key: str,
    batch_size: int = 200,
    device: torch.device | str = "cpu",
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(mu, sigma, kid_features) of a reference image set, computed once and cached as
    `<key>-<N>-<hash>.npz`: the Gaussian fit of all its features (FID, Frechet distance) and
    up to `KID_REFERENCE_MAX` of the features themselves (KID's subsets are drawn from them).
    `device`: where `feature_fn`'s network lives (the images are moved there)."""
    digest = hashlib.sha256(
        np.ascontiguousarray(images[:: max(1, len(images) // 64)]).tobytes()
    ).hexdigest()[:16]
    from sfbd.storage import Location

    path = Location.of(cache_dir) / f"{key}-{len(images)}-{digest}.npz" if cache_dir else None
    if path is not None and path.is_file():
        from sfbd.safeload import open_npz

        what = f"FID: cached reference statistics {path} (delete it to recompute)"
        with open_npz(path.read_bytes(), what) as z:
            mu, sigma = z["mu"], z["sigma"]
            if "kid_features" in z:  # caches written before KID lack them: recomputed
                return mu, sigma, z["kid_features"]
    features = extract_features(feature_fn, images, batch_size, device=device)
    mu, sigma = feature_stats(features)
    if len(features) > KID_REFERENCE_MAX:
        keep = np.random.default_rng(0).choice(len(features), KID_REFERENCE_MAX, replace=False)
        features = features[np.sort(keep)]
    kid_features = features.astype(np.float32)
    if path is not None:
        buffer = io.BytesIO()
        np.savez(buffer, mu=mu, sigma=sigma, kid_features=kid_features)
        path.write_bytes(buffer.getvalue())
    return mu, sigma, kid_features


def reference_stats(
    images: np.ndarray, feature_fn, cache_dir, key: str, batch_size: int = 200
) -> tuple[np.ndarray, np.ndarray]:
    """(mu, sigma) of a reference image set (cached: `reference_features`)."""
    return reference_features(images, feature_fn, cache_dir, key, batch_size)[:2]


def load_stats(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """Precomputed statistics: an `.npz` with `mu` and `sigma` (the usual FID stats files:
    pytorch-fid's `--save-stats` output and EDM's reference `.npz` files hold these keys;
    other arrays in the file are ignored)."""
    from sfbd.safeload import open_npz

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"FID: statistics file {path} does not exist")
    with open_npz(path, f"FID: statistics file {path}") as z:  # never unpickled
        if "mu" not in z or "sigma" not in z:
            raise ValueError(f"FID: {path} needs arrays mu and sigma (has {z.keys()})")
        return z["mu"], z["sigma"]
