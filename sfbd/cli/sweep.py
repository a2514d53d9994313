"""Sweep clean fraction x tau with Ray Tune: every trial prepares its data, pretrains and
runs K SFBD iterations, reporting the metric after pretraining and after every iteration, so
a scheduler such as ASHA can stop weak trials early.

    sfbd sweep --config toy2d --clean-fractions 0.02,0.1 --taus 0.3,0.59
    ray job submit --working-dir . -- python tuning/sweep.py --config fashion-mnist-gpu ...

Writes `<out>/results.csv` and `<out>/heatmap.png` (final metric over clean fraction x tau).
Run again with the same `--out` to resume an interrupted sweep (`Tuner.restore`); each trial
also resumes its own run directory stage by stage. `--max-concurrent N` trials must fit in the
cluster's CPUs at once, each its driver plus its largest stage (`sfbd.sweep`), else the sweep
is refused. `--compare-sequential` runs the grid at `--max-concurrent` and then one trial at a
time, into `<out>/concurrent` and `<out>/sequential`, and prints both wall times.
"""

from __future__ import annotations

import argparse
import sys

from sfbd.cli.common import Renamed, add_address, add_config, floats


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_config(p)
    p.add_argument(
        "--clean-fractions",
        type=floats("--clean-fractions"),
        default=(0.04, 0.1),
        help="comma-separated grid values in (0, 1)",
    )
    p.add_argument(
        "--taus", type=floats("--taus"), default=(0.2, 0.59), help="comma-separated values > 0"
    )
    p.add_argument("--sigmas", action=Renamed, new="--taus")
    p.add_argument("--out", default=None, help="default: runs/sweep-<config name>")
    p.add_argument(
        "--scheduler",
        choices=["fifo", "asha"],
        default="fifo",
        help="fifo: every trial runs to the end; asha: stop trials whose metric lags early",
    )
    p.add_argument(
        "--max-concurrent",
        type=int,
        default=1,
        help="trials at once; each must be able to hold its driver and largest stage at once",
    )
    p.add_argument(
        "--trial-cpus",
        type=float,
        default=None,
        help="CPUs reserved by a trial's driver for its whole run (its stages reserve their "
        "own); default 0.1",
    )
    p.add_argument(
        "--trial-gpus", type=float, default=0.0, help="GPUs reserved by a trial's driver"
    )
    p.add_argument(
        "--compare-sequential",
        action="store_true",
        help="time the sweep against the same trials one at a time (a fresh --out)",
    )
    add_address(p)


def main(args: argparse.Namespace) -> int:
    from pathlib import Path

    import ray

    from sfbd.config import load_config
    from sfbd.run import check_resources, init_ray
    from sfbd.sweep import SweepConfig, sweep

    config = load_config(args.config, args.set)
    grid = SweepConfig(
        clean_fractions=args.clean_fractions,
        taus=args.taus,
        scheduler=args.scheduler,
        max_concurrent=args.max_concurrent,
        **({} if args.trial_cpus is None else {"trial_cpus": args.trial_cpus}),
        trial_gpus=args.trial_gpus,
    )
    grid.validate()
    init_ray(args.address)
    check_resources(config, ray.cluster_resources())
    out = Path(args.out or f"runs/sweep-{config.name}").resolve()
    if args.compare_sequential:
        from sfbd.studies.sweep_timing import compare_sequential, format_comparison

        result = compare_sequential(config, grid, out, log=lambda m: print(m, flush=True))
        print(format_comparison(result, ray.cluster_resources().get("CPU", 0)))
        print(f"wrote {out / 'comparison.json'}")
        return 0
    rows, failed = sweep(config, grid, out, log=lambda m: print(m, flush=True))
    print(
        f"[sweep] {len(rows)} trials reported; table {out / 'results.csv'}, "
        f"heatmap {out / 'heatmap.png'}",
        flush=True,
    )
    for r in sorted(rows, key=lambda r: (r["clean_fraction"], r["tau"])):
        print(
            f"clean_fraction={r['clean_fraction']:g} tau={r['tau']:g} "
            f"{r['metric_name']}={r['final_metric']:.4f} (iterations {r['iterations_done']})"
        )
    if failed:
        print(f"error: {len(failed)} trial(s) failed: {failed[0].error}", file=sys.stderr)
        return 1
    return 0
