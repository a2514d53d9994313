"""Sweep any config keys with Ray Tune: every trial prepares its data, pretrains and runs K
SFBD iterations, reporting the metric after pretraining and after every iteration, so a
scheduler such as ASHA can stop weak trials early.

    sfbd sweep --config toy2d --grid train.lr=1e-3,2e-3 --grid data.tau=0.3,0.59 --seeds 2
    sfbd sweep --config toy2d --range train.lr=1e-4:1e-2:log --samples 8 --scheduler asha
    sfbd sweep --config toy2d --clean-fractions 0.02,0.1 --taus 0.3,0.59
    ray job submit --working-dir . -- python tuning/sweep.py --config fashion-mnist-gpu ...

Writes `<out>/results.csv` (one row per trial), `<out>/best.json` and `<out>/heatmap.png`
(final metric over the first two axes); `--out` is a path or a URI. Run again with the same
`--out` to resume an interrupted sweep (`Tuner.restore`); each trial also resumes its own run
directory stage by stage. `--max-concurrent N` trials must fit in the cluster's CPUs at once,
each its driver plus its largest stage (`sfbd.sweep`), else the sweep is refused.
`--compare-sequential` runs the sweep at `--max-concurrent` and then one trial at a time, into
`<out>/concurrent` and `<out>/sequential`, and prints both wall times.
"""

from __future__ import annotations

import argparse
import sys

from sfbd.cli.common import Renamed, add_address, add_config, floats


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_config(p)
    p.add_argument(
        "--grid",
        action="append",
        default=[],
        metavar="KEY=V1,V2",
        help="a grid axis over any config key, values parsed as YAML like --set "
        "(repeatable; e.g. --grid train.lr=1e-3,2e-3)",
    )
    p.add_argument(
        "--range",
        action="append",
        default=[],
        metavar="KEY=LOW:HIGH[:log]",
        help="a random axis: uniform in [LOW, HIGH], or log-uniform with :log; integer keys "
        "draw integers (repeatable; e.g. --range train.lr=1e-4:1e-2:log)",
    )
    p.add_argument(
        "--samples", type=int, default=1, help="random draws of the --range axes (default 1)"
    )
    p.add_argument(
        "--seeds",
        type=int,
        default=0,
        help="N: run every point with seed = data.seed = 0..N-1, each a trial "
        "(default: the config's seeds)",
    )
    p.add_argument(
        "--clean-fractions",
        type=floats("--clean-fractions"),
        default=None,
        help="shorthand for --grid data.clean_fraction=...",
    )
    p.add_argument(
        "--taus", type=floats("--taus"), default=None, help="shorthand for --grid data.tau=..."
    )
    p.add_argument("--sigmas", action=Renamed, new="--taus")
    p.add_argument("--out", default=None, help="a path or a URI; default: runs/sweep-<config name>")
    p.add_argument(
        "--scheduler",
        choices=["fifo", "asha"],
        default="fifo",
        help="fifo: every trial runs to the end; asha: stop trials whose metric lags early",
    )
    p.add_argument(
        "--grace-period",
        type=int,
        default=1,
        help="asha: evaluations (pretraining is the first) before a trial may be stopped",
    )
    p.add_argument(
        "--reduction-factor",
        type=float,
        default=2.0,
        help="asha: at each rung only the best 1/FACTOR of the trials go on (default 2)",
    )
    p.add_argument(
        "--callback",
        action="append",
        default=[],
        choices=["mlflow", "wandb"],
        help="log every trial with Ray Tune's MLflow or Weights & Biases callback "
        "(repeatable; pip install 'sfbd[track]')",
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
        help="time the sweep against the same trials one at a time (a fresh local --out)",
    )
    add_address(p)


def sweep_config(args: argparse.Namespace):
    """The `SweepConfig` of the parsed flags (`--grid` / `--range` parsed here, so that their
    errors are one line)."""
    from sfbd.sweep import SweepConfig
    from sfbd.sweep_space import parse_grid, parse_range

    return SweepConfig(
        grid=tuple(parse_grid(g) for g in args.grid),
        ranges=tuple(parse_range(r) for r in args.range),
        seeds=args.seeds,
        samples=args.samples,
        clean_fractions=args.clean_fractions,
        taus=args.taus,
        scheduler=args.scheduler,
        grace_period=args.grace_period,
        reduction_factor=args.reduction_factor,
        max_concurrent=args.max_concurrent,
        **({} if args.trial_cpus is None else {"trial_cpus": args.trial_cpus}),
        trial_gpus=args.trial_gpus,
        callbacks=tuple(dict.fromkeys(args.callback)),
    )


def main(args: argparse.Namespace) -> int:
    import ray

    from sfbd.config import load_config
    from sfbd.run import check_resources, init_ray
    from sfbd.storage import Location
    from sfbd.sweep import sweep
    from sfbd.sweep_space import format_value
    from sfbd.sweep_tracking import check_callbacks

    config = load_config(args.config, args.set)
    grid = sweep_config(args)
    grid.validate(config)
    check_callbacks(grid.callbacks)
    out = Location.of(args.out or f"runs/sweep-{config.name}")
    if args.compare_sequential and out.local is None:
        raise ValueError(f"--compare-sequential: times local sweeps; --out {out} is a URI")
    init_ray(args.address)
    check_resources(config, ray.cluster_resources())
    if args.compare_sequential:
        from sfbd.studies.sweep_timing import compare_sequential, format_comparison

        result = compare_sequential(config, grid, out.local, log=lambda m: print(m, flush=True))
        print(format_comparison(result, ray.cluster_resources().get("CPU", 0)))
        print(f"wrote {out / 'comparison.json'}")
        return 0
    rows, failed = sweep(config, grid, out, log=lambda m: print(m, flush=True))
    print(
        f"[sweep] {len(rows)} trials; table {out / 'results.csv'}, best {out / 'best.json'}, "
        f"heatmap {out / 'heatmap.png'}",
        flush=True,
    )
    keys = grid.space().keys()
    for r in rows:
        point = " ".join(f"{k}={format_value(r[k])}" for k in keys)
        value = "-" if r["final_metric"] is None else f"{r['final_metric']:.4f}"
        print(
            f"{point} {r['metric_name'] or 'metric'}={value} "
            f"({r['status']}, iterations {r['iterations_done']})"
        )
    if failed:
        print(f"error: {len(failed)} trial(s) failed: {failed[0].error}", file=sys.stderr)
        return 1
    return 0
