"""Streaming refits against memory refits (`sfbd benchmark --ingest`): images/s of the same
train stage with `train.ingest = memory` and `stream`, on the connected cluster.

The stage is a refit at Fashion-MNIST's size: a denoised set of `num_images` 1x28x28 items
(60,000 by default, float32 Parquet in shards of 8,192, as a denoise stage writes them) and a
clean set of 4% of that, with the `fashion-mnist-cpu` preset's network and train settings
(the tiny UNet, batch 64, one worker of 2 torch threads). Its items are random: speed does
not depend on them. The two modes run alternately, in the order memory, stream, stream,
memory, ... (`rounds` of each), so that a machine that slows down or speeds up during the
benchmark weighs on both alike. Each run's rate is the loop's own `images_per_s`: images
after its first step over the time since that step ended, so start-up (Ray Train's worker,
loading the sets in memory mode, the first pass's reading and shuffle buffer in stream mode)
is left out of it and reported beside it as the run's wall time. Stream mode's shuffle buffer
goes on filling for some steps after the first (Ray Data reads ahead while the loop runs), so
runs must be long enough to weigh that little: the default, 7.68 kimg, is 120 steps (at 1.92
kimg, 30 steps, stream mode measured 0.85x memory; at 7.68, 0.98x: docs/results.md). A pass
of the denoised set is 60,000 / (64 x 96%) = about 980 steps; a run of `kimg` shorter than
that restarts only the clean set's passes (in memory under stream mode, as it fits one
shuffle buffer).
"""

from __future__ import annotations

import dataclasses
import platform
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

SHAPE = (1, 28, 28)
MODES = ("memory", "stream")


def write_sets(work: Path, num_images: int) -> list:
    """The clean (4%) and denoised sets (`TrainSet`s), random float32 items in [-1, 1]."""
    from sfbd.data.store import write_shards
    from sfbd.stages.refit import TrainSet

    rng = np.random.default_rng(0)
    sets = []
    for name, n, first in (("clean", max(num_images // 25, 1), 10**7), ("denoised", num_images, 0)):
        items = np.clip(rng.normal(0.0, 0.5, (n, *SHAPE)), -1, 1).astype(np.float32)
        write_shards(work / name, np.arange(n) + first, items, 8192)
        sets.append(TrainSet(path=str(work / name)))
    return sets


def run_ingest_benchmark(
    work: Path,
    num_images: int = 60_000,
    kimg: float = 7.68,
    rounds: int = 2,
    workers: int = 1,
    log: Callable[[str], None] = print,
) -> dict:
    """Alternate memory and stream runs of one refit; the rates and their ratio."""
    from sfbd.config import load_config
    from sfbd.stages.refit import TrainJob, run_train

    if num_images < 100 or kimg <= 0 or rounds < 1 or workers < 0:
        raise ValueError(
            "--num-images >= 100, --ingest-kimg > 0, --ingest-rounds >= 1 and "
            "--ingest-workers >= 0 are needed"
        )
    config = load_config("fashion-mnist-cpu")
    config.network.channels, config.network.resolution = SHAPE[0], SHAPE[1]
    base = dataclasses.replace(
        config.train,
        num_workers=workers,
        checkpoint_kimg=2 * kimg,
        log_kimg=kimg / 3,
        max_failures=0,
    )
    sets = write_sets(work, num_images)
    order = [MODES[(i + i // 2) % 2] for i in range(2 * rounds)]  # memory, stream, stream, ...
    runs = []
    for i, mode in enumerate(order):
        train = dataclasses.replace(base, ingest=mode)
        job = TrainJob(
            f"ingest_{i}_{mode}", train, config.network, sets, SHAPE, kimg, 0, str(work / "train")
        )
        t0 = time.time()
        summary = run_train(job, work / f"{job.stage}.pt", log=log)
        runs.append(
            {
                "mode": mode,
                "images_per_s": summary["loop_images_per_s"],
                "wall_seconds": time.time() - t0,
                "set_sizes": summary["set_sizes"],
            }
        )
        log(f"{job.stage}: {summary['loop_images_per_s']:.1f} images/s after the first step")
    rate = {m: float(np.mean([r["images_per_s"] for r in runs if r["mode"] == m])) for m in MODES}
    return {
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": f"{platform.machine()}, {platform.processor() or 'cpu'}",
        "num_images": num_images,
        "kimg": kimg,
        "workers": workers,
        "batch_size": base.batch_size,
        "threads": base.threads,
        "runs": runs,
        "images_per_s": rate,
        "ratio_stream_over_memory": rate["stream"] / rate["memory"],
    }


def format_ingest(result: dict) -> str:
    lines = [
        f"train.ingest, {result['num_images']} items of {SHAPE}, {result['kimg']} kimg per run, "
        f"{result['workers']} worker(s), batch {result['batch_size']}:"
    ]
    for r in result["runs"]:
        lines.append(
            f"  {r['mode']:<7} {r['images_per_s']:8.1f} images/s   {r['wall_seconds']:6.1f} s wall"
        )
    rate = result["images_per_s"]
    lines.append(
        f"  mean: memory {rate['memory']:.1f}, stream {rate['stream']:.1f} images/s; "
        f"stream / memory = {result['ratio_stream_over_memory']:.3f} (target >= 0.9)"
    )
    return "\n".join(lines)


def add_ingest_arguments(p) -> None:
    """`sfbd benchmark --ingest` and its options (`--num-images`, `--out`, `--work-dir` and
    `--address` are the benchmark's own)."""
    p.add_argument(
        "--ingest",
        action="store_true",
        help="instead: train.ingest stream against memory, images/s of a Fashion-MNIST-size "
        "refit (--num-images default 60000)",
    )
    p.add_argument("--ingest-kimg", type=float, default=7.68, help="kimg per run (--ingest)")
    p.add_argument("--ingest-rounds", type=int, default=2, help="runs of each mode (--ingest)")
    p.add_argument("--ingest-workers", type=int, default=1, help="train workers (--ingest)")


def ingest_main(args) -> int:
    """`sfbd benchmark --ingest`: print the figures, write them to `--out` as JSON."""
    import json
    import shutil
    import tempfile

    import ray

    from sfbd.orchestrator import quiet_ray_data_progress
    from sfbd.run import init_ray

    started = init_ray(args.address) is not None
    quiet_ray_data_progress(False)
    work = Path(args.work_dir or tempfile.mkdtemp(prefix="sfbd-ingest-")).resolve()
    work.mkdir(parents=True, exist_ok=True)
    try:
        result = run_ingest_benchmark(
            work,
            num_images=args.num_images or 60_000,
            kimg=args.ingest_kimg,
            rounds=args.ingest_rounds,
            workers=args.ingest_workers,
        )
    finally:
        if args.work_dir is None:
            shutil.rmtree(work, ignore_errors=True)
        if started:
            ray.shutdown()
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(format_ingest(result))
    print(f"wrote {out.resolve()}")
    return 0
