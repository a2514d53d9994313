"""The loop on a simulated multi-node cluster: train workers and denoise actors land on
different nodes, and everything the run writes matches, bit for bit, a one-node run with the
same seed and the same total resources."""

import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

from sfbd.rundir import RunDir
from sfbd.runfiles import read_checkpoint
from sfbd.stages.denoise import read_denoised

ROOT = Path(__file__).resolve().parents[1]

# Two DDP workers and two denoise actors of one CPU each; one torch thread everywhere, so
# that arithmetic does not depend on how many cores a node offers.
SETTINGS = [
    "iterations=1",
    "train.pretrain_kimg=8",
    "train.refit_kimg=4",
    "train.checkpoint_kimg=4",
    "train.log_kimg=4",
    "train.num_workers=2",
    "train.threads=1",
    "denoise.num_actors=2",
    "denoise.threads=1",
    "denoise.batch_size=1024",
    "eval.num_samples=500",
    "eval.threads=1",
]


def _start(run_dir: Path, nodes: int, cpus_per_node: float) -> subprocess.Popen:
    """`sfbd run` on a fresh cluster in a subprocess, once that cluster is up (two clusters
    starting at once on two cores can miss Ray's 30 s raylet start-up deadline)."""
    args = ["--config", "toy2d", "--run-dir", str(run_dir)]
    for s in SETTINGS:
        args += ["--set", s]
    log = run_dir.with_suffix(".log")
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "tests" / "cluster_run.py"), "--nodes", str(nodes)]
        + ["--cpus-per-node", str(cpus_per_node), "--", *args],
        stdout=subprocess.PIPE,
        stderr=open(log, "w"),  # noqa: SIM115 (closed with the process)
        text=True,
    )
    deadline = time.time() + 120
    while "cluster_run: cluster up" not in log.read_text():
        assert proc.poll() is None and time.time() < deadline, log.read_text()[-3000:]
        time.sleep(0.5)
    return proc


def _result(proc: subprocess.Popen, run_dir: Path) -> dict:
    out, _ = proc.communicate(timeout=900)
    assert proc.returncode == 0, run_dir.with_suffix(".log").read_text()[-3000:]
    return json.loads(out.strip().splitlines()[-1])


def _state_dict(path: Path) -> dict:
    import io

    return torch.load(io.BytesIO(read_checkpoint(path)), weights_only=True)["state_dict"]


def test_three_node_run_spreads_work_and_matches_a_one_node_run(tmp_path):
    # The two clusters run side by side: the results cannot depend on the timing.
    procs = [_start(tmp_path / "multi", 3, 1), _start(tmp_path / "single", 1, 3)]
    try:
        multi, single = (
            _result(procs[0], tmp_path / "multi"),
            _result(procs[1], tmp_path / "single"),
        )
    finally:
        for p in procs:
            p.kill()
    print(f"placement on 3 nodes: {multi['placement']}")
    assert multi["nodes"] == 3 and single["nodes"] == 1
    for kind in ("RayTrainWorker", "MapWorker"):
        assert len(set(multi["placement"][kind])) >= 2, (kind, multi["placement"])
        assert len(set(single["placement"][kind])) == 1

    m_rows, s_rows = (
        RunDir(tmp_path / "multi").read_metrics(),
        RunDir(tmp_path / "single").read_metrics(),
    )
    assert [r["iteration"] for r in m_rows] == [0, 1]
    for a, b in zip(m_rows, s_rows, strict=True):
        assert (a["swd_true"], a["train_loss"]) == (b["swd_true"], b["train_loss"])
    for k in (0, 1):
        name = f"checkpoints/iter_{k:03d}.pt"
        a, b = _state_dict(tmp_path / "multi" / name), _state_dict(tmp_path / "single" / name)
        assert a.keys() == b.keys()
        assert all(torch.equal(a[key], b[key]) for key in a)
    ids_a, x_a = read_denoised(tmp_path / "multi" / "denoised" / "iter_001", (2,))
    ids_b, x_b = read_denoised(tmp_path / "single" / "denoised" / "iter_001", (2,))
    assert len(ids_a) == 9310 and np.array_equal(ids_a, ids_b)  # 9800 noisy, 5% held out
    assert np.array_equal(x_a, x_b)
