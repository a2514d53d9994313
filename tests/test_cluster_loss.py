"""Losing the cluster mid-stage: the GCS and raylet of a driver's own local cluster are
SIGKILLed during a denoise stage. The driver ends within seconds with one line naming the
stage and the rerun (not Ray's 60 s reconnect wait and its messages), and the same command
then completes the run with every noisy id denoised exactly once."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from sfbd.cli import main
from sfbd.data.store import read_split
from sfbd.rundir import RunDir
from sfbd.stages.denoise import read_denoised

ROOT = Path(__file__).resolve().parents[1]
SETTINGS = [
    "iterations=1",
    "data.num=4000",
    "train.pretrain_kimg=4",
    "train.refit_kimg=4",
    "train.num_workers=0",
    "denoise.batch_size=200",
    "eval.num_samples=500",
]


def _descendants(pid: int) -> dict[int, str]:
    """pid -> command name of every process below `pid` (from /proc)."""
    parent, name = {}, {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                stat = (d / "stat").read_text()
            except OSError:
                continue
            # "pid (comm) state ppid ...": comm may hold spaces, so split after its ")"
            name[int(d.name)] = stat[stat.index("(") + 1 : stat.rindex(")")]
            parent[int(d.name)] = int(stat[stat.rindex(")") + 2 :].split()[1])
    found, todo = {}, [pid]
    while todo:
        p = todo.pop()
        for child, ppid in parent.items():
            if ppid == p and child not in found:
                found[child] = name[child]
                todo.append(child)
    return found


def test_a_lost_head_ends_the_driver_in_one_line_and_the_rerun_completes(ray_cluster, tmp_path):
    run = tmp_path / "run"
    cmd = [sys.executable, str(ROOT / "jobs" / "sfbd.py"), "--config", "toy2d"]
    cmd += ["--run-dir", str(run)] + [a for s in SETTINGS for a in ("--set", s)]
    # A cluster of the driver's own (`local`: not RAY_ADDRESS, nor another cluster running on
    # this machine), given up on after 3 s without an answer.
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env["SFBD_CLUSTER_LOST_S"] = "3"
    out_file, err_file = open(tmp_path / "out.log", "w"), open(tmp_path / "err.log", "w")  # noqa: SIM115
    proc = subprocess.Popen(
        [*cmd, "--address", "local"],
        env=env,
        stdout=out_file,
        stderr=err_file,
        start_new_session=True,
    )
    try:
        deadline = time.time() + 300
        while RunDir(run).read_state().get("current") != "denoise_001":
            assert proc.poll() is None and time.time() < deadline, proc.poll()
            time.sleep(0.2)
        head = {p: n for p, n in _descendants(proc.pid).items() if n in ("gcs_server", "raylet")}
        assert sorted(head.values()) == ["gcs_server", "raylet"], head
        for p in head:
            os.kill(p, signal.SIGKILL)
        t_kill = time.time()
        proc.wait(timeout=120)
        waited = time.time() - t_kill
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # what is left of that cluster
        except ProcessLookupError:
            pass
        out_file.close()
        err_file.close()
    out, err = (tmp_path / "out.log").read_text(), (tmp_path / "err.log").read_text()
    print(f"driver ended {waited:.1f} s after its head was killed; stderr tail: {err[-300:]}")
    assert proc.returncode == 1, (out[-2000:], err[-2000:])
    assert waited < 30
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, err[-3000:]
    assert "stage denoise_001 failed: lost the Ray cluster" in errors[0]
    assert "rerun the same command" in errors[0]
    assert "Failed to connect to GCS" not in err[: err.index(errors[0])]
    assert "denoise_001" not in RunDir(run).read_state()["completed"]

    # The same command (here on the test session's cluster) resumes at the lost stage.
    pretrain = RunDir(run).read_state()["completed"]["pretrain"]
    assert main(["run", *cmd[2:], "--address", ray_cluster]) == 0
    state = RunDir(run).read_state()
    assert state["finished"] and state["completed"]["pretrain"] == pretrain  # not redone
    noisy_ids, _ = read_split(run / "data", "noisy")
    ids, _ = read_denoised(run / "denoised" / "iter_001", (2,))
    assert len(ids) == len(noisy_ids) == state["completed"]["denoise_001"]["count"]
    assert np.array_equal(np.sort(ids), np.sort(noisy_ids))


def test_a_ray_error_on_a_lost_cluster_is_reported_once_as_the_lost_cluster():
    """The driver's Ray call can fail ("actor is unavailable") before the watch's grace period
    ends; `check_now` then reports the loss, and the watch thread does not report it again."""
    import socket

    from sfbd.clusterwatch import ClusterWatch

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        dead = f"127.0.0.1:{s.getsockname()[1]}"
    with socket.socket() as live:
        live.bind(("127.0.0.1", 0))
        live.listen()
        alive = f"127.0.0.1:{live.getsockname()[1]}"
        reports = []
        ok = ClusterWatch({"GCS": alive}, reports.append)
        ok.check_now()
        assert reports == []
        watch = ClusterWatch(
            {"GCS": alive, "raylet": dead}, reports.append, grace_s=0.2, period_s=0.1
        )
        watch.start()
        watch.check_now()
        time.sleep(0.6)  # the thread would have reported by now
        watch.stop()
    assert reports == [f"lost the Ray cluster: its raylet at {dead} does not answer"]
