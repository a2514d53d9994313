"""Draw samples from a checkpoint alone (EDM's sampler, Heun, deterministic).

    sfbd sample --checkpoint runs/toy2d/checkpoints/iter_003.pt --num 1000 --out s.npz

Writes key `images`: float32 `[N, C, H, W]` in [-1, 1] (or `[N, D]` for vector data).
Sample i depends on (seed, i) alone, not on the batch size.
"""

from __future__ import annotations

import argparse


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", required=True, help="a checkpoint a run wrote (iter_KKK.pt)")
    p.add_argument("--num", type=int, required=True, help="number of samples")
    p.add_argument("--out", required=True, help="the .npz file to write")
    p.add_argument("--steps", type=int, default=18, help="noise levels of the sampler")
    p.add_argument("--seed", type=int, default=0, help="sample i uses (seed, i)")
    p.add_argument(
        "--batch-size", type=int, default=500, help="samples per forward pass (no effect on them)"
    )


def main(args: argparse.Namespace) -> int:
    import os
    from pathlib import Path

    import numpy as np

    if args.num < 1 or args.steps < 1 or args.batch_size < 1:
        raise ValueError("--num, --steps and --batch-size must be >= 1")
    if not Path(args.checkpoint).is_file():
        raise FileNotFoundError(f"checkpoint: {args.checkpoint} does not exist")
    from sfbd.stages.evaluate import generate_samples

    images = generate_samples(
        Path(args.checkpoint), args.num, args.steps, args.seed, args.batch_size
    )
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp.npz")
    np.savez(tmp, images=images.astype(np.float32))
    os.replace(tmp, out)
    print(f"wrote {out}: images {images.shape} float32")
    return 0
