"""Prepare a clean/noisy split once: the data set's items, a seeded clean fraction kept
clean, every other item observed as y = x + tau * eps, written as Parquet with a manifest.

    sfbd prepare --dataset fashion-mnist --clean-fraction 0.04 --tau 0.59 --out data/fm-4pct
"""

from __future__ import annotations

import argparse
import json

from sfbd.cli.common import Renamed


def add_arguments(p: argparse.ArgumentParser) -> None:
    from sfbd.data.prepare import DataConfig
    from sfbd.data.sources import DATASETS

    d = DataConfig()
    p.add_argument("--dataset", default=d.dataset, help=f"one of: {', '.join(DATASETS)}")
    p.add_argument(
        "--clean-fraction",
        type=float,
        default=d.clean_fraction,
        help="share of items kept clean; the rest is observed with noise (default %(default)s)",
    )
    p.add_argument("--tau", type=float, default=d.tau, help="observation noise, pixels in [-1, 1]")
    p.add_argument("--sigma", action=Renamed, new="--tau")
    p.add_argument("--seed", type=int, default=d.seed, help="seed of the split and the noise")
    p.add_argument("--out", default="data/prepared", help="a path or a URI")
    p.add_argument("--root", default=None, help="torchvision root (download or local copy)")
    p.add_argument("--limit", type=int, default=None, help="keep the first N items")
    p.add_argument("--num", type=int, default=d.num, help="number of toy2d items")
    p.add_argument("--shard-size", type=int, default=d.shard_size, help="items per Parquet file")
    p.add_argument(
        "--holdout-fraction",
        type=float,
        default=d.holdout_fraction,
        help="share of the noisy observations held out of training, the reference of "
        "noisy_distance (default %(default)s)",
    )
    p.add_argument(
        "--pretrain",
        default=None,
        help="a similar data set (any --dataset spec) whose items join the clean set; "
        "then --clean-fraction may be 0",
    )
    p.add_argument("--pretrain-limit", type=int, default=None, help="keep its first N items")
    p.add_argument(
        "--resolution",
        type=int,
        default=None,
        help="folder:/zip: images: scale each one's centre square to this size "
        "(default: the images' own size, which must then be one size)",
    )
    p.add_argument(
        "--noisy-dtype",
        default=d.noisy_dtype,
        help="storage of the noisy and holdout splits: float32 or float16 (half the bytes)",
    )


def main(args: argparse.Namespace) -> int:
    from sfbd.data.prepare import DataConfig
    from sfbd.data.store import read_manifest
    from sfbd.stages.prepare_images import prepare_data

    config = DataConfig(
        dataset=args.dataset,
        clean_fraction=args.clean_fraction,
        tau=args.tau,
        seed=args.seed,
        root=args.root,
        limit=args.limit,
        num=args.num,
        shard_size=args.shard_size,
        holdout_fraction=args.holdout_fraction,
        pretrain=args.pretrain,
        pretrain_limit=args.pretrain_limit,
        resolution=args.resolution,
        noisy_dtype=args.noisy_dtype,
    )
    out = prepare_data(config, args.out)
    m = read_manifest(out)
    summary = {k: m[k] for k in ("source", "item_shape", "tau", "seed", "clean_fraction")}
    summary.update({split: m["splits"][split]["count"] for split in m["splits"]})
    print(json.dumps(summary))
    return 0
