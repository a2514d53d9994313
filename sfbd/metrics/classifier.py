"""A small classifier whose penultimate layer serves as the feature space of a Frechet
distance on MNIST-family data (where Inception features fit poorly)."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch import nn


class SmallCNN(nn.Module):
    """28 px grayscale classifier; `features` gives the 128-d penultimate activations."""

    def __init__(self, channels: int = 1, classes: int = 10, feature_dim: int = 128):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(channels, 32, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Flatten(),
            nn.LazyLinear(feature_dim),
            nn.ReLU(),
        )
        self.head = nn.Linear(feature_dim, classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


class FeatureExtractor(nn.Module):
    """What gets exported: images [B, C, H, W] in [-1, 1] -> features [B, D]; `logits` gives
    the classifier's class scores [B, classes] (the per-class shares of a model's samples)."""

    def __init__(self, model: SmallCNN):
        super().__init__()
        self.body = model.body
        self.head = model.head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)

    @torch.jit.export
    def logits(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


def class_shares(net: nn.Module, images: np.ndarray, batch: int = 1000) -> list[float] | None:
    """The share of `images` the exported classifier puts in each class (None for a feature
    network without `logits`, e.g. one exported before it had them)."""
    if not hasattr(net, "logits"):
        return None
    device = next(net.parameters()).device
    with torch.no_grad():
        pred = torch.cat(
            [
                net.logits(torch.from_numpy(images[i : i + batch]).to(device)).argmax(1).cpu()
                for i in range(0, len(images), batch)
            ]
        )
        counts = torch.bincount(pred, minlength=net.head.out_features)
    return (counts.double() / len(images)).tolist()


def train_classifier(
    images: np.ndarray,
    labels: np.ndarray,
    epochs: int,
    batch_size: int = 128,
    lr: float = 1e-3,
    seed: int = 0,
    log: Callable[[str], None] = print,
) -> SmallCNN:
    """A `SmallCNN` trained with Adam and cross-entropy on shuffled mini-batches, seeded by
    `seed` (initial weights and order); returned in eval mode."""
    torch.manual_seed(seed)
    model = SmallCNN(channels=images.shape[1], classes=int(labels.max()) + 1)
    model(torch.zeros(1, *images.shape[1:]))  # materialise the lazy layer
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    x, y = torch.from_numpy(images), torch.from_numpy(labels)
    g = torch.Generator().manual_seed(seed)
    for epoch in range(epochs):
        t0, perm = time.time(), torch.randperm(len(x), generator=g)
        for start in range(0, len(x), batch_size):
            idx = perm[start : start + batch_size]
            opt.zero_grad()
            nn.functional.cross_entropy(model(x[idx]), y[idx]).backward()
            opt.step()
        log(f"epoch {epoch + 1}/{epochs}: {len(x) / (time.time() - t0):.0f} images/s")
    return model.eval()


@torch.no_grad()
def accuracy(model: SmallCNN, images: np.ndarray, labels: np.ndarray, batch: int = 1000) -> float:
    """Share of `images` whose predicted class is their label."""
    pred = torch.cat(
        [
            model(torch.from_numpy(images[i : i + batch])).argmax(1)
            for i in range(0, len(images), batch)
        ]
    )
    return float((pred.numpy() == labels).mean())


def train_feature_net(
    dataset: str,
    out: str | Path,
    epochs: int,
    root: str | None = None,
    limit: int | None = None,
    log: Callable[[str], None] = print,
) -> float:
    """Train a `SmallCNN` on the training split of a labelled data set (`fashion-mnist`,
    `mnist`; the first `limit` images when given) and export its feature layer as TorchScript
    to `out` (written under a temporary name, then renamed), for `eval.metric: fd`. Returns
    the classifier's accuracy on the test split."""
    from sfbd.data.sources import load_labelled

    images, labels = load_labelled(dataset, root, train=True)
    test_images, test_labels = load_labelled(dataset, root, train=False)
    if limit:
        images, labels = images[:limit], labels[:limit]
    model = train_classifier(images, labels, epochs, log=log)
    acc = accuracy(model, test_images, test_labels)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f"{out.name}.{os.getpid()}.tmp")  # two trainers never share one
    torch.jit.script(FeatureExtractor(model)).save(str(tmp))
    tmp.replace(out)
    return acc


# `eval.feature_net: classifier:NAME`: the classifier of a labelled data set, trained once per
# machine into the user's cache (an evaluation instrument, like FID's Inception network: the
# generative model never sees it).
CLASSIFIER_SPEC = "classifier:"
CLASSIFIER_EPOCHS = 2


def is_classifier_spec(spec: str | None) -> bool:
    return bool(spec) and spec.startswith(CLASSIFIER_SPEC)


def check_classifier_spec(spec: str) -> None:
    name = spec[len(CLASSIFIER_SPEC) :]
    if name not in ("fashion-mnist", "mnist"):
        raise ValueError(
            f"config: eval.feature_net = {spec}; the built-in classifiers are "
            f"classifier:fashion-mnist and classifier:mnist (or give a TorchScript file)"
        )


def classifier_file(spec: str) -> Path:
    from sfbd.data.sources import DEFAULT_ROOT

    name = spec[len(CLASSIFIER_SPEC) :]
    # -h: exported with its classification head (files without it have no class shares).
    name = f"{name}-classifier-e{CLASSIFIER_EPOCHS}-h.pt"
    return DEFAULT_ROOT.parent / "feature-nets" / name


def ensure_feature_net(
    path: Path, dataset: str, epochs: int, root: str | None, log: Callable[[str], None] = print
) -> Path:
    """`path`, trained first (`train_feature_net` on `dataset`) when it does not exist."""
    if not path.is_file():
        log(f"feature network {path}: training it on {dataset} ({epochs} epochs)")
        acc = train_feature_net(dataset, path, epochs, root, log=log)
        log(f"feature network {path}: test accuracy {acc:.4f}")
    return path


def ensure_classifier(
    spec: str, root: str | None = None, log: Callable[[str], None] = print
) -> Path:
    """The TorchScript file of `classifier:NAME`, trained (seed 0, `CLASSIFIER_EPOCHS` epochs on
    the training split) unless this machine already has it."""
    check_classifier_spec(spec)
    name = spec[len(CLASSIFIER_SPEC) :]
    return ensure_feature_net(classifier_file(spec), name, CLASSIFIER_EPOCHS, root, log)
