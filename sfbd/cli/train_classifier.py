"""Train a small classifier on a labelled data set and export its feature layer as
TorchScript, the feature space of the `fd` metric (a Frechet distance).

    sfbd train-classifier --dataset fashion-mnist --epochs 2 --out fmnist_features.pt
"""

from __future__ import annotations

import argparse


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--dataset",
        default="fashion-mnist",
        choices=["fashion-mnist", "mnist"],
        help="the labelled data set (its training split; accuracy on its test split)",
    )
    p.add_argument("--root", default=None, help="torchvision root (download or local copy)")
    p.add_argument("--epochs", type=int, default=2, help="passes over the training images")
    p.add_argument("--limit", type=int, default=None, help="train on the first N images")
    p.add_argument("--out", required=True, help="the TorchScript file to write")


def main(args: argparse.Namespace) -> int:
    from sfbd.metrics.classifier import train_feature_net

    if args.epochs < 1 or (args.limit is not None and args.limit < 1):
        raise ValueError("--epochs and --limit must be >= 1")
    acc = train_feature_net(args.dataset, args.out, args.epochs, root=args.root, limit=args.limit)
    print(f"test accuracy {acc:.4f}; wrote {args.out} (features: 128-d, input [-1, 1])")
    return 0
