"""Run SFBD end to end: prepare data (unless given), pretrain, then K rounds of
denoise -> refit -> evaluate, driven by a Ray actor that resumes an interrupted run.

    sfbd run --config toy2d
    sfbd run --config fashion-mnist-cpu --run-dir runs/fm --set iterations=2
    ray job submit --working-dir . -- python jobs/sfbd.py --config fashion-mnist-gpu
    ray job submit --working-dir . -- python jobs/sfbd.py     (GPU preset if the cluster has GPUs)
"""

from __future__ import annotations

import argparse
import json

from sfbd.cli.common import add_address, add_config
from sfbd.defaults import CPU_PRESET, GPU_PRESET


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_config(
        p,
        required=False,
        default=f"{GPU_PRESET} when the Ray cluster has GPUs, else {CPU_PRESET}",
    )
    p.add_argument(
        "--data",
        default=None,
        help="prepared data (sfbd prepare): a path or a URI such as s3://bucket/data",
    )
    p.add_argument(
        "--run-dir",
        default=None,
        help="a path or a URI such as s3://bucket/runs/x; default: $SFBD_STORAGE/<config "
        "name> when SFBD_STORAGE is set, else runs/<config name> (in a Ray job's temporary "
        "working directory: ~/sfbd/runs/<config name>)",
    )
    add_address(p)
    p.add_argument(
        "--baselines",
        default="",
        help="after the run, also train comparison models for its whole budget: noisy, clean-only "
        "(pretraining continued), all-clean",
    )


def main(args: argparse.Namespace) -> int:
    from sfbd.run import fit

    baselines = [b.strip() for b in args.baselines.split(",") if b.strip()]
    summary = fit(
        args.config,
        args.run_dir,
        overrides=args.set,
        data=args.data,
        address=args.address,
        baselines=baselines,
    )
    for row in summary["metrics"]:
        print(json.dumps({k: row[k] for k in ("iteration", row["metric"], "train_loss")}))
    if summary.get("best"):
        print(json.dumps({"best": summary["best"]}))
    for kind, row in summary["baselines"].items():
        print(
            json.dumps(
                {
                    "baseline": kind,
                    row["metric"]: row[row["metric"]],
                    "train_loss": row["train_loss"],
                }
            )
        )
    return 0
