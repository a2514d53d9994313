"""Prepare a clean/noisy split once.

    python jobs/prepare_data.py --dataset fashion-mnist --clean-fraction 0.04 \
        --sigma 0.59 --seed 0 --out data/fmnist-4pct
"""

from __future__ import annotations

import argparse
import json
import sys

import _path  # noqa: F401  (keeps jobs/ from shadowing the sfbd package)

from sfbd.data.prepare import PrepareConfig, prepare
from sfbd.data.sources import DATASETS
from sfbd.data.store import read_manifest


def parse_args(argv: list[str] | None = None) -> PrepareConfig:
    d = PrepareConfig()
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dataset", default=d.dataset, help=f"one of: {', '.join(DATASETS)}")
    p.add_argument("--clean-fraction", type=float, default=d.clean_fraction)
    p.add_argument("--sigma", type=float, default=d.sigma, help="tau: noise std, pixels in [-1,1]")
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--out", default=d.out)
    p.add_argument("--root", default=None, help="torchvision root (download or local copy)")
    p.add_argument("--limit", type=int, default=None, help="keep the first N items")
    p.add_argument("--num", type=int, default=d.num, help="number of toy2d items")
    p.add_argument("--shard-size", type=int, default=d.shard_size)
    a = p.parse_args(argv)
    return PrepareConfig(
        dataset=a.dataset,
        clean_fraction=a.clean_fraction,
        sigma=a.sigma,
        seed=a.seed,
        out=a.out,
        root=a.root,
        limit=a.limit,
        num=a.num,
        shard_size=a.shard_size,
    )


def main(argv: list[str] | None = None) -> int:
    config = parse_args(argv)
    try:
        out = prepare(config)
    except (ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    m = read_manifest(out)
    summary = {k: m[k] for k in ("source", "item_shape", "tau", "seed", "clean_fraction")}
    summary.update(clean=m["splits"]["clean"]["count"], noisy=m["splits"]["noisy"]["count"])
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
