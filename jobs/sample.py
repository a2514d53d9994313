"""Draw samples from a checkpoint alone (EDM sampler, Heun, deterministic by default).

    python jobs/sample.py --checkpoint runs/toy2d/checkpoints/iter_003.pt --num 1000 --out s.npz

Writes key `images`: float32 `[N, C, H, W]` in [-1, 1] (or `[N, D]` for vector data).
Sample i depends on (seed, i) alone, not on the batch size.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import _path  # noqa: F401  (keeps jobs/ from shadowing the sfbd package)
import numpy as np


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--num", type=int, required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--steps", type=int, default=18)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=500)
    a = p.parse_args(argv)
    if a.num < 1 or a.steps < 1 or a.batch_size < 1:
        print("error: --num, --steps and --batch-size must be >= 1", file=sys.stderr)
        return 2
    if not Path(a.checkpoint).is_file():
        print(f"error: checkpoint: {a.checkpoint} does not exist", file=sys.stderr)
        return 2
    from sfbd.stages.evaluate import generate_samples

    try:
        images = generate_samples(Path(a.checkpoint), a.num, a.steps, a.seed, a.batch_size)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp.npz")
    np.savez(tmp, images=images.astype(np.float32))
    os.replace(tmp, out)
    print(f"wrote {out}: images {images.shape} float32")
    return 0


if __name__ == "__main__":
    sys.exit(main())
