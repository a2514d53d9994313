"""The Ray Tune side of sweeps: every trial is one whole SFBD run (`sfbd.run.fit`) for a grid
point (clean fraction, tau), reporting the metric after pretraining and after every
iteration (`ray.tune.report`), so a scheduler such as ASHA can stop weak trials early; then
the results table and heatmap. The CLI is `sfbd sweep` (`tuning/sweep.py`).

How concurrent trials share the cluster. A trial's driver (the Tune function, which prepares
the data and then waits) reserves `trial_cpus` / `trial_gpus` for the trial's whole life. It
starts an orchestrator actor that reserves nothing, sits outside the trial's placement group
and runs the stages one after another; every stage reserves its own resources and frees them
when it ends:

- train: a Ray Train placement group of `train.num_workers` x `train.cpus_per_worker`, reserved
  whole or not at all; `train.num_workers = 0` (local mode) trains in the orchestrator's
  process and reserves nothing (it shares the cores' time);
- denoise: `denoise.num_actors` actors of `denoise.cpus_per_actor`, and one writing task of
  `IO_CPUS` at a time; the input comes from the object store, with no read tasks;
- evaluate: a sampling actor of `eval.cpus` (one actor per GPU on GPU clusters), then a
  metrics task of `eval.cpus`.

Holding while waiting happens in two places: a driver holds its reservation while its stages
wait, and denoise actors hold their CPUs while their writing task waits for CPU. Two trials on
2 CPUs whose drivers hold 1 CPU each (Tune's default), or whose denoise actors hold 1 CPU each,
leave no CPU for the other stage or the writing task, and nothing is ever freed: a deadlock.
(Ray 2.60's `read_parquet` adds a listing task of a whole CPU per file, and `from_arrow` /
`from_numpy` a metadata task of a whole CPU per block; the denoise and evaluate stages start
neither, see `sfbd.stages.blocks`.) Placement groups are reserved atomically, the sampling
actors and the metrics task wait for nothing but the orchestrator, and the orchestrator
reserves nothing, so they never hold while waiting.

The rule (CPUs): a trial's footprint is its driver's reservation plus the largest of its
stages' (`trial_footprint`), and `max_concurrent` footprints must fit in the cluster's CPUs
together; a sweep that asks for more is refused before Ray Tune starts (`check_concurrency`,
one line that says how many fit), not queued. Then every trial can hold whichever stage it is
in whatever the others do: no trial waits for another's CPUs and no deadlock can form. Ray
Data budgets a dataset as if it had the whole cluster, so each stage's budget is capped at its
footprint (`DataContext` resource limits). To run more trials at once than whole CPUs allow,
give the stages and drivers fractions of a CPU (`denoise.cpus_per_actor`, `eval.cpus`,
`train.cpus_per_worker`, `trial_cpus`): Ray's CPUs are logical, so the trials then share the
cores' time. Ray gives a process as many torch threads as whole CPUs, at least one, so a
fraction runs the one thread that one CPU runs, and the results do not change.

GPUs are queued, not refused: a stage that holds a GPU never waits for another GPU (an actor
pool works with the actors it got, a placement group is whole), only for CPUs, which the rule
provides; a trial may wait for another's GPU stage to end, never forever. The drivers'
`trial_gpus` are held for their trials' whole lives, so they must leave the largest GPU
request of a stage free. The rule counts the cluster's totals; on several nodes each request
must also fit on one node, which it does not check."""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

from sfbd.config import SFBDConfig, from_dict

DRIVER_CPUS = 0.1  # a trial's driver prepares the data, then waits on its orchestrator


@dataclass
class SweepConfig:
    """A grid over clean fraction x tau, and how trials share the cluster."""

    clean_fractions: tuple[float, ...] = (0.04, 0.1)
    taus: tuple[float, ...] = (0.2, 0.59)
    scheduler: str = "fifo"  # fifo or asha
    max_concurrent: int = 1
    trial_cpus: float = DRIVER_CPUS  # reserved by a trial's driver (its stages reserve their own)
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
        # Equal values would be two trials on one run directory (`trial_dir` names it).
        for flag, values in (("--clean-fractions", self.clean_fractions), ("--taus", self.taus)):
            names = [f"{v:g}" for v in values]
            if len(set(names)) != len(names):
                raise ValueError(f"{flag}: {','.join(names)} repeats a value")
        if self.max_concurrent < 1:
            raise ValueError(f"--max-concurrent: {self.max_concurrent}; must be >= 1")
        if self.scheduler not in ("fifo", "asha"):
            raise ValueError(f"--scheduler: {self.scheduler!r}; allowed: fifo, asha")
        if self.trial_cpus < 0 or self.trial_gpus < 0:
            raise ValueError("--trial-cpus, --trial-gpus: must be >= 0")


def trial_footprint(config: SFBDConfig, grid: SweepConfig, cluster: dict) -> dict[str, dict]:
    """The most a trial holds at once, per part: its driver for the whole run, and each stage
    while it runs ({"CPU": ..., "GPU": ...}; `cluster` is `ray.cluster_resources()`)."""
    from sfbd.stages import denoise, evaluate

    t = config.train
    return {
        "driver": {"CPU": grid.trial_cpus, "GPU": grid.trial_gpus},
        "train": {
            "CPU": t.num_workers * t.cpus_per_worker,
            "GPU": t.num_workers if t.use_gpu else 0,
        },
        "denoise": denoise.resources(config.denoise, cluster),
        "evaluate": evaluate.resources(config.eval, cluster),
    }


def check_concurrency(config: SFBDConfig, grid: SweepConfig, cluster: dict) -> None:
    """Refuse (one-line `ValueError`) a sweep whose `max_concurrent` trials cannot all hold
    their drivers and their largest stages' CPUs at once, or whose drivers' GPUs leave a
    stage's largest GPU request no room (the rule in this module's docstring)."""
    parts = trial_footprint(config, grid, cluster)
    driver = parts.pop("driver")
    n, eps = grid.max_concurrent, 1e-9
    stage = max(parts, key=lambda k: parts[k]["CPU"])
    need = driver["CPU"] + parts[stage]["CPU"]
    cpus = cluster.get("CPU", 0)
    if n * need > cpus + eps:
        room = int((cpus + eps) // need)
        raise ValueError(
            f"--max-concurrent {n}: a trial holds up to {need:g} CPUs at once (driver "
            f"{driver['CPU']:g} + {stage} {parts[stage]['CPU']:g}), {n} trials {n * need:g}; "
            f"the cluster has {cpus:g} CPUs, room for {room} trial(s); lower --max-concurrent "
            f"or give the stages fractions of a CPU (denoise.cpus_per_actor, eval.cpus, "
            f"train.cpus_per_worker, train.num_workers=0)"
        )
    gpus = cluster.get("GPU", 0)
    stage = max(parts, key=lambda k: parts[k]["GPU"])
    held = n * driver["GPU"]
    if held + parts[stage]["GPU"] > gpus + eps:
        raise ValueError(
            f"--max-concurrent {n} x --trial-gpus {driver['GPU']:g}: the drivers hold "
            f"{held:g} GPUs for the whole sweep and a {stage} stage needs "
            f"{parts[stage]['GPU']:g} more; the cluster has {gpus:g} GPUs"
        )


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
    import ray
    from ray import tune

    from sfbd.run import init_ray

    init_ray()
    check_concurrency(config, grid, ray.cluster_resources())
    storage, name = out / "tune", "sweep"
    # The driver's reservation, held for the trial's whole life; its stages reserve their own
    # outside it (the rule above). Tune needs some resource in a bundle: a little memory.
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
