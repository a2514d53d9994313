"""Train a small classifier on a labelled data set and export its feature layer as
TorchScript, for `eval.metric: fd` (Frechet distance in its feature space).

    python jobs/train_classifier.py --dataset fashion-mnist --epochs 2 --out fmnist_features.pt
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import _path  # noqa: F401  (keeps jobs/ from shadowing the sfbd package)
import numpy as np
import torch

from sfbd.data.sources import load_labelled
from sfbd.metrics.classifier import FeatureExtractor, SmallCNN


def train_classifier(
    images: np.ndarray,
    labels: np.ndarray,
    epochs: int,
    batch_size: int = 128,
    lr: float = 1e-3,
    seed: int = 0,
    log=print,
) -> SmallCNN:
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
            torch.nn.functional.cross_entropy(model(x[idx]), y[idx]).backward()
            opt.step()
        log(f"epoch {epoch + 1}/{epochs}: {len(x) / (time.time() - t0):.0f} images/s")
    return model.eval()


@torch.no_grad()
def accuracy(model: SmallCNN, images: np.ndarray, labels: np.ndarray) -> float:
    pred = torch.cat(
        [
            model(torch.from_numpy(images[i : i + 1000])).argmax(1)
            for i in range(0, len(images), 1000)
        ]
    )
    return float((pred.numpy() == labels).mean())


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dataset", default="fashion-mnist", choices=["fashion-mnist", "mnist"])
    p.add_argument("--root", default=None)
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--limit", type=int, default=None, help="train on the first N images")
    p.add_argument("--out", required=True)
    a = p.parse_args(argv)
    try:
        images, labels = load_labelled(a.dataset, a.root, train=True)
        test_images, test_labels = load_labelled(a.dataset, a.root, train=False)
    except (ValueError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if a.limit:
        images, labels = images[: a.limit], labels[: a.limit]
    model = train_classifier(images, labels, a.epochs)
    acc = accuracy(model, test_images, test_labels)
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    torch.jit.script(FeatureExtractor(model)).save(str(tmp))
    tmp.replace(out)
    print(f"test accuracy {acc:.4f}; wrote {out} (features: 128-d, input [-1, 1])")
    return 0


if __name__ == "__main__":
    sys.exit(main())
