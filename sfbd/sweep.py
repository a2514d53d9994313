"""The Ray Tune side of sweeps: every trial is one whole SFBD run (`sfbd.run.fit`) for a grid
point (clean fraction, tau), reporting the metric after pretraining and after every
iteration (`ray.tune.report`), so a scheduler such as ASHA can stop weak trials early; then
the results table and heatmap. The CLI is `sfbd sweep` (`tuning/sweep.py`)."""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

from sfbd.config import SFBDConfig, from_dict


@dataclass
class SweepConfig:
    """A grid over clean fraction x tau, and how trials share the cluster."""

    clean_fractions: tuple[float, ...] = (0.04, 0.1)
    taus: tuple[float, ...] = (0.2, 0.59)
    scheduler: str = "fifo"  # fifo or asha
    max_concurrent: int = 1
    trial_cpus: float = 0.0  # reserved by a trial's driver (its stages reserve their own)
    trial_gpus: float = 0.0

    def validate(self) -> None:
        for f in self.clean_fractions:
            if not 0 < f < 1:
                raise ValueError(f"--clean-fractions: {f} must lie in (0, 1)")
        for t in self.taus:
            if not t > 0:
                raise ValueError(f"--taus: {t} must be > 0")
        if not self.clean_fractions or not self.taus:
            raise ValueError("--clean-fractions, --taus: give at least one value each")
        if self.max_concurrent < 1:
            raise ValueError(f"--max-concurrent: {self.max_concurrent}; must be >= 1")
        if self.scheduler not in ("fifo", "asha"):
            raise ValueError(f"--scheduler: {self.scheduler!r}; allowed: fifo, asha")


def trial_dir(root: str, clean_fraction: float, tau: float) -> Path:
    return Path(root) / f"cf{clean_fraction:g}_tau{tau:g}"


def run_trial(params: dict) -> None:
    """Tune function trainable: one whole SFBD run for (clean_fraction, tau)."""
    import ray.tune

    from sfbd.run import fit

    base = dict(params["base"])
    base["data"] = {
        **base["data"],
        "clean_fraction": params["clean_fraction"],
        "tau": params["tau"],
    }
    config = from_dict(SFBDConfig, base)
    run_dir = trial_dir(params["root"], params["clean_fraction"], params["tau"])

    def report(row: dict) -> None:
        metric = row["metric"]
        ray.tune.report(
            {
                "iteration": row["iteration"],
                "metric": row[metric],
                "metric_name": metric,
                "run_dir": str(run_dir),
            }
        )

    # The loop runs in an orchestrator actor outside the trial's placement group.
    fit(config, run_dir, on_metrics=report)


def sweep(config: SFBDConfig, grid: SweepConfig, out: Path, log=print) -> tuple[list[dict], int]:
    """Run (or resume) the sweep into `out`; returns the results rows and the failed trials."""
    from ray import tune

    storage, name = out / "tune", "sweep"
    # A trial's driver only waits on its orchestrator: by default it reserves a little memory
    # and no CPU, leaving every CPU to the stages (Tune needs some resource in a bundle).
    resources = {"cpu": grid.trial_cpus, "gpu": grid.trial_gpus, "memory": 64 * 2**20}
    trainable = tune.with_resources(run_trial, resources)
    if tune.Tuner.can_restore(str(storage / name)):
        log(f"[sweep] resuming {storage / name}")
        tuner = tune.Tuner.restore(str(storage / name), trainable=trainable, resume_errored=True)
    else:
        scheduler = None
        if grid.scheduler == "asha":
            scheduler = tune.schedulers.ASHAScheduler(
                time_attr="iteration", max_t=config.iterations, grace_period=1
            )
        tuner = tune.Tuner(
            trainable,
            param_space={
                "clean_fraction": tune.grid_search(list(grid.clean_fractions)),
                "tau": tune.grid_search(list(grid.taus)),
                "base": config.to_dict(),
                "root": str(out / "trials"),
            },
            tune_config=tune.TuneConfig(
                metric="metric",
                mode="min",
                scheduler=scheduler,
                max_concurrent_trials=grid.max_concurrent,
            ),
            run_config=tune.RunConfig(name=name, storage_path=str(storage)),
        )
    results = tuner.fit()
    rows = []
    for result in results:
        df = result.metrics_dataframe
        if df is None or df.empty:
            continue
        rows.append(
            {
                "clean_fraction": result.config["clean_fraction"],
                "tau": result.config["tau"],
                "iterations_done": int(df["iteration"].max()),
                "metric_name": df["metric_name"].iloc[-1],
                "final_metric": float(df["metric"].iloc[-1]),
                "best_metric": float(df["metric"].min()),
                "run_dir": df["run_dir"].iloc[-1],
            }
        )
    write_results(rows, out)
    failed = [r for r in results if r.error]
    return rows, failed


RESULT_FIELDS = (
    "clean_fraction",
    "tau",
    "iterations_done",
    "metric_name",
    "final_metric",
    "best_metric",
    "run_dir",
)


def write_results(rows: list[dict], out: Path) -> None:
    """results.csv and heatmap.png of the final metric."""
    from sfbd.viz import save_heatmap

    out.mkdir(parents=True, exist_ok=True)
    with open(out / "results.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=RESULT_FIELDS)
        w.writeheader()
        for r in sorted(rows, key=lambda r: (r["clean_fraction"], r["tau"])):
            w.writerow({k: r.get(k) for k in RESULT_FIELDS})
    save_heatmap(rows, out / "heatmap.png")
