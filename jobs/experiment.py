"""Compare SFBD with its baselines at one or more clean fractions: for each fraction one SFBD
run (as jobs/sfbd.py) with the noisy-only and all-clean baselines, then one table.

    python jobs/experiment.py --config fashion-mnist-cpu --clean-fractions 0.04,0.1 \\
        --feature-net fm_features.pt --out runs/experiment-fm
    ray job submit --working-dir . -- python jobs/experiment.py --config fashion-mnist-gpu \\
        --feature-net /shared/fm_features.pt --out /shared/runs/experiment-fm

Rows, for every clean fraction (every distance: lower is better):

    noisy-only        trained on the noisy set as if it were clean, for SFBD's whole budget
    pretrain-only     SFBD's iteration 0: trained on the clean set alone
    SFBD iteration k  after k rounds of denoise -> refit
    all-clean         trained on every original item, for SFBD's whole budget

The distance is the run's `eval.metric`; `--feature-net` switches it to `fd` in the feature
space of that network (made with jobs/train_classifier.py when the file does not exist yet).
`--extra-metrics` adds distances (swd: pixels; fid), by default FID where pytorch-fid's
Inception weights are at hand.

    OUT/cf<F>/                 the SFBD run directory of clean fraction F (baselines in it)
    OUT/results.json           every row: distances, kimg, sample grid, checkpoint
    OUT/results.md             the table and where the sample grids are
    OUT/comparison_cf<F>.png   the sample grids of fraction F side by side, in table order

Run the same command again to resume: finished stages, baselines and distances are read back.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import io
import sys
import time
from pathlib import Path

import _path  # noqa: F401  (keeps jobs/ from shadowing the sfbd package)

from sfbd.config import SFBDConfig, from_dict, load_config, preset_names  # noqa: E402
from sfbd.runfiles import read_json, write_json_atomic  # noqa: E402
from sfbd.storage import Location  # noqa: E402

JOBS = Path(__file__).resolve().parent
EXTRA = ("swd", "fid")


def load_job(name: str):
    """Another job script as a module (jobs/sfbd.py cannot be imported by name: the package
    `sfbd` owns that name)."""
    spec = importlib.util.spec_from_file_location(f"sfbd_job_{name}", JOBS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--config", required=True, help=f"a preset ({', '.join(preset_names())}) or a YAML file"
    )
    p.add_argument(
        "--clean-fractions",
        default="0.04,0.1",
        help="comma-separated clean fractions, one SFBD run each (default 0.04,0.1)",
    )
    p.add_argument("--out", default=None, help="default: runs/experiment-<config name>")
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config value for every run, as in jobs/sfbd.py (repeatable)",
    )
    p.add_argument(
        "--feature-net",
        default=None,
        help="TorchScript feature network: sets eval.metric=fd with it; trained by "
        "jobs/train_classifier.py on data.dataset (fashion-mnist, mnist) when missing",
    )
    p.add_argument(
        "--feature-net-epochs",
        type=int,
        default=2,
        help="epochs when the feature network is trained here (default 2)",
    )
    p.add_argument(
        "--extra-metrics",
        default="auto",
        help="distances besides eval.metric, computed on each row's checkpoint: a list of "
        "swd, fid, auto (fid where the Inception weights are found; the default), or none",
    )
    p.add_argument("--address", default=None, help="Ray address; default: RAY_ADDRESS or local")
    return p.parse_args(argv)


def parse_fractions(text: str) -> list[float]:
    try:
        fractions = [float(f) for f in text.split(",") if f.strip()]
    except ValueError as exc:
        raise ValueError(f"--clean-fractions {text!r}: expected numbers, e.g. 0.04,0.1") from exc
    if not fractions or any(not 0 < f < 1 for f in fractions):
        raise ValueError(f"--clean-fractions {text!r}: each must lie in (0, 1)")
    if len(set(fractions)) != len(fractions):
        raise ValueError(f"--clean-fractions {text!r}: repeated value")
    return fractions


def inception_weights_found(config: SFBDConfig) -> bool:
    if config.eval.inception_weights:
        return Path(config.eval.inception_weights).is_file()
    from sfbd.metrics.fid import hub_weights_path

    return hub_weights_path().is_file()


def extra_metrics(text: str, config: SFBDConfig) -> tuple[list[str], list[str]]:
    """(distances to add besides eval.metric, notes for the table) from `--extra-metrics`."""
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
                    "the README's 'FID weights offline')."
                )
    return [m for m in dict.fromkeys(names) if m not in ("none", config.eval.metric)], notes


def ensure_feature_net(path: Path, config: SFBDConfig, epochs: int) -> None:
    """Train the feature network with jobs/train_classifier.py unless it exists."""
    if path.is_file():
        return
    if config.data.dataset not in ("fashion-mnist", "mnist"):
        raise ValueError(
            f"--feature-net {path} does not exist, and jobs/train_classifier.py trains one for "
            f"fashion-mnist or mnist only (data.dataset is {config.data.dataset!r})"
        )
    print(f"[experiment] training the feature network {path} ({epochs} epochs)", flush=True)
    argv = ["--dataset", config.data.dataset, "--epochs", str(epochs), "--out", str(path)]
    if config.data.root:
        argv += ["--root", config.data.root]
    if load_job("train_classifier").main(argv) != 0:
        raise ValueError(f"--feature-net: training {path} failed")


# -- rows -----------------------------------------------------------------------------------


def frac_label(f: float) -> str:
    return f"{f * 100:g}%"


def run_name(f: float) -> str:
    return f"cf{f:g}"


def _grid(run_dir: Location, name: str) -> Location | None:
    for suffix in ("_samples.png", "_points.png"):
        path = run_dir / "grids" / f"{name}{suffix}"
        if path.is_file():
            return path
    return None


def collect_rows(run_dir: Location) -> tuple[SFBDConfig, list[dict]]:
    """The rows of one finished run directory, in table order, from metrics.jsonl and the
    baselines' records."""
    import yaml

    from sfbd.orchestrator import CONFIG, read_metrics

    config = from_dict(SFBDConfig, yaml.safe_load((run_dir / CONFIG).read_text()))
    t = config.train
    by_iter = {r["iteration"]: r for r in read_metrics(run_dir)}

    def row(label, key, record, kimg, ckpt):
        metric = record["metric"]
        grid = _grid(run_dir, key)
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

    def baseline(kind, label):
        rec = read_json(run_dir / "baselines" / f"{kind}.json")
        return row(
            label, f"baseline_{kind}", rec, rec["kimg"], run_dir / "baselines" / f"{kind}.pt"
        )

    rows = [baseline("noisy", "noisy-only")]
    for k in range(config.iterations + 1):
        label = "pretrain-only" if k == 0 else f"SFBD iteration {k}"
        kimg = t.pretrain_kimg + k * t.refit_kimg
        ckpt = run_dir / "checkpoints" / f"iter_{k:03d}.pt"
        rows.append(row(label, f"iter_{k:03d}", by_iter[k], kimg, ckpt))
    rows.append(baseline("all-clean", "all-clean"))
    return config, rows


def add_extra_metrics(run_dir: Location, config: SFBDConfig, rows: list[dict], names: list[str]):
    """Distances besides eval.metric for every row, from `eval.num_samples` fresh samples of
    its checkpoint (with the seeds of its evaluation: sample i depends on (seed, i)), one
    Ray task per row (a GPU each where there are GPUs), all rows at once; cached in
    `RUN/experiment/<row>.json`."""
    if not names:
        return
    import ray

    from sfbd.stages.evaluate import distance, generate_samples

    res = {"num_gpus": 1} if ray.cluster_resources().get("GPU", 0) >= 1 else {"num_cpus": 1}
    generate = ray.remote(generate_samples).options(**res)
    measure = ray.remote(distance).options(**res)
    e = config.eval
    pending = {}
    for r in rows:
        cache = run_dir / "experiment" / f"{r['key']}.json"
        done = read_json(cache) if cache.is_file() else {}
        todo = [m for m in names if m not in done]
        if todo:
            print(
                f"[experiment] {run_dir.name} {r['row']}: computing {', '.join(todo)}", flush=True
            )
            samples = generate.remote(r["checkpoint"], e.num_samples, e.steps, e.seed, e.batch_size)
            refs = {
                m: measure.remote(
                    samples,
                    str(run_dir / "data"),
                    dataclasses.replace(e, metric=m),
                    str(run_dir / "cache"),
                )
                for m in todo
            }
            pending[r["key"]] = (cache, done, refs)
    for cache, done, refs in pending.values():
        for m, ref in refs.items():
            record = ray.get(ref)
            done[m] = {"metric": record["metric"], "value": record[record["metric"]]}
        write_json_atomic(cache, done)
    for r in rows:
        done = read_json(run_dir / "experiment" / f"{r['key']}.json")
        for m in names:
            r["metrics"][done[m]["metric"]] = done[m]["value"]


def share_all_clean(first: Location, run_dir: Location) -> str | None:
    """Give `run_dir` the all-clean model of the experiment's first run, unless it has one.

    The all-clean baseline trains on every original item whatever the clean fraction, and the
    runs of one experiment differ in `data.clean_fraction` alone: its model is the same for
    every fraction, so it is trained once (it costs as much as a whole SFBD run) and evaluated
    in each run against that run's reference."""
    from sfbd.runfiles import DIGEST_SUFFIX, checkpoint_complete

    src, dst = first / "baselines" / "all-clean.pt", run_dir / "baselines" / "all-clean.pt"
    if first.path == run_dir.path or not checkpoint_complete(src):
        return None
    if not checkpoint_complete(dst) and not (run_dir / "baselines" / "all-clean.json").is_file():
        dst.write_bytes(src.read_bytes())
        dst.with_suffix_name(DIGEST_SUFFIX).write_bytes(
            src.with_suffix_name(DIGEST_SUFFIX).read_bytes()
        )
    return str(first)


def comparison_image(rows: list[dict], path: Location) -> str | None:
    """The rows' sample grids side by side (toy point plots: one above the other), each under
    its label."""
    from PIL import Image, ImageDraw

    pics = [
        (r["row"], Image.open(io.BytesIO(Location.of(r["grid"]).read_bytes())).convert("RGB"))
        for r in rows
        if r["grid"]
    ]
    if not pics:
        return None
    label_h, gap = 14, 6
    across = all(p.width <= 1.5 * p.height for _, p in pics)
    if across:
        width = sum(p.width for _, p in pics) + gap * (len(pics) - 1)
        height = label_h + max(p.height for _, p in pics)
    else:
        width = max(p.width for _, p in pics)
        height = sum(label_h + p.height for _, p in pics) + gap * (len(pics) - 1)
    canvas = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(canvas)
    x = y = 0
    for label, pic in pics:
        draw.text((x + 2, y + 1), label, fill="black")
        canvas.paste(pic, (x, y + label_h))
        if across:
            x += pic.width + gap
        else:
            y += label_h + pic.height + gap
    buffer = io.BytesIO()
    canvas.save(buffer, format="PNG")
    path.write_bytes(buffer.getvalue())
    return str(path)


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


def markdown(results: dict, out: Location) -> str:
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
    first = fractions[0]["rows"]
    for i, r in enumerate(first):
        cells = [r["row"], f"{r['kimg']:g}"]
        for f in fractions:
            metrics = f["rows"][i]["metrics"]
            cells += [_fmt(metrics.get(c)) for c in columns]
        lines.append("| " + " | ".join(cells) + " |")
    lines += [""] + [f"{n}" for n in results["notes"]]
    lines += ["", "Sample grids:", ""]
    for f in fractions:
        grids = ", ".join(f"{r['row']} `{_rel(r['grid'], out)}`" for r in f["rows"] if r["grid"])
        side = f"`{_rel(f['comparison'], out)}` (side by side); " if f.get("comparison") else ""
        lines.append(f"- {frac_label(f['clean_fraction'])} clean: {side}{grids}")
    return "\n".join(line for line in lines) + "\n"


# -- main -------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    overrides = list(args.set)
    try:
        fractions = parse_fractions(args.clean_fractions)
        config = load_config(args.config, overrides)
        if args.feature_net:
            net = Path(args.feature_net).expanduser().resolve()
            ensure_feature_net(net, config, args.feature_net_epochs)
            overrides += ["eval.metric=fd", f"eval.feature_net={net}"]
            config = load_config(args.config, overrides)
        extras, notes = extra_metrics(args.extra_metrics, config)
        out = Location.of(args.out or f"runs/experiment-{config.name}")
        out.check_writable("out")
    except (ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2

    import ray

    ray.init(address=args.address, namespace="sfbd", ignore_reinit_error=True)
    sfbd_job = load_job("sfbd")
    t0 = time.time()
    results = {
        "config": args.config,
        "overrides": list(args.set),
        "feature_net": args.feature_net and str(Path(args.feature_net).resolve()),
        "fractions": [],
        "notes": notes,
    }
    columns: list[str] = []
    for f in fractions:
        run_dir = out / run_name(f)
        print(f"[experiment] clean fraction {f:g}: {run_dir}", flush=True)
        job_args = ["--config", args.config, "--run-dir", str(run_dir)]
        job_args += ["--baselines", "noisy,all-clean"]
        for s in overrides + [f"data.clean_fraction={f}"]:
            job_args += ["--set", s]
        if args.address:
            job_args += ["--address", args.address]
        shared = share_all_clean(out / run_name(fractions[0]), run_dir)
        rc = sfbd_job.main(job_args)
        if rc != 0:
            return rc
        run_config, rows = collect_rows(run_dir)
        if shared:
            rows[-1]["trained_in"] = shared
            first = results["fractions"][0]["rows"][-1]
            rows[-1]["train_items"] = rows[-1]["train_items"] or first["train_items"]
        add_extra_metrics(run_dir, run_config, rows, extras)
        for r in rows:
            columns += [c for c in r["metrics"] if c not in columns]
        comparison = comparison_image(rows, out / f"comparison_{run_name(f)}.png")
        results["fractions"].append(
            {"clean_fraction": f, "run_dir": str(run_dir), "comparison": comparison, "rows": rows}
        )
    if len(fractions) > 1:
        results["notes"].append(
            f"all-clean does not depend on the clean fraction: trained once, in "
            f"`{run_name(fractions[0])}`, and evaluated in every run."
        )
    results["columns"] = columns
    results["seconds"] = time.time() - t0
    write_json_atomic(out / "results.json", results)
    table = markdown(results, out)
    (out / "results.md").write_text(table)
    print(f"[experiment] finished in {time.time() - t0:.1f}s; {out / 'results.md'}:\n")
    print(table, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
