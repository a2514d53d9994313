"""Benchmark the Ray stages against plain PyTorch loops on one device.

    sfbd benchmark                                          # CPU defaults: tiny, 16 px, 512 images
    sfbd benchmark --preset ddpmpp-cifar10 --compile --out bench.json   # a GPU
    ray job submit --working-dir . -- python jobs/benchmark.py --out /abs/path/bench.json

Times the denoise stage (Ray Data) and the train stage (Ray Train) against plain loops doing
the same work on the same allotment, and the achieved TFLOP/s; the method is described in
`sfbd.studies.benchmark`. Defaults depend on the device Ray hands out (CPU / GPU).
`--plan` adds the scale plan: hours per stage and per run at given sizes and GPU counts
(`--plan-rates h200`: from the recorded H200 anchors, measuring nothing; docs/scale.md).
"""

from __future__ import annotations

import argparse

from sfbd.cli.common import Renamed, add_address
from sfbd.cli.plan_flags import add_plan_arguments, plan_options
from sfbd.studies.ingest_benchmark import add_ingest_arguments, ingest_main


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--preset",
        default=None,
        help="network preset (tiny, small, ddpmpp-cifar10, ncsnpp-celeba64, mlp); "
        "default: tiny on CPUs, ddpmpp-cifar10 on a GPU",
    )
    p.add_argument("--resolution", type=int, default=None, help="pixels; default 16 (CPU), 32")
    p.add_argument("--channels", type=int, default=None, help="default 1 (CPU), 3 (GPU); mlp 2")
    p.add_argument("--num-images", type=int, default=None, help="default 512 (CPU), 4096 (GPU)")
    p.add_argument("--batch-size", type=int, default=None, help="denoise batch; 64 (CPU), 256")
    p.add_argument("--steps", type=int, default=8, help="noise levels (2 steps - 1 NFE)")
    p.add_argument("--train-steps", type=int, default=None, help="default 20 (CPU), 50 (GPU)")
    p.add_argument("--train-batch-size", type=int, default=None, help="default 64 (CPU), 128")
    p.add_argument("--cpus", type=float, default=1.0, help="CPUs of every timed process")
    p.add_argument("--threads", type=int, default=0, help="torch threads; 0: max(1, cpus)")
    p.add_argument("--tau", type=float, default=0.59, help="noise level of the observations")
    p.add_argument("--sigma", action=Renamed, new="--tau")
    p.add_argument("--compile", action="store_true", help="also time the plain denoise compiled")
    p.add_argument(
        "--out",
        default="benchmark.json",
        help="the JSON result (under ray job submit: an absolute path)",
    )
    p.add_argument(
        "--work-dir",
        default=None,
        help="data, checkpoint, outputs (kept); default: a temporary folder, removed. "
        "On a multi-node cluster: storage every node sees",
    )
    add_plan_arguments(p)
    add_ingest_arguments(p)
    add_address(p)


def main(args: argparse.Namespace) -> int:
    import json
    import shutil
    import tempfile
    from pathlib import Path

    from sfbd.studies.scale_inputs import make_plan, plan_workloads

    if args.ingest:  # train.ingest stream against memory (sfbd.studies.ingest_benchmark)
        if args.plan:
            raise ValueError("--plan: not with --ingest (the plan needs the stage benchmark)")
        return ingest_main(args)
    plan = plan_options(args)  # None without --plan; bad values fail here, before any work
    workloads = plan_workloads(plan) if plan else []
    if plan and not plan.needs_measurement:
        print(make_plan(plan, workloads)[0])
        return 0

    import ray

    from sfbd.run import init_ray
    from sfbd.studies.benchmark import format_table, resolve_settings, run_benchmark

    started = init_ray(args.address) is not None
    try:
        s = resolve_settings(
            ray.cluster_resources().get("GPU", 0) >= 1,
            preset=args.preset,
            resolution=args.resolution,
            channels=args.channels,
            num_images=args.num_images,
            batch_size=args.batch_size,
            steps=args.steps,
            train_steps=args.train_steps,
            train_batch_size=args.train_batch_size,
            cpus=args.cpus,
            threads=args.threads,
            compile=args.compile,
            tau=args.tau,
        )
        work = Path(args.work_dir or tempfile.mkdtemp(prefix="sfbd-benchmark-")).resolve()
        work.mkdir(parents=True, exist_ok=True)
        try:
            result = run_benchmark(s, work)
        finally:
            if args.work_dir is None:
                shutil.rmtree(work, ignore_errors=True)
        plan_text = None
        if plan:
            plan_text, result["plan"] = make_plan(plan, workloads, result)
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=2) + "\n")
        print(format_table(result))
        if plan_text:
            print("\n" + plan_text)
        print(f"wrote {out.resolve()}")
        return 0
    finally:
        if started:
            ray.shutdown()
