"""SFBD against its baselines at one or more clean fractions, one table (`sfbd experiment`):
for each fraction one SFBD run (`sfbd.run.fit`, Lu, Wu & Yu 2025, Algorithm 1) with the
noisy-only, clean-only and all-clean baselines (`sfbd.baselines`), then the rows of all runs
together.

Rows, for every clean fraction (every distance: lower is better):

    noisy-only        trained on the noisy set as if it were clean, for SFBD's whole budget
    pretrain-only     SFBD's iteration 0: trained on the clean set alone
    SFBD iteration k  after k rounds of denoise -> refit
    SFBD, kept by noisy_distance
                      the iteration with the lowest noisy_distance (`checkpoints/best.pt`):
                      what a user without clean originals keeps
    pretrain-only, same budget
                      trained on the clean set alone for SFBD's whole budget (`clean-only`):
                      SFBD's gain over pretraining, not the refits' extra training
    all-clean         trained on every original item, for SFBD's whole budget

The distance is the runs' `eval.metric`; a feature network switches it to `fd` in that
network's feature space (trained by `sfbd.metrics.classifier.train_feature_net` when the
file does not exist yet). Extra metrics add distances (swd: pixels; fid), computed on each
row's checkpoint from the samples of its evaluation.

With `seeds` N > 1 every fraction has N runs (seed = data.seed = 0..N-1) and every cell of
the table is mean +/- std over them (`sfbd.studies.experiment_table`).

    OUT/cf<F>/                 the SFBD run directory of clean fraction F, seed 0 (baselines
                               in it); OUT/cf<F>-seed<S>/ that of seed S >= 1
    OUT/results.json           every run's rows (distances, kimg, sample grid, checkpoint)
                               and the rows over the seeds (mean, std, n, values)
    OUT/results.md             the table and where the sample grids are
    OUT/comparison_<run>.png   a run's sample grids side by side, in table order

Run it again to resume: finished stages, baselines and distances are read back.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from sfbd.config import EvalConfig, SFBDConfig, load_config
from sfbd.rundir import RunDir
from sfbd.runfiles import (
    DIGEST_SUFFIX,
    checkpoint_complete,
    read_checkpoint,
    read_json,
    save_checkpoint,
    write_json_atomic,
)
from sfbd.stopping import best_row
from sfbd.storage import Location, Where
from sfbd.studies.experiment_table import aggregate_rows, markdown

__all__ = ["markdown", "run_experiment"]

EXTRA = ("swd", "fid")
# The data keys that the all-clean model does not depend on: it trains on every item of the
# source (not `pretrain`'s), whatever the split and however the splits are stored.
SPLIT_KEYS = (
    "clean_fraction",
    "tau",
    "holdout_fraction",
    "pretrain",
    "pretrain_limit",
    "pretrain_classes",
    "shard_size",
)


def check_seeds(seeds: int) -> int:
    """The number of seeds of an experiment: at least one."""
    if seeds < 1:
        raise ValueError("--seeds: must be >= 1")
    return seeds


def check_fractions(fractions: Sequence[float]) -> list[float]:
    """The clean fractions of an experiment: at least one, each in [0, 1) (0: every item
    observed noisy, the clean set from `data.pretrain`), none repeated."""
    text = ",".join(f"{f:g}" for f in fractions)
    if not fractions or any(not 0 <= f < 1 for f in fractions):
        raise ValueError(
            f"--clean-fractions {text!r}: each must lie in [0, 1) (0 with data.pretrain)"
        )
    if len(set(fractions)) != len(fractions):
        raise ValueError(f"--clean-fractions {text!r}: repeated value")
    return list(fractions)


def inception_weights_found(config: SFBDConfig) -> bool:
    """Whether FID can be computed offline: pytorch-fid's Inception weights are at hand."""
    if config.eval.inception_weights:
        return Path(config.eval.inception_weights).is_file()
    from sfbd.metrics.fid import hub_weights_path

    return hub_weights_path().is_file()


def extra_metrics(text: str, config: SFBDConfig) -> tuple[list[str], list[str]]:
    """(distances to add besides eval.metric, notes for the table) from a comma-separated list
    of swd, fid, auto (fid where the Inception weights are found) and none."""
    names = [m.strip() for m in text.split(",") if m.strip()]
    unknown = sorted(set(names) - {*EXTRA, "auto", "none"})
    if unknown:
        raise ValueError(f"--extra-metrics: unknown {unknown}; allowed: swd, fid, auto, none")
    images = config.network.preset != "mlp"
    if "fid" in names and not images:
        raise ValueError("--extra-metrics: fid needs images; the config models vectors")
    notes = []
    if "auto" in names:
        names.remove("auto")
        if images and config.eval.metric != "fid" and "fid" not in names:
            if inception_weights_found(config):
                names.append("fid")
            else:
                notes.append(
                    "FID: not computed (pytorch-fid's Inception weights were not found; see "
                    "docs/evaluation.md, 'FID weights offline')."
                )
    return [m for m in dict.fromkeys(names) if m not in ("none", config.eval.metric)], notes


def ensure_feature_net(
    path: Path, config: SFBDConfig, epochs: int, log: Callable[[str], None] = print
) -> None:
    """Train the feature network (`train_feature_net`) on `data.dataset` unless it exists."""
    from sfbd.metrics import classifier

    if path.is_file():
        return
    if config.data.dataset not in ("fashion-mnist", "mnist"):
        raise ValueError(
            f"--feature-net {path} does not exist, and sfbd train-classifier trains one for "
            f"fashion-mnist or mnist only (data.dataset is {config.data.dataset!r})"
        )
    classifier.ensure_feature_net(path, config.data.dataset, epochs, config.data.root, log)


# -- rows -----------------------------------------------------------------------------------


def run_name(f: float, seed: int = 0) -> str:
    """The run directory of clean fraction `f` and seed `seed` under the experiment's folder
    (seed 0 keeps the name of the runs before `--seeds`, so they resume)."""
    return f"cf{f:g}" if seed == 0 else f"cf{f:g}-seed{seed}"


def seed_overrides(seed: int) -> list[str]:
    """The overrides of seed `seed`'s runs: the model's and the data split's seed."""
    return [f"seed={seed}", f"data.seed={seed}"]


def _grid(run: RunDir, prefix: str) -> Location | None:
    for what in ("samples", "points"):
        path = run.grid(prefix, what)
        if path.is_file():
            return path
    return None


SAME_BUDGET = "pretrain-only, same budget"
# The share of a row's samples that the classifier puts in the classes the pretraining set
# lacks (`data.pretrain_classes` with every item observed noisy).
LACKING = "lacking_classes_share"
KEPT = "SFBD, kept by noisy_distance"


def collect_rows(run: RunDir) -> tuple[SFBDConfig, list[dict]]:
    """The rows of one finished run directory, in table order, from its metrics and the
    baselines' records."""
    config = run.read_config()
    t = config.train
    by_iter = {r["iteration"]: r for r in run.read_metrics()}
    lacking = config.data.classes_pretraining_lacks()

    def row(label: str, key: str, record: dict, kimg: float, ckpt: Location) -> dict:
        metric = record["metric"]
        grid = _grid(run, key)
        metrics = {metric: record[metric]}
        # KID beside FID / fd: unbiased at small sample counts (runs from before it lack it,
        # and noisy_distance too).
        for key in ("kid", "noisy_distance"):
            if record.get(key) is not None:
                metrics[key] = record[key]
        if lacking and record.get("class_shares"):  # what pretraining could not draw
            metrics[LACKING] = sum(record["class_shares"][c] for c in lacking)
        return {
            "row": label,
            "key": key,
            "kimg": kimg,
            "metrics": metrics,
            "feature_net": record.get("feature_net"),
            "train_items": record.get("train_items"),
            "grid": str(grid) if grid else None,
            "checkpoint": str(ckpt),
        }

    def baseline(kind: str, label: str) -> dict:
        rec = read_json(run.baseline_result(kind))
        return row(label, f"baseline_{kind}", rec, rec["kimg"], run.baseline_checkpoint(kind))

    rows = [baseline("noisy", "noisy-only")]
    for k in sorted(by_iter):  # fewer than config.iterations after an early stop
        label = "pretrain-only" if k == 0 else f"SFBD iteration {k}"
        kimg = t.pretrain_kimg + k * t.refit_kimg
        rows.append(row(label, run.grid_prefix(k), by_iter[k], kimg, run.checkpoint(k)))
    best = best_row(list(by_iter.values()))
    if best is not None:  # computed from the rows, so runs from before best.pt have it too
        k = best["iteration"]
        kimg = t.pretrain_kimg + k * t.refit_kimg
        rows.append(row(KEPT, run.grid_prefix(k), best, kimg, run.checkpoint(k)))
    if run.baseline_result("clean-only").is_file():  # experiments from before it lack it
        rows.append(baseline("clean-only", SAME_BUDGET))
    rows.append(baseline("all-clean", "all-clean"))
    return config, rows


def row_distances(
    checkpoint: str, data_dir: str, config: EvalConfig, names: list[str], cache_dir: str
) -> dict:
    """`config.num_samples` samples of a checkpoint (with the seeds of its evaluation: sample
    i depends on (seed, i)), and their distance of every metric in `names`."""
    from sfbd.stages.evaluate import distance, generate_samples

    c = config
    samples = generate_samples(checkpoint, c.num_samples, c.steps, c.seed, c.batch_size)
    done = {}
    for m in names:
        record = distance(samples, data_dir, dataclasses.replace(c, metric=m), cache_dir)
        done[m] = {"metric": record["metric"], "value": record[record["metric"]]}
    return done


def add_extra_metrics(
    run: RunDir,
    config: SFBDConfig,
    rows: list[dict],
    names: list[str],
    log: Callable[[str], None] = print,
) -> None:
    """Distances besides eval.metric for every row (`row_distances`), one Ray task per row
    (a GPU each where there are GPUs), all rows at once; cached in the run."""
    if not names:
        return
    import ray

    res = {"num_gpus": 1} if ray.cluster_resources().get("GPU", 0) >= 1 else {"num_cpus": 1}
    task = ray.remote(row_distances).options(**res)
    pending, keys = [], set()
    for r in rows:
        cache = run.extra_metrics(r["key"])
        done = read_json(cache) if cache.is_file() else {}
        todo = [m for m in names if m not in done]
        if todo and r["key"] not in keys:  # the kept row repeats an iteration's key
            keys.add(r["key"])
            log(f"[experiment] {run.name} {r['row']}: computing {', '.join(todo)}")
            ref = task.remote(r["checkpoint"], str(run.data), config.eval, todo, str(run.cache))
            pending.append((cache, done, ref))
    for cache, done, ref in pending:
        done.update(ray.get(ref))
        write_json_atomic(cache, done)
    for r in rows:
        done = read_json(run.extra_metrics(r["key"]))
        for m in names:
            r["metrics"][done[m]["metric"]] = done[m]["value"]


def all_clean_identity(run: RunDir) -> dict:
    """What the all-clean model of a run with finished SFBD stages depends on: the model's
    seed, the source of the data set (not the split: it trains on every original item), the
    network, the training settings and the budget (`budget_kimg`: smaller after an early
    stop)."""
    from sfbd.baselines import budget_kimg

    config = run.read_config()
    data = dataclasses.asdict(config.data)
    for key in SPLIT_KEYS:
        data.pop(key)
    return {
        "seed": config.seed,
        "data": data,
        "network": dataclasses.asdict(config.network),
        "train": dataclasses.asdict(config.train),
        "kimg": budget_kimg(run, config),
    }


def _digest(path: Location) -> str | None:
    sidecar = path.with_suffix_name(DIGEST_SUFFIX)
    return sidecar.read_text().strip() if sidecar.is_file() else None


def all_clean_pending(run: RunDir) -> bool:
    """Whether `run` has neither an all-clean model nor its evaluation yet."""
    return not (
        checkpoint_complete(run.baseline_checkpoint("all-clean"))
        or run.baseline_result("all-clean").is_file()
    )


def share_all_clean(earlier: Sequence[RunDir], run: RunDir) -> RunDir | None:
    """Give `run` the all-clean model of an earlier run that trained the same one
    (`all_clean_identity`), unless it has one; returns that run, or None.

    The all-clean baseline trains on every original item whatever the clean fraction: runs
    that differ in `data.clean_fraction` alone (the fractions of one seed, never two seeds)
    train the same model, so it is trained once (it costs as much as a whole SFBD run) and
    evaluated in each run against that run's reference. `run`'s SFBD stages must have
    finished (its budget is known then). A run that has its model already names the run it
    was copied from (same sha256), if any."""
    sources = [
        r
        for r in earlier
        if r.root.path != run.root.path and checkpoint_complete(r.baseline_checkpoint("all-clean"))
    ]
    dst = run.baseline_checkpoint("all-clean")
    if not all_clean_pending(run):
        mine = _digest(dst)
        return next(
            (r for r in sources if mine and _digest(r.baseline_checkpoint("all-clean")) == mine),
            None,
        )
    if not run.read_state().get("finished"):
        return None
    mine = all_clean_identity(run)
    for r in sources:
        if all_clean_identity(r) == mine:
            save_checkpoint(dst, read_checkpoint(r.baseline_checkpoint("all-clean")))
            return r
    return None


# -- the experiment -------------------------------------------------------------------------


def run_experiment(
    config: str,
    fractions: Sequence[float],
    out: Where | None = None,
    *,
    seeds: int = 1,
    overrides: Sequence[str] = (),
    feature_net: str | None = None,
    feature_net_epochs: int = 2,
    extra: str = "auto",
    address: str | None = None,
    log: Callable[[str], None] = print,
) -> dict:
    """Run (or resume) the experiment: `config` is a preset name or a YAML path, `overrides`
    apply to every run, `fractions` are the clean fractions, `seeds` the runs per fraction
    (seed s: `seed_overrides(s)` after `overrides`). Every input is checked before any work
    (one-line `ValueError`/`OSError`); a failed stage raises `StageFailed`. Writes
    `OUT/results.json`, `OUT/results.md` and the comparison pictures; returns the results."""
    from sfbd.baselines import KINDS
    from sfbd.run import fit, init_ray
    from sfbd.viz import comparison_image

    seeds = check_seeds(seeds)
    fractions = check_fractions(fractions)
    given, overrides = list(overrides), list(overrides)
    if seeds > 1:
        fixed = [o for o in given if o.split("=")[0].strip() in ("seed", "data.seed")]
        if fixed:
            raise ValueError(
                f"--seeds: sets seed and data.seed of every run; drop --set {fixed[0]}"
            )
    # Every run sets its clean fraction: the base config is the first run's (a preset's own
    # fraction may not hold with the overrides, e.g. 0 once data.pretrain=null).
    first = [f"data.clean_fraction={fractions[0]}"]
    base = load_config(config, [*given, *first])
    last = seed_overrides(seeds - 1) if seeds > 1 else []
    for f in fractions:  # every run's config, before any work
        load_config(config, [*given, f"data.clean_fraction={f}", *last])
    extra_metrics(extra, base)
    out = Location.of(out or f"runs/experiment-{base.name}")
    out.check_writable("out")
    if feature_net:
        net = Path(feature_net).expanduser().resolve()
        ensure_feature_net(net, base, feature_net_epochs, log=log)
        overrides += ["eval.metric=fd", f"eval.feature_net={net}"]
        base = load_config(config, [*overrides, *first])
    extras, notes = extra_metrics(extra, base)

    init_ray(address)
    t0 = time.time()
    runs: dict[float, list[dict]] = {f: [] for f in fractions}
    done: dict[int, list[RunDir]] = {s: [] for s in range(seeds)}  # finished runs by seed
    shared: dict[str, str] = {}  # run -> the run its all-clean model was trained in
    columns: list[str] = []
    # Seed by seed: an interrupted experiment has whole tables of the first seeds.
    for s in range(seeds):
        for f in fractions:
            run = RunDir(out / run_name(f, s))
            per_run = [*overrides, f"data.clean_fraction={f}"]
            per_run += seed_overrides(s) if seeds > 1 else []
            log(f"[experiment] clean fraction {f:g}, seed {s}: {run}")
            if done[s] and all_clean_pending(run):
                # The SFBD stages first: whether an earlier run's all-clean model is this
                # run's depends on its budget, known once it has stopped.
                first = [k for k in KINDS if k != "all-clean"]
                fit(config, run, overrides=per_run, address=address, baselines=first)
            source = share_all_clean(done[s], run)
            fit(config, run, overrides=per_run, address=address, baselines=list(KINDS))
            run_config, rows = collect_rows(run)
            if source is not None:
                shared[run_name(f, s)] = source.name
                rows[-1]["trained_in"] = str(source)
                trained = read_json(source.baseline_result("all-clean"))
                rows[-1]["train_items"] = rows[-1]["train_items"] or trained.get("train_items")
            add_extra_metrics(run, run_config, rows, extras, log=log)
            for r in rows:
                columns += [c for c in r["metrics"] if c not in columns]
            picture = out / f"comparison_{run_name(f, s)}.png"
            drawn = comparison_image(
                [(r["row"], r["grid"]) for r in rows if r["grid"] and r["row"] != KEPT], picture
            )
            runs[f].append(
                {
                    "seed": s,
                    "run_dir": str(run),
                    "comparison": str(picture) if drawn else None,
                    "rows": rows,
                }
            )
            done[s].append(run)
    by_source: dict[str, list[str]] = {}
    for name, source in shared.items():
        by_source.setdefault(source, []).append(name)
    if by_source:
        notes.append(
            "all-clean does not depend on the clean fraction: "
            + "; ".join(
                f"the model trained in `{src}` is also evaluated in "
                + ", ".join(f"`{n}`" for n in names)
                for src, names in by_source.items()
            )
            + "."
        )
    results = {
        "config": config,
        "out": str(out),
        "overrides": given,
        "seeds": seeds,
        "feature_net": base.eval.feature_net if feature_net else None,
        "fractions": [
            {
                "clean_fraction": f,
                "runs": runs[f],
                "rows": aggregate_rows([r["rows"] for r in runs[f]]),
            }
            for f in fractions
        ],
        "notes": notes,
        "columns": columns,
        "seconds": time.time() - t0,
    }
    write_json_atomic(out / "results.json", results)
    (out / "results.md").write_text(markdown(results, out))
    log(f"[experiment] finished in {results['seconds']:.1f}s; {out / 'results.md'}")
    return results
