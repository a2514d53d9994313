"""Sweep clean fraction x noise scale with Ray Tune: every trial prepares its data, pretrains
and runs K SFBD iterations, reporting the metric after pretraining and after every iteration
(`ray.tune.report`), so a scheduler such as ASHA can stop weak trials early.

    python tuning/sweep.py --config toy2d --clean-fractions 0.02,0.1 --sigmas 0.3,0.59
    ray job submit --working-dir . -- python tuning/sweep.py --config fashion-mnist-gpu ...

Writes `<out>/results.csv` and `<out>/heatmap.png` (final metric over clean fraction x sigma).
Run again with the same `--out` to resume an interrupted sweep (`Tuner.restore`); each trial
also resumes its own run directory stage by stage.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sfbd.config import load_config  # noqa: E402
from sfbd.tuning import run_trial, write_results  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", required=True, help="a preset or a YAML file")
    p.add_argument("--clean-fractions", default="0.04,0.1")
    p.add_argument("--sigmas", default="0.2,0.59")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--out", default=None, help="default: runs/sweep-<config name>")
    p.add_argument("--scheduler", choices=["fifo", "asha"], default="fifo")
    p.add_argument(
        "--max-concurrent",
        type=int,
        default=1,
        help="trials at once (each runs Ray Data and Ray Train stages)",
    )
    p.add_argument(
        "--trial-cpus",
        type=float,
        default=0.0,
        help="CPUs reserved by a trial's driver (its stages reserve their own)",
    )
    p.add_argument("--trial-gpus", type=float, default=0.0)
    p.add_argument("--address", default=None)
    a = p.parse_args(argv)
    try:
        config = load_config(a.config, a.set)
        fractions = [float(x) for x in a.clean_fractions.split(",") if x]
        sigmas = [float(x) for x in a.sigmas.split(",") if x]
        for f in fractions:
            if not 0 < f < 1:
                raise ValueError(f"--clean-fractions: {f} must lie in (0, 1)")
        for s in sigmas:
            if not s > 0:
                raise ValueError(f"--sigmas: {s} must be > 0")
        if not fractions or not sigmas or a.max_concurrent < 1:
            raise ValueError(
                "--clean-fractions, --sigmas: give at least one value each; --max-concurrent >= 1"
            )
    except (ValueError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2

    import ray
    from ray import tune

    from sfbd.run import check_resources

    ray.init(address=a.address, namespace="sfbd", ignore_reinit_error=True)
    try:
        check_resources(config, ray.cluster_resources())
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    out = Path(a.out or f"runs/sweep-{config.name}").resolve()
    storage, name = out / "tune", "sweep"
    # A trial's driver only waits on its orchestrator: by default it reserves a little memory
    # and no CPU, leaving every CPU to the stages (Tune needs some resource in a bundle).
    trial_resources = {"cpu": a.trial_cpus, "gpu": a.trial_gpus, "memory": 64 * 2**20}
    trainable = tune.with_resources(run_trial, trial_resources)
    if tune.Tuner.can_restore(str(storage / name)):
        print(f"[sweep] resuming {storage / name}", flush=True)
        tuner = tune.Tuner.restore(str(storage / name), trainable=trainable, resume_errored=True)
    else:
        scheduler = None
        if a.scheduler == "asha":
            scheduler = tune.schedulers.ASHAScheduler(
                time_attr="iteration", max_t=config.iterations, grace_period=1
            )
        tuner = tune.Tuner(
            trainable,
            param_space={
                "clean_fraction": tune.grid_search(fractions),
                "sigma": tune.grid_search(sigmas),
                "base": config.to_dict(),
                "root": str(out / "trials"),
            },
            tune_config=tune.TuneConfig(
                metric="metric",
                mode="min",
                scheduler=scheduler,
                max_concurrent_trials=a.max_concurrent,
            ),
            run_config=tune.RunConfig(name=name, storage_path=str(storage)),
        )
    results = tuner.fit()
    rows = []
    for result in results:
        cf, sigma = result.config["clean_fraction"], result.config["sigma"]
        df = result.metrics_dataframe
        if df is None or df.empty:
            continue
        rows.append(
            {
                "clean_fraction": cf,
                "sigma": sigma,
                "iterations_done": int(df["iteration"].max()),
                "metric_name": df["metric_name"].iloc[-1],
                "final_metric": float(df["metric"].iloc[-1]),
                "best_metric": float(df["metric"].min()),
                "run_dir": df["run_dir"].iloc[-1],
            }
        )
    write_results(rows, out)
    errors = [r for r in results if r.error]
    print(
        f"[sweep] {len(rows)} trials reported; table {out / 'results.csv'}, "
        f"heatmap {out / 'heatmap.png'}",
        flush=True,
    )
    for r in sorted(rows, key=lambda r: (r["clean_fraction"], r["sigma"])):
        print(
            f"clean_fraction={r['clean_fraction']:g} sigma={r['sigma']:g} "
            f"{r['metric_name']}={r['final_metric']:.4f} (iterations {r['iterations_done']})"
        )
    if errors:
        print(f"error: {len(errors)} trial(s) failed: {errors[0].error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
