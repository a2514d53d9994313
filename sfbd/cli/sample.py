"""Draw samples from a checkpoint alone (EDM's sampler, Heun, deterministic).

    sfbd sample --checkpoint runs/toy2d/checkpoints/iter_003.pt --num 1000 --out s.npz
    sfbd sample --checkpoint runs/fm/checkpoints/iter_003.pt --num 50000 --format png --out fm-png

`npz` (default): key `images`, float32 `[N, C, H, W]` in [-1, 1] (or `[N, D]` for vector data).
`png`: a new folder of 8-bit PNGs, `000000.png` ... (quantised as EDM does), for the usual FID
tools (EDM's `fid.py calc --images=DIR`, clean-fid, torch-fidelity); it appears only complete.
Sample i depends on (seed, i) alone, not on the batch size.
"""

from __future__ import annotations

import argparse


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", required=True, help="a checkpoint a run wrote (iter_KKK.pt)")
    p.add_argument("--num", type=int, required=True, help="number of samples")
    p.add_argument("--out", required=True, help="the .npz file, or for png a new folder, to write")
    p.add_argument(
        "--format",
        choices=("npz", "png"),
        default="npz",
        help="npz: float32 array; png: a folder of 8-bit PNG images for FID tools",
    )
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
    out = Path(args.out)
    if args.format == "png" and out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ValueError(f"--out: {out} exists; --format png writes a new folder")
    from sfbd.stages.evaluate import generate_samples, load_for_sampling

    loaded = load_for_sampling(Path(args.checkpoint))
    shape = loaded[1]
    if args.format == "png" and len(shape) != 3:
        raise ValueError(
            f"--format png: {args.checkpoint} models vectors of shape {shape}, not images; "
            "use --format npz"
        )
    images = generate_samples(
        Path(args.checkpoint), args.num, args.steps, args.seed, args.batch_size, loaded
    )
    if args.format == "png":
        return _write_png_folder(images, out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp.npz")
    np.savez(tmp, images=images.astype(np.float32))
    os.replace(tmp, out)
    print(f"wrote {out}: images {images.shape} float32")
    return 0


def _write_png_folder(images, out) -> int:
    import os
    import shutil

    from sfbd.viz import save_png_folder

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    count = save_png_folder(images, tmp)
    if out.exists():
        out.rmdir()  # checked empty before sampling
    os.replace(tmp, out)
    print(f"wrote {out}: {count} PNG images {images.shape[2]}x{images.shape[3]}")
    return 0
