"""A Ray Tune sweep over tau on the toy (1 clean fraction x 2 taus, each trial a whole run):
table, heatmap, early reports, and resume after the sweep is killed."""

import csv
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from sfbd.cli import main

ROOT = Path(__file__).resolve().parents[1]
SMALL = [
    "iterations=1",
    "data.num=2000",
    "train.pretrain_kimg=10",
    "train.refit_kimg=10",
    "train.checkpoint_kimg=10",
    "eval.num_samples=1000",
    "denoise.steps=4",
]


def _args(out, address):
    args = [
        "--config",
        "toy2d",
        "--clean-fractions",
        "0.05",
        "--taus",
        "0.3,0.59",
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
        (0.05, 0.3),
        (0.05, 0.59),
    ]
    assert all(r["metric_name"] == "swd_true" and int(r["iterations_done"]) == 1 for r in rows)
    assert (out / "heatmap.png").stat().st_size > 0
    # The trial that had finished before the interruption was not trained again.
    for name, stamp in stamps.items():
        assert (out / "trials" / name / "checkpoints" / "iter_001.pt").stat().st_mtime_ns == stamp
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
