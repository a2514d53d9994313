"""The Ray Tune side of sweeps: every trial is one whole SFBD run (`sfbd.run.fit`) for one
point of the search space (any config keys: grid values, random draws from ranges, seeds),
reporting the metric after pretraining and after every iteration (`ray.tune.report`), so a
scheduler such as ASHA can stop weak trials early. The results table, `best.json` and the
heatmap come from Tune's `ResultGrid` (`sfbd.sweep_results`). The CLI is `sfbd sweep`
(`tuning/sweep.py`).

How concurrent trials share the cluster. A trial's driver (the Tune function, which prepares
the data and then waits) reserves `trial_cpus` / `trial_gpus` for the trial's whole life. It
starts an orchestrator actor that reserves nothing, sits outside the trial's placement group
and runs the stages one after another; every stage reserves its own resources and frees them
when it ends:

- train: a Ray Train placement group of `train.num_workers` x `train.cpus_per_worker`, reserved
  whole or not at all; `train.num_workers = 0` (local mode) trains in the orchestrator's
  process and reserves nothing (it shares the cores' time);
- denoise: `denoise.num_actors` actors of `denoise.cpus_per_actor`, and one reading and one
  writing task of `IO_CPUS / 2` each at a time (no listing or metadata tasks);
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

from dataclasses import dataclass

from sfbd.config import SFBDConfig
from sfbd.storage import Location, Where
from sfbd.sweep_space import GridAxis, RangeAxis, SearchSpace, point_config, trial_name
from sfbd.sweep_tracking import PACKAGES

DRIVER_CPUS = 0.1  # a trial's driver prepares the data, then waits on its orchestrator
# Without any axis, a sweep is the paper's question: clean fraction x tau.
DEFAULT_GRID = (
    GridAxis("data.clean_fraction", (0.04, 0.1), "--clean-fractions"),
    GridAxis("data.tau", (0.2, 0.59), "--taus"),
)


@dataclass
class SweepConfig:
    """What a sweep varies (`space()`), how Tune schedules it, and how trials share the
    cluster. `clean_fractions` / `taus` are the shorthands `--clean-fractions` / `--taus`
    for grid axes over `data.clean_fraction` / `data.tau`."""

    grid: tuple[GridAxis, ...] = ()
    ranges: tuple[RangeAxis, ...] = ()
    seeds: int = 0  # N: every point runs with seeds 0..N-1 (0: the config's own seeds)
    samples: int = 1  # random draws of the ranges (Ray Tune's num_samples)
    clean_fractions: tuple[float, ...] | None = None
    taus: tuple[float, ...] | None = None
    scheduler: str = "fifo"  # fifo or asha
    grace_period: int = 1  # ASHA: evaluations before a trial can be stopped
    reduction_factor: float = 2.0  # ASHA: keeps the best 1/reduction_factor at each rung
    max_concurrent: int = 1
    trial_cpus: float = DRIVER_CPUS  # reserved by a trial's driver (its stages reserve their own)
    trial_gpus: float = 0.0
    callbacks: tuple[str, ...] = ()  # Ray Tune logger callbacks: mlflow, wandb (sweep_tracking)

    def space(self) -> SearchSpace:
        """The axes: the shorthands first, then `--grid`, `--range` and the seeds; without
        any, `DEFAULT_GRID`."""
        shorthands = []
        if self.clean_fractions is not None:
            shorthands.append(
                GridAxis("data.clean_fraction", tuple(self.clean_fractions), "--clean-fractions")
            )
        if self.taus is not None:
            shorthands.append(GridAxis("data.tau", tuple(self.taus), "--taus"))
        grid = (*shorthands, *self.grid)
        if not grid and not self.ranges and not self.seeds:
            grid = DEFAULT_GRID
        return SearchSpace(grid, tuple(self.ranges), self.seeds, self.samples)

    def validate(self, config: SFBDConfig | None = None) -> None:
        """One-line `ValueError`s naming the flag; with `config`, the axes' keys and values
        are checked against it too. No I/O, no cluster."""
        self.space().validate(config)
        if self.max_concurrent < 1:
            raise ValueError(f"--max-concurrent: {self.max_concurrent}; must be >= 1")
        if self.scheduler not in ("fifo", "asha"):
            raise ValueError(f"--scheduler: {self.scheduler!r}; allowed: fifo, asha")
        if self.grace_period < 1:
            raise ValueError(f"--grace-period: {self.grace_period}; must be >= 1")
        if config is not None and self.grace_period > config.iterations + 1:
            raise ValueError(
                f"--grace-period: {self.grace_period}; a trial evaluates at most "
                f"iterations + 1 = {config.iterations + 1} times (pretraining, then each iteration)"
            )
        if not self.reduction_factor > 1:
            raise ValueError(f"--reduction-factor: {self.reduction_factor:g}; must be > 1")
        if self.trial_cpus < 0 or self.trial_gpus < 0:
            raise ValueError("--trial-cpus, --trial-gpus: must be >= 0")
        for name in self.callbacks:
            if name not in PACKAGES:
                raise ValueError(f"--callback: {name!r}; allowed: {', '.join(PACKAGES)}")


def trial_footprint(config: SFBDConfig, grid: SweepConfig, cluster: dict) -> dict[str, dict]:
    """The most a trial holds at once, per part: its driver for the whole run, and each stage
    while it runs ({"CPU": ..., "GPU": ...}; `cluster` is `ray.cluster_resources()`)."""
    from sfbd.stages import denoise, evaluate
    from sfbd.stages.ingest import stream_cpus

    t = config.train
    return {
        "driver": {"CPU": grid.trial_cpus, "GPU": grid.trial_gpus},
        "train": {  # stream mode's reading tasks beside the workers (auto may stream)
            "CPU": t.num_workers * t.cpus_per_worker
            + (stream_cpus() if t.num_workers and t.ingest != "memory" else 0.0),
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


def run_trial(params: dict, base: dict, root: str, keys: list[str], seeds: bool) -> None:
    """Tune function trainable: one whole SFBD run for one point (`params`: its axis values),
    in `root/<trial_name>`."""
    import ray.tune

    from sfbd.run import fit

    point = {k: params[k] for k in keys}
    config = point_config(base, point, seeds)
    run_dir = Location.of(root) / trial_name(point)

    def report(row: dict) -> None:
        metric = row["metric"]
        ray.tune.report(
            {
                "iteration": row["iteration"],
                # ASHA's clock: pretraining is the first evaluation, iteration k the k+1-th.
                "evaluations": row["iteration"] + 1,
                "metric": row[metric],
                "metric_name": metric,
                "run_dir": str(run_dir),
            }
        )

    # The loop runs in an orchestrator actor outside the trial's placement group. A trial is
    # scored by its own metrics; a preset's comparison models are not part of it.
    fit(config, run_dir, baselines=[], on_metrics=report)


def make_scheduler(config: SFBDConfig, grid: SweepConfig):
    """None (FIFO: every trial runs to its end) or ASHA over the evaluations (pretraining
    and each of the `iterations`); a trial that reaches the last one is never cut."""
    if grid.scheduler != "asha":
        return None
    from ray import tune

    return tune.schedulers.ASHAScheduler(
        time_attr="evaluations",
        max_t=config.iterations + 1,
        grace_period=grid.grace_period,
        reduction_factor=grid.reduction_factor,
        stop_last_trials=False,
    )


def sweep(config: SFBDConfig, grid: SweepConfig, out: Where, log=print) -> tuple[list[dict], list]:
    """Run (or resume) the sweep into `out` (a path or URI); returns the results table's rows
    and the failed trials' results."""
    import ray
    from ray import tune

    from sfbd.run import init_ray
    from sfbd.sweep_results import write_results
    from sfbd.sweep_tracking import make_callbacks

    space = grid.space()
    out = Location.of(out)
    init_ray()
    check_concurrency(config, grid, ray.cluster_resources())
    storage, name = out / "tune", "sweep"
    # The driver's reservation, held for the trial's whole life; its stages reserve their own
    # outside it (the rule above). Tune needs some resource in a bundle: a little memory.
    resources = {"cpu": grid.trial_cpus, "gpu": grid.trial_gpus, "memory": 64 * 2**20}
    trainable = tune.with_resources(
        tune.with_parameters(
            run_trial,
            base=config.to_dict(),
            root=str(out / "trials"),
            keys=space.keys(),
            seeds=bool(space.seeds),
        ),
        resources,
    )
    if tune.Tuner.can_restore(str(storage / name)):
        log(f"[sweep] resuming {storage / name}")
        tuner = tune.Tuner.restore(str(storage / name), trainable=trainable, resume_errored=True)
    else:
        tuner = tune.Tuner(
            trainable,
            param_space=space.param_space(),
            tune_config=tune.TuneConfig(
                metric="metric",
                mode="min",
                scheduler=make_scheduler(config, grid),
                num_samples=space.samples,
                max_concurrent_trials=grid.max_concurrent,
            ),
            run_config=tune.RunConfig(
                name=name,
                storage_path=str(storage),
                callbacks=make_callbacks(grid.callbacks, config.name, out),
            ),
        )
    results = tuner.fit()
    rows = write_results(results, space, config, out)
    failed = [r for r in results if r.error]
    return rows, failed
