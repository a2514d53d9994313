"""Ray Tune sweeps on the toy. The main sweep runs a learning rate (a non-data key; the clean
fraction given by its shorthand) with 3 seeds, two trials at a time on the suite's 2 CPUs:
table, best.json, heatmap, the trials' overlap, and resume after the sweep is killed when the
first trial has finished (one still running, one not started). A second, small sweep shows
ASHA stopping a weak trial, a URI --out, and the MLflow / W&B callbacks. The rest is argument
checking, before Ray starts."""

import contextlib
import csv
import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from sfbd.cli import main
from sfbd.config import load_config
from sfbd.rundir import RunDir
from sfbd.sweep import SweepConfig, check_concurrency

ROOT = Path(__file__).resolve().parents[1]
SMALL = [
    "iterations=1",
    "data.num=2000",
    "train.pretrain_kimg=10",
    "train.refit_kimg=10",
    "train.checkpoint_kimg=10",
    "eval.num_samples=1000",
    "denoise.steps=4",
    # Up to three trials on 2 CPUs: each holds at most 0.1 (driver) + 0.5 (denoise: an actor
    # of 0.25 and a writing task of 0.25; evaluate: 0.5) CPUs; training runs in local mode.
    "train.num_workers=0",
    "denoise.cpus_per_actor=0.25",
    "eval.cpus=0.5",
]
LR = 2e-3  # toy2d's own is 3e-3


def _args(out, address):
    args = [
        "--config",
        "toy2d",
        "--clean-fractions",
        "0.05",
        "--grid",
        f"train.lr={LR}",
        "--seeds",
        "3",
        "--max-concurrent",
        "2",
        "--out",
        str(out),
        "--address",
        address,
    ]
    return args + [a for s in SMALL for a in ("--set", s)]


def _rows(out):
    with open(out / "results.csv") as f:
        return list(csv.DictReader(f))


def test_sweep_resumes_after_interruption_and_writes_table_and_heatmap(ray_cluster, tmp_path):
    out = tmp_path / "sweep"
    cmd = [sys.executable, str(ROOT / "tuning" / "sweep.py")] + _args(out, ray_cluster)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        cmd,
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    # Interrupt once the first trial has finished its whole run.
    deadline = time.time() + 400
    try:
        while time.time() < deadline:
            if any(
                (d / "state.json").is_file()
                and '"finished": true' in (d / "state.json").read_text()
                for d in (out / "trials").glob("*")
            ):
                break
            assert proc.poll() is None, "the sweep ended before its first trial finished"
            time.sleep(0.5)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    finished_first = [
        d.name
        for d in (out / "trials").glob("*")
        if (d / "state.json").is_file() and '"finished": true' in (d / "state.json").read_text()
    ]
    assert finished_first and not (out / "results.csv").exists()
    stamps = {
        n: (out / "trials" / n / "checkpoints" / "iter_001.pt").stat().st_mtime_ns
        for n in finished_first
    }

    assert main(["sweep", *_args(out, ray_cluster)]) == 0
    rows = _rows(out)
    points = sorted(
        (float(r["data.clean_fraction"]), float(r["train.lr"]), int(r["seed"])) for r in rows
    )
    assert points == [(0.05, LR, 0), (0.05, LR, 1), (0.05, LR, 2)]
    assert all(r["metric_name"] == "swd_true" and r["iterations_done"] == "1" for r in rows)
    assert {r["status"] for r in rows} == {"finished"}
    assert (out / "heatmap.png").stat().st_size > 0
    # --seeds sets the training seed and the data seed of each trial.
    for r in rows:
        config = load_config(str(Path(r["run_dir"]) / "config.yaml"), [])
        assert (config.seed, config.data.seed, config.train.lr) == (
            int(r["seed"]),
            int(r["seed"]),
            float(r["train.lr"]),
        )
    summary = json.loads((out / "best.json").read_text())
    top = min(rows, key=lambda r: float(r["final_metric"]))
    assert summary["best"]["run_dir"] == top["run_dir"]
    assert summary["best"]["metric"] == float(top["final_metric"])
    assert summary["best"]["set"] == [
        "data.clean_fraction=0.05",
        f"train.lr={float(top['train.lr'])}",
        f"seed={top['seed']}",
        f"data.seed={top['seed']}",
    ]
    assert summary["best_mean_over_seeds"]["seeds"] == [0, 1, 2]
    # The trial that had finished before the interruption was not trained again.
    for name, stamp in stamps.items():
        assert (out / "trials" / name / "checkpoints" / "iter_001.pt").stat().st_mtime_ns == stamp
    # Two trials ran at the same time: both started their stages before either ended.
    spans = []
    for d in sorted((out / "trials").glob("*")):
        stages = [s for s in RunDir(d).read_state()["completed"].values() if "started" in s]
        spans.append((min(s["started"] for s in stages), max(s["finished"] for s in stages)))
    assert len(spans) == 3
    spans = sorted(spans)[:2]
    overlap = min(end for _, end in spans) - max(start for start, _ in spans)
    assert overlap > 0, spans
    print(f"both trials ran together for {overlap:.1f}s")
    print("sweep table:", [(r["train.lr"], r["seed"], r["final_metric"]) for r in rows])


def test_sweep_rejects_bad_values(tmp_path, capsys):
    assert (
        main(
            [
                "sweep",
                "--config",
                "toy2d",
                "--clean-fractions",
                "0,0.5",
                "--out",
                str(tmp_path / "s"),
            ]
        )
        == 2
    )
    assert "--clean-fractions" in capsys.readouterr().err
    assert not (tmp_path / "s").exists()


def _no_ray(monkeypatch):
    """Make starting Ray fail the test: bad input must be refused before it."""

    def refuse(*a, **k):
        raise AssertionError("Ray was started")

    monkeypatch.setattr("sfbd.run.init_ray", refuse)


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--grid", "train.nope=1,2"], "error: --grid train.nope: config: unknown key train.nope;"),
        (["--grid", "train.lr="], "error: --grid train.lr: no values;"),
        (["--grid", "train.lr"], "error: --grid 'train.lr': expected KEY=V1,V2"),
        (["--grid", "train.lr=fast"], "error: --grid train.lr: config: train.lr = 'fast'"),
        (["--grid", "data.tau=0.3,0.30"], "error: --grid data.tau: 0.3,0.3 repeats a value"),
        (["--range", "train.lr=1e-2:1e-4"], "error: --range train.lr: LOW 0.01 must be below"),
        (["--range", "data.tau=0:1:log"], "error: --range data.tau: a log range needs LOW > 0"),
        (["--range", "eval.steps=4:x"], "error: --range eval.steps: '4:x'; LOW and HIGH must be"),
        (["--range", "nope=1:2"], "error: --range nope: config: unknown key nope;"),
        (["--samples", "4"], "error: --samples: draws the --range axes"),
        (["--seeds", "2", "--grid", "data.seed=1,2"], "error: --seeds: --grid data.seed already"),
        (
            ["--taus", "0.3", "--grid", "data.tau=0.5"],
            "error: --grid data.tau: data.tau is already",
        ),
        (["--scheduler", "asha", "--grace-period", "3"], "error: --grace-period: 3; a trial"),
    ],
)
def test_sweep_refuses_bad_axes_in_one_line_before_ray(
    flags, message, tmp_path, capsys, monkeypatch
):
    _no_ray(monkeypatch)
    out = tmp_path / "s"
    args = ["sweep", "--config", "toy2d", "--set", "iterations=1", "--out", str(out)]
    assert main([*args, *flags]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(message) and len(err.splitlines()) == 1, err
    assert not out.exists()


def test_a_missing_tracking_package_is_named_before_ray(tmp_path, capsys, monkeypatch):
    _no_ray(monkeypatch)
    real = importlib.import_module

    def without_mlflow(name, *a, **k):
        if name == "mlflow":
            raise ImportError("No module named 'mlflow'")
        return real(name, *a, **k)

    monkeypatch.setattr(importlib, "import_module", without_mlflow)
    args = ["sweep", "--config", "toy2d", "--callback", "mlflow", "--out", str(tmp_path / "s")]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err == (
        "error: --callback mlflow: the package mlflow is not installed; "
        "pip install 'sfbd[track]' (or pip install mlflow)"
    )


def test_search_space_of_grids_ranges_and_seeds():
    from ray import tune

    from sfbd.sweep_space import parse_grid, parse_range, point_config, trial_name

    config = load_config("toy2d", [])
    grid = SweepConfig(
        grid=(parse_grid("train.lr=1e-3,2e-3"), parse_grid("eval.metric=swd")), seeds=3
    )
    grid.validate(config)
    space = grid.space()
    assert space.keys() == ["train.lr", "eval.metric", "seed"] and space.trials() == 6
    assert space.param_space() == {
        "train.lr": tune.grid_search([1e-3, 2e-3]),
        "eval.metric": tune.grid_search(["swd"]),
        "seed": tune.grid_search([0, 1, 2]),
    }
    drawn = SweepConfig(
        ranges=(parse_range("train.lr=1e-4:1e-2:log"), parse_range("eval.steps=4:9")),
        samples=5,
    )
    drawn.validate(config)
    params = drawn.space().param_space()
    assert isinstance(params["train.lr"], tune.search.sample.Float)
    assert (params["train.lr"].lower, params["train.lr"].upper) == (1e-4, 1e-2)
    assert isinstance(params["train.lr"].sampler, tune.search.sample.LogUniform)
    assert (params["eval.steps"].lower, params["eval.steps"].upper) == (4, 10)  # 9 included
    assert drawn.space().trials() == 5
    # No axis at all: clean fraction x tau; the old flags are shorthands for grid axes.
    assert SweepConfig().space().keys() == ["data.clean_fraction", "data.tau"]
    short = SweepConfig(taus=(0.3,), grid=(parse_grid("data.sigma=0.1"),))
    assert [a.key for a in short.space().grid] == ["data.tau", "data.tau"]
    # A trial's config and run directory name.
    trial = point_config(config.to_dict(), {"train.lr": 2e-3, "seed": 2}, seeds=True)
    assert (trial.train.lr, trial.seed, trial.data.seed) == (2e-3, 2, 2)
    assert point_config(config.to_dict(), {"seed": 2}).data.seed == config.data.seed
    assert trial_name({"train.lr": 2e-3, "seed": 2}) == "lr=0.002_seed=2"
    assert trial_name({"train.batch_size": 8, "eval.batch_size": 4}) == (
        "train.batch_size=8_eval.batch_size=4"
    )


def test_best_json_and_heatmap_from_result_rows(tmp_path):
    from sfbd.storage import Location
    from sfbd.sweep_results import best_summary, heatmap, points_table
    from sfbd.sweep_space import parse_grid

    space = SweepConfig(grid=(parse_grid("train.lr=1e-3,2e-3"),), seeds=2).space()
    finals = {(1e-3, 0): 0.3, (1e-3, 1): 0.1, (2e-3, 0): 0.15, (2e-3, 1): 0.2}
    rows = [
        {
            "train.lr": lr,
            "seed": seed,
            "status": "finished",
            "iterations_done": 1,
            "metric_name": "swd",
            "final_metric": v,
            "run_dir": f"r{lr}-{seed}",
            "trial_id": f"t{lr}-{seed}",
        }
        for (lr, seed), v in finals.items()
    ]
    rows.append({**rows[0], "seed": 2, "status": "failed", "final_metric": None})
    summary = best_summary(rows, space)
    assert summary["best"]["run_dir"] == "r0.001-1" and summary["best"]["metric"] == 0.1
    assert summary["best"]["set"] == ["train.lr=0.001", "seed=1", "data.seed=1"]
    mean = summary["best_mean_over_seeds"]
    assert mean["overrides"] == {"train.lr": 2e-3} and mean["metric_mean"] == pytest.approx(0.175)
    assert mean["metric_std"] == pytest.approx(0.05 / 2**0.5)  # 0.15 and 0.2, ddof 1
    assert mean["seeds"] == [0, 1]
    assert heatmap(rows, space.keys(), Location.of(tmp_path / "h.png"))
    assert (tmp_path / "h.png").read_bytes().startswith(b"\x89PNG")
    many = [{**rows[0], "train.lr": i * 1e-4} for i in range(1, 40)]
    assert not heatmap(many, ["train.lr"], Location.of(tmp_path / "none.png"))
    assert best_summary([rows[-1]], space)["best"] is None
    # points.md: per point and iteration, mean +/- std over the seeds that got there.
    metrics = {
        f"r{lr}-{seed}": [
            {"iteration": 0, "metric": "swd", "swd": 1.0, "noisy_distance": 2.0},
            {"iteration": 1, "metric": "swd", "swd": v, "noisy_distance": 2 * v},
        ]
        for (lr, seed), v in finals.items()
    }
    table = points_table(rows, space, metrics.get)
    assert "### train.lr=0.002" in table and "| iteration | swd | noisy_distance |" in table
    assert "| 1 | 0.175 +/- 0.03536 (n=2) | 0.35 +/- 0.07071 (n=2) |" in table
    assert "| 0 | 1 +/- 0 (n=2) | 2 +/- 0 (n=2) |" in table


def test_sweep_refuses_more_concurrent_trials_than_the_cpus_hold(ray_cluster, tmp_path, capsys):
    out = tmp_path / "s"
    args = ["sweep", "--config", "toy2d", "--max-concurrent", "2", "--out", str(out)]
    # toy2d: a trial holds 0.1 + 1.25 CPUs (denoise: an actor of 1 CPU and a writing task).
    assert main([*args, "--address", ray_cluster]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: --max-concurrent 2:") and "room for 1 trial" in err
    assert len(err.splitlines()) == 1
    assert not out.exists()


def test_trial_footprint_counts_the_driver_and_the_largest_stage():
    config = load_config("toy2d", [])
    grid = SweepConfig(max_concurrent=3)
    cpus = {"CPU": 4.0}
    # Training may stream (train.ingest: auto): its reading tasks' 0.5 CPUs count with it.
    with pytest.raises(ValueError, match=r"up to 1.6 CPUs .*train 1.5\).*room for 2"):
        check_concurrency(config, grid, cpus)
    memory = load_config("toy2d", ["train.ingest=memory"])
    with pytest.raises(ValueError, match=r"up to 1.35 CPUs .*denoise 1.25.*room for 2"):
        check_concurrency(memory, grid, cpus)
    check_concurrency(config, SweepConfig(max_concurrent=2), cpus)
    small = load_config("toy2d", SMALL)
    check_concurrency(small, grid, {"CPU": 2.0})  # 3 x (0.1 + 0.5)
    with pytest.raises(ValueError, match="room for 3"):
        check_concurrency(small, SweepConfig(max_concurrent=4), {"CPU": 2.0})
    with pytest.raises(ValueError, match=r"train 2.5\b"):
        check_concurrency(load_config("toy2d", ["train.num_workers=2"]), grid, {"CPU": 6.0})
    # GPUs are queued: a stage's GPU request only has to fit beside the drivers' reservations.
    gpu = load_config("toy2d", ["train.use_gpu=true", "denoise.cpus_per_actor=0.5"])
    check_concurrency(gpu, SweepConfig(max_concurrent=2), {"CPU": 8.0, "GPU": 1.0})
    with pytest.raises(ValueError, match="--trial-gpus 0.5"):
        check_concurrency(
            gpu, SweepConfig(max_concurrent=2, trial_gpus=0.5), {"CPU": 8.0, "GPU": 1.0}
        )


def test_sweep_timing_spans_overlap_and_a_fresh_out(tmp_path):
    from sfbd.studies.sweep_timing import (
        compare_sequential,
        format_comparison,
        overlap_seconds,
        stage_span,
    )

    run = RunDir(tmp_path / "run")
    run.root.mkdir()
    stages = {"pretrain": {"started": 10.0, "finished": 14.0}, "evaluate_000": {"seconds": 1}}
    stages["evaluate_000"].update(started=14.0, finished=20.0)
    run.write_state({"completed": stages, "finished": True})
    assert stage_span(tmp_path / "run") == (10.0, 20.0)
    assert overlap_seconds([(10.0, 20.0), (15.0, 30.0), (12.0, 18.0)]) == 3.0
    assert overlap_seconds([(10.0, 20.0), (21.0, 30.0)]) == 0.0
    # The comparison times fresh sweeps: an --out that holds anything is refused before Ray.
    with pytest.raises(ValueError, match="--compare-sequential"):
        compare_sequential(load_config("toy2d", []), SweepConfig(), tmp_path)
    mode = {"trials": 3, "trial_stage_seconds": [1.0, 2.0, 3.0], "all_trials_overlap_seconds": 0}
    table = format_comparison(
        {
            "config": "toy2d",
            "concurrent": {**mode, "max_concurrent": 3, "seconds": 50.0},
            "sequential": {**mode, "max_concurrent": 1, "seconds": 100.0},
            "speedup": 2.0,
        },
        2,
    )
    assert "speed-up (sequential / concurrent wall time): 2.00x" in table


def test_asha_stops_a_weak_trial_and_the_tracking_callbacks_log_every_trial(
    ray_cluster, tmp_path, monkeypatch
):
    """Two trials one after another; the second, at learning rate 1e-7, learns nothing (its
    samples stay near EDM's Gaussian prior: a sliced distance near 0.28 to the ring, against
    ~0.1-0.2 for the first), so ASHA (grace period 1, reduction factor 2) cuts it after
    pretraining, its first evaluation.
    The sweep's --out is a file:// URI; MLflow and W&B (offline) log both trials where they
    are installed."""
    callbacks = [name for name in ("mlflow", "wandb") if importlib.util.find_spec(name)]
    monkeypatch.setenv("MLFLOW_TRACKING_URI", (tmp_path / "mlruns").as_uri())
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # MLflow 3 wants a database
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", "asha-test")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    out = tmp_path / "asha"
    args = ["sweep", "--config", "toy2d", "--grid", "train.lr=2e-3,1e-7"]
    args += ["--scheduler", "asha", "--grace-period", "1", "--reduction-factor", "2"]
    args += ["--out", out.as_uri(), "--address", ray_cluster]
    args += [a for name in callbacks for a in ("--callback", name)]
    assert main(args + [a for s in SMALL for a in ("--set", s)]) == 0
    rows = {float(r["train.lr"]): r for r in _rows(out)}
    good, weak = rows[2e-3], rows[1e-7]
    assert (good["status"], good["iterations_done"]) == ("finished", "1")
    assert (weak["status"], weak["iterations_done"]) == ("stopped", "0")
    assert [len(RunDir(r["run_dir"]).read_metrics()) for r in (good, weak)] == [2, 1]
    best = json.loads((out / "best.json").read_text())["best"]
    assert best["overrides"] == {"train.lr": 2e-3} and best["set"] == ["train.lr=0.002"]
    assert best["metric"] == float(good["final_metric"]) and best["status"] == "finished"
    assert (out / "heatmap.png").stat().st_size > 0
    assert not (ROOT / "file:").exists()
    if "mlflow" in callbacks:
        import mlflow

        client = mlflow.MlflowClient(tracking_uri=(tmp_path / "mlruns").as_uri())
        experiment = client.get_experiment_by_name("asha-test")
        runs = client.search_runs([experiment.experiment_id])
        metric = {float(r.data.params["train.lr"]): r.data.metrics["metric"] for r in runs}
        assert metric.keys() == {2e-3, 1e-7}
        assert metric[2e-3] == pytest.approx(float(good["final_metric"]))
        assert metric[1e-7] == pytest.approx(float(weak["final_metric"]))
    if "wandb" in callbacks:
        assert len(list((out / "wandb" / "wandb").glob("offline-run-*"))) == 2
        for r in (good, weak):  # each run's log holds its trial's reported metric
            (log,) = (out / "wandb" / "wandb").glob(f"offline-run-*/run-{r['trial_id']}.wandb")
            assert repr(float(r["final_metric"])).encode() in log.read_bytes()


def test_result_table_from_a_result_grid():
    """Rows from Tune's dataframes: finished, stopped early, failed after reporting, and failed
    before any report (absent from Tune's dataframe)."""
    from types import SimpleNamespace

    import pandas as pd

    from sfbd.sweep_results import result_table
    from sfbd.sweep_space import parse_grid

    space = SweepConfig(grid=(parse_grid("train.lr=1e-3,2e-3,3e-3,4e-3"),)).space()
    reports = {  # trial: (lr, [(iteration, metric)], error)
        "a": (1e-3, [(0, 0.5), (1, 0.2), (2, 0.3)], None),
        "b": (2e-3, [(0, 0.9)], None),
        "c": (3e-3, [(0, 0.4), (1, 0.35)], RuntimeError("stage refit_002 failed")),
    }

    def frame(pick):
        rows = []
        for tid, (lr, seen, _) in reports.items():
            it, value = pick(seen)
            rows.append(
                {"trial_id": tid, "iteration": it, "metric": value, "metric_name": "swd"}
                | {"run_dir": f"/r/{tid}", "config/train.lr": lr}
            )
        return pd.DataFrame(rows)

    class Grid(list):  # what result_table reads of a ResultGrid
        def get_dataframe(self, filter_metric=None, filter_mode=None):
            return frame(min_metric if filter_metric else (lambda seen: seen[-1]))

    def min_metric(seen):
        return min(seen, key=lambda x: x[1])

    grid = Grid(
        SimpleNamespace(metrics={"trial_id": t}, config={"train.lr": lr}, error=err)
        for t, (lr, _, err) in reports.items()
    )
    grid.append(SimpleNamespace(metrics={}, config={"train.lr": 4e-3}, error=RuntimeError("x")))
    rows = result_table(grid, space, load_config("toy2d", ["iterations=2"]))
    got = [
        (r["train.lr"], r["status"], r["iterations_done"], r["final_metric"], r["best_metric"])
        for r in rows
    ]
    assert got == [
        (1e-3, "finished", 2, 0.3, 0.2),
        (2e-3, "stopped", 0, 0.9, 0.9),
        (3e-3, "failed", 1, 0.35, 0.35),
        (4e-3, "failed", None, None, None),
    ]
