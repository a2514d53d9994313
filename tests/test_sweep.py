"""A Ray Tune sweep over tau on the toy (1 clean fraction x 3 taus, each trial a whole run,
all three at once on the suite's 2 CPUs): table, heatmap, early reports, the trials' overlap,
and resume after the sweep is killed; a sweep whose concurrent trials cannot all hold their
stages is refused."""

import csv
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
    # Three trials on 2 CPUs: each holds at most 0.1 (driver) + 0.5 (denoise: an actor of
    # 0.25 and a writing task of 0.25; evaluate: 0.5) CPUs; training runs in local mode.
    "train.num_workers=0",
    "denoise.cpus_per_actor=0.25",
    "eval.cpus=0.5",
]
TAUS = (0.3, 0.45, 0.59)


def _args(out, address):
    args = [
        "--config",
        "toy2d",
        "--clean-fractions",
        "0.05",
        "--taus",
        ",".join(map(str, TAUS)),
        "--max-concurrent",
        "3",
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
    while time.time() < deadline:
        if any(
            (d / "state.json").is_file() and '"finished": true' in (d / "state.json").read_text()
            for d in (out / "trials").glob("cf*")
        ):
            break
        assert proc.poll() is None, "the sweep ended before its first trial finished"
        time.sleep(0.5)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    finished_first = [
        d.name
        for d in (out / "trials").glob("cf*")
        if '"finished": true' in (d / "state.json").read_text()
    ]
    assert finished_first and not (out / "results.csv").exists()
    stamps = {
        n: (out / "trials" / n / "checkpoints" / "iter_001.pt").stat().st_mtime_ns
        for n in finished_first
    }

    assert main(["sweep", *_args(out, ray_cluster)]) == 0
    rows = _rows(out)
    assert sorted((float(r["clean_fraction"]), float(r["tau"])) for r in rows) == [
        (0.05, t) for t in TAUS
    ]
    assert all(r["metric_name"] == "swd_true" and int(r["iterations_done"]) == 1 for r in rows)
    assert (out / "heatmap.png").stat().st_size > 0
    # The trial that had finished before the interruption was not trained again.
    for name, stamp in stamps.items():
        assert (out / "trials" / name / "checkpoints" / "iter_001.pt").stat().st_mtime_ns == stamp
    # The three trials ran at the same time: every one started its stages before any ended.
    spans = []
    for d in sorted((out / "trials").glob("cf*")):
        stages = [s for s in RunDir(d).read_state()["completed"].values() if "started" in s]
        spans.append((min(s["started"] for s in stages), max(s["finished"] for s in stages)))
    assert len(spans) == 3
    overlap = min(end for _, end in spans) - max(start for start, _ in spans)
    assert overlap > 0, spans
    print(f"all three trials ran together for {overlap:.1f}s")
    print("sweep table:", [(r["clean_fraction"], r["tau"], r["final_metric"]) for r in rows])


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
    with pytest.raises(ValueError, match=r"up to 1.35 CPUs .*denoise 1.25.*room for 2"):
        check_concurrency(config, grid, cpus)
    check_concurrency(config, SweepConfig(max_concurrent=2), cpus)
    small = load_config("toy2d", SMALL)
    check_concurrency(small, grid, {"CPU": 2.0})  # 3 x (0.1 + 0.5)
    with pytest.raises(ValueError, match="room for 3"):
        check_concurrency(small, SweepConfig(max_concurrent=4), {"CPU": 2.0})
    with pytest.raises(ValueError, match=r"train 2\b"):
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
