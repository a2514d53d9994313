"""SFBD against its baselines at one or more clean fractions, one table (`sfbd experiment`):
for each fraction one SFBD run (`sfbd.run.fit`, Lu, Wu & Yu 2025, Algorithm 1) with the
noisy-only and all-clean baselines (`sfbd.baselines`), then the rows of all runs together.

Rows, for every clean fraction (every distance: lower is better):

    noisy-only        trained on the noisy set as if it were clean, for SFBD's whole budget
    pretrain-only     SFBD's iteration 0: trained on the clean set alone
    SFBD iteration k  after k rounds of denoise -> refit
    all-clean         trained on every original item, for SFBD's whole budget

The distance is the runs' `eval.metric`; a feature network switches it to `fd` in that
network's feature space (trained by `sfbd.metrics.classifier.train_feature_net` when the
file does not exist yet). Extra metrics add distances (swd: pixels; fid), computed on each
row's checkpoint from the samples of its evaluation.

    OUT/cf<F>/                 the SFBD run directory of clean fraction F (baselines in it)
    OUT/results.json           every row: distances, kimg, sample grid, checkpoint
    OUT/results.md             the table and where the sample grids are
    OUT/comparison_cf<F>.png   the sample grids of fraction F side by side, in table order

Run it again to resume: finished stages, baselines and distances are read back.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from sfbd.config import EvalConfig, SFBDConfig, load_config
from sfbd.rundir import RunDir
from sfbd.runfiles import read_json, write_json_atomic
from sfbd.storage import Location, Where

EXTRA = ("swd", "fid")


def check_fractions(fractions: Sequence[float]) -> list[float]:
    """The clean fractions of an experiment: at least one, each in (0, 1), none repeated."""
    text = ",".join(f"{f:g}" for f in fractions)
    if not fractions or any(not 0 < f < 1 for f in fractions):
        raise ValueError(f"--clean-fractions {text!r}: each must lie in (0, 1)")
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
    from sfbd.metrics.classifier import train_feature_net

    if path.is_file():
        return
    if config.data.dataset not in ("fashion-mnist", "mnist"):
        raise ValueError(
            f"--feature-net {path} does not exist, and sfbd train-classifier trains one for "
            f"fashion-mnist or mnist only (data.dataset is {config.data.dataset!r})"
        )
    log(f"[experiment] training the feature network {path} ({epochs} epochs)")
    acc = train_feature_net(config.data.dataset, path, epochs, root=config.data.root, log=log)
    log(f"[experiment] feature network {path}: test accuracy {acc:.4f}")


# -- rows -----------------------------------------------------------------------------------


def frac_label(f: float) -> str:
    return f"{f * 100:g}%"


def run_name(f: float) -> str:
    """The run directory of clean fraction `f` under the experiment's folder."""
    return f"cf{f:g}"


def _grid(run: RunDir, prefix: str) -> Location | None:
    for what in ("samples", "points"):
        path = run.grid(prefix, what)
        if path.is_file():
            return path
    return None


def collect_rows(run: RunDir) -> tuple[SFBDConfig, list[dict]]:
    """The rows of one finished run directory, in table order, from its metrics and the
    baselines' records."""
    config = run.read_config()
    t = config.train
    by_iter = {r["iteration"]: r for r in run.read_metrics()}

    def row(label: str, key: str, record: dict, kimg: float, ckpt: Location) -> dict:
        metric = record["metric"]
        grid = _grid(run, key)
        return {
            "row": label,
            "key": key,
            "kimg": kimg,
            "metrics": {metric: record[metric]},
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
    pending = []
    for r in rows:
        cache = run.extra_metrics(r["key"])
        done = read_json(cache) if cache.is_file() else {}
        todo = [m for m in names if m not in done]
        if todo:
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


def share_all_clean(first: RunDir, run: RunDir) -> str | None:
    """Give `run` the all-clean model of the experiment's first run, unless it has one.

    The all-clean baseline trains on every original item whatever the clean fraction, and the
    runs of one experiment differ in `data.clean_fraction` alone: its model is the same for
    every fraction, so it is trained once (it costs as much as a whole SFBD run) and evaluated
    in each run against that run's reference. Returns the first run's directory when shared."""
    from sfbd.runfiles import checkpoint_complete, read_checkpoint, save_checkpoint

    src, dst = first.baseline_checkpoint("all-clean"), run.baseline_checkpoint("all-clean")
    if first.root.path == run.root.path or not checkpoint_complete(src):
        return None
    if not checkpoint_complete(dst) and not run.baseline_result("all-clean").is_file():
        save_checkpoint(dst, read_checkpoint(src))  # verified bytes, then their sha256
    return str(first)


# -- the table ------------------------------------------------------------------------------


def _fmt(value) -> str:
    if value is None:
        return "–"
    return f"{value:.4g}" if abs(value) < 1e4 else f"{value:.0f}"


def _rel(path: str | None, out: Location) -> str | None:
    if path is None:
        return None
    prefix = str(out).rstrip("/") + "/"
    return path[len(prefix) :] if path.startswith(prefix) else path


def markdown(results: dict, out: Where) -> str:
    """The results as a Markdown table with the notes and where the sample grids are."""
    out = Location.of(out)
    fractions = results["fractions"]
    columns = results["columns"]
    head = ["model", "kimg"] + [
        f"{c} ({frac_label(f['clean_fraction'])} clean)" for f in fractions for c in columns
    ]
    lines = [
        f"Config `{results['config']}`"
        + (
            f" with {' '.join('`--set ' + s + '`' for s in results['overrides'])}"
            if results["overrides"]
            else ""
        )
        + f"; distances: {', '.join(columns)} (lower is better)"
        + (f"; feature net {results['feature_net']}" if results.get("feature_net") else "")
        + ".",
        "",
        "| " + " | ".join(head) + " |",
        "|" + "---|" * len(head),
    ]
    for i, r in enumerate(fractions[0]["rows"]):
        cells = [r["row"], f"{r['kimg']:g}"]
        for f in fractions:
            metrics = f["rows"][i]["metrics"]
            cells += [_fmt(metrics.get(c)) for c in columns]
        lines.append("| " + " | ".join(cells) + " |")
    lines += [""] + list(results["notes"])
    lines += ["", "Sample grids:", ""]
    for f in fractions:
        grids = ", ".join(f"{r['row']} `{_rel(r['grid'], out)}`" for r in f["rows"] if r["grid"])
        side = f"`{_rel(f['comparison'], out)}` (side by side); " if f.get("comparison") else ""
        lines.append(f"- {frac_label(f['clean_fraction'])} clean: {side}{grids}")
    return "\n".join(lines) + "\n"


# -- the experiment -------------------------------------------------------------------------


def run_experiment(
    config: str,
    fractions: Sequence[float],
    out: Where | None = None,
    *,
    overrides: Sequence[str] = (),
    feature_net: str | None = None,
    feature_net_epochs: int = 2,
    extra: str = "auto",
    address: str | None = None,
    log: Callable[[str], None] = print,
) -> dict:
    """Run (or resume) the experiment: `config` is a preset name or a YAML path, `overrides`
    apply to every run, `fractions` are the clean fractions. Every input is checked before
    any work (one-line `ValueError`/`OSError`); a failed stage raises `StageFailed`. Writes
    `OUT/results.json`, `OUT/results.md` and the comparison pictures; returns the results."""
    from sfbd.run import fit, init_ray
    from sfbd.viz import comparison_image

    fractions = check_fractions(fractions)
    given, overrides = list(overrides), list(overrides)
    base = load_config(config, given)
    for f in fractions:  # every run's config, before any work
        load_config(config, [*given, f"data.clean_fraction={f}"])
    extra_metrics(extra, base)
    out = Location.of(out or f"runs/experiment-{base.name}")
    out.check_writable("out")
    if feature_net:
        net = Path(feature_net).expanduser().resolve()
        ensure_feature_net(net, base, feature_net_epochs, log=log)
        overrides += ["eval.metric=fd", f"eval.feature_net={net}"]
        base = load_config(config, overrides)
    extras, notes = extra_metrics(extra, base)
    per_run = {f: [*overrides, f"data.clean_fraction={f}"] for f in fractions}

    init_ray(address)
    t0 = time.time()
    results = {
        "config": config,
        "out": str(out),
        "overrides": given,
        "feature_net": base.eval.feature_net if feature_net else None,
        "fractions": [],
        "notes": notes,
    }
    columns: list[str] = []
    first = RunDir(out / run_name(fractions[0]))
    for f in fractions:
        run = RunDir(out / run_name(f))
        log(f"[experiment] clean fraction {f:g}: {run}")
        shared = share_all_clean(first, run)
        fit(config, run, overrides=per_run[f], address=address, baselines=["noisy", "all-clean"])
        run_config, rows = collect_rows(run)
        if shared:
            rows[-1]["trained_in"] = shared
            first_row = results["fractions"][0]["rows"][-1]
            rows[-1]["train_items"] = rows[-1]["train_items"] or first_row["train_items"]
        add_extra_metrics(run, run_config, rows, extras, log=log)
        for r in rows:
            columns += [c for c in r["metrics"] if c not in columns]
        picture = out / f"comparison_{run_name(f)}.png"
        drawn = comparison_image([(r["row"], r["grid"]) for r in rows if r["grid"]], picture)
        results["fractions"].append(
            {
                "clean_fraction": f,
                "run_dir": str(run),
                "comparison": str(picture) if drawn else None,
                "rows": rows,
            }
        )
    if len(fractions) > 1:
        results["notes"].append(
            f"all-clean does not depend on the clean fraction: trained once, in "
            f"`{run_name(fractions[0])}`, and evaluated in every run."
        )
    results["columns"] = columns
    results["seconds"] = time.time() - t0
    write_json_atomic(out / "results.json", results)
    (out / "results.md").write_text(markdown(results, out))
    log(f"[experiment] finished in {results['seconds']:.1f}s; {out / 'results.md'}")
    return results
