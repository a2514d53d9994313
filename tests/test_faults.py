"""Faults the pipeline must survive or refuse clearly (issue: running it for real):

- a denoise actor killed mid-stage: Ray Data restarts it and retries its work; every id comes
  out exactly once;
- a train worker killed mid-refit: FailureConfig restarts the worker group from the last
  checkpoint, losing at most one checkpoint interval;
- the orchestrator killed mid-run: the job fails saying which stage, and the same command
  resumes it (nothing lost or duplicated); the Ray metrics show the running stage meanwhile;
  the driver killed mid-run: the same command resumes it;
- corrupted or truncated Parquet shards and checkpoints are refused with a clear error;
- an unwritable run directory fails before any work (a full disk: tests/test_storage.py).
"""

import json
import math
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from sfbd.cli import main
from sfbd.config import DenoiseConfig, TrainConfig
from sfbd.data.prepare import DataConfig, prepare
from sfbd.data.store import read_split
from sfbd.diffusion.networks import NetworkConfig, build_denoiser
from sfbd.plan import plan
from sfbd.rundir import RunDir
from sfbd.runfiles import (
    COMPLETE,
    load_denoiser_at,
    parquet_files,
    read_checkpoint,
    save_denoiser_at,
)

ROOT = Path(__file__).resolve().parents[1]


def run_job(args: list[str]) -> int:
    """`python jobs/sfbd.py ARGS`, in this process."""
    return main(["run", *args])


def _toy_data(tmp_path, num=4000):
    cfg = DataConfig(dataset="toy2d", num=num, clean_fraction=0.05)
    return prepare(cfg, tmp_path / "data", log=lambda *_: None).local


def _mlp_checkpoint(path):
    import torch

    torch.manual_seed(0)
    cfg = NetworkConfig(preset="mlp", channels=2)
    save_denoiser_at(path, build_denoiser(cfg), cfg, stage="test")
    return path


def _alive_actors(class_part: str, since: float = 0.0) -> list[dict]:
    """Live actors whose class name contains `class_part` and that started after `since`
    (seconds; earlier tests' actors may still be shutting down), newest first. From the GCS
    actor table (no dashboard needed): dicts with at least `Pid` and `Address.NodeID`."""
    import ray

    found = [
        a
        for a in ray._private.state.actors().values()
        if class_part in a["ActorClassName"]
        and a["State"] == "ALIVE"
        and a["Pid"]
        and a["StartTime"] >= since * 1000
    ]
    return sorted(found, key=lambda a: a["StartTime"], reverse=True)


def _wait_for(predicate, timeout: float, what: str, poll: float = 0.2):
    t0 = time.time()
    while time.time() - t0 < timeout:
        value = predicate()
        if value:
            return value
        time.sleep(poll)
    raise TimeoutError(f"timed out waiting for {what}")


def _run_in_thread(fn, *args, **kwargs):
    box = {}

    def target():
        try:
            box["result"] = fn(*args, **kwargs)
        except BaseException as exc:  # noqa: BLE001 - re-raised in the test's thread
            box["error"] = exc

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    return thread, box


def test_killed_denoise_actor_is_replaced_and_every_id_comes_out_once(ray_cluster, tmp_path):
    from sfbd.stages.denoise import read_denoised, run_denoise

    t_start = time.time()
    data = _toy_data(tmp_path, num=6000)
    ckpt = _mlp_checkpoint(tmp_path / "init.pt")
    out = tmp_path / "denoised"
    config = DenoiseConfig(steps=96, batch_size=200, threads=1)
    thread, box = _run_in_thread(run_denoise, data, ckpt, out, config, 0, 1, log=print)

    def busy_actor():
        # Killed once it has denoised something, i.e. mid-stage.
        found = _alive_actors("MapWorker", since=t_start)
        return found[0] if found and (tmp_path / "denoised.tmp").is_dir() else None

    actor = _wait_for(busy_actor, 120, "a denoise actor")
    time.sleep(3)
    os.kill(actor["Pid"], signal.SIGKILL)
    t_kill = time.time()
    replacement = _wait_for(
        lambda: [a for a in _alive_actors("MapWorker", t_start) if a["Pid"] != actor["Pid"]],
        120,
        "a replacement denoise actor",
    )
    thread.join(600)
    assert "error" not in box, box.get("error")
    result = box["result"]
    noisy_ids, _ = read_split(data, "noisy")
    ids, x = read_denoised(out, (2,))
    print(
        f"denoise actor {actor['Pid']} killed; stage finished {time.time() - t_kill:.1f}s later "
        f"with {result.count} items ({len(noisy_ids)} in)"
    )
    assert result.count == len(noisy_ids) == len(ids) == len(np.unique(ids))
    assert np.array_equal(ids, np.sort(noisy_ids))
    assert np.isfinite(x).all()
    assert replacement[0]["Pid"] != actor["Pid"]


def _kill_the_worker_after_two_checkpoints(job, out, t_start) -> dict:
    """Run `job` (one worker) in a thread, SIGKILL its worker once it has written two
    checkpoints, and return the stage's summary: it resumed from the newest one or later."""
    from sfbd.stages.refit import run_train

    storage = Path(job.storage)
    thread, box = _run_in_thread(run_train, job, out)

    def checkpoints():  # those whose train state has been written
        stage = storage / job.stage
        found = stage.glob("checkpoint_*/train_state.pt") if stage.is_dir() else []
        return sorted(p.parent for p in found)

    _wait_for(lambda: len(checkpoints()) >= 2, 300, "two train checkpoints")
    worker = _wait_for(lambda: _alive_actors("RayTrainWorker", t_start), 60, "the worker")[0]
    newest = checkpoints()[-1]
    os.kill(worker["Pid"], signal.SIGKILL)
    thread.join(600)
    assert "error" not in box, box.get("error")
    summary = box["result"]
    resumed = summary["resumed_from_kimg"]
    print(f"train worker killed after checkpoint {newest.name}; resumed from {resumed} kimg")
    # Resumed from the newest checkpoint seen before the kill (or a later one), so at most
    # one checkpoint interval of training was redone; the stage still trained its kimg.
    assert resumed is not None and resumed >= 2 * job.train.checkpoint_kimg - 0.1
    assert summary["kimg"] == job.kimg
    assert load_denoiser_at(out)[2]["stage"] == job.stage
    return summary


def test_killed_train_worker_resumes_from_the_last_checkpoint(ray_cluster, tmp_path):
    from sfbd.stages.refit import TrainJob, TrainSet, run_train

    t_start = time.time()
    data = _toy_data(tmp_path)
    storage = tmp_path / "train"
    train = TrainConfig(
        batch_size=64, lr=2e-3, checkpoint_kimg=8, log_kimg=8, num_workers=1, threads=1
    )
    net = NetworkConfig(preset="mlp", channels=2)
    sets = [TrainSet(path=str(data / "clean"))]
    job = TrainJob("refit_001", train, net, sets, (2,), 48.0, 0, storage=str(storage))
    _kill_the_worker_after_two_checkpoints(job, tmp_path / "out.pt", t_start)

    # Every step is reproducible from (seed, stage, step), so the resumed stage ends where an
    # uninterrupted one does; and Ray Train's local mode (train.num_workers = 0, the loop in
    # this process) gives what one worker gives, bit for bit. Local mode writes its own
    # checkpoints: a stage started again (a restarted driver) resumes from them.
    import dataclasses

    import torch

    local = dataclasses.replace(train, num_workers=0)
    threads = torch.get_num_threads()
    try:
        part = dataclasses.replace(job, train=local, kimg=24.0, storage=str(tmp_path / "local"))
        run_train(part, tmp_path / "part.pt")
        whole = run_train(dataclasses.replace(part, kimg=48.0), tmp_path / "local.pt")
    finally:
        torch.set_num_threads(threads)
    assert whole["resumed_from_kimg"] == 24.0
    assert len(list((tmp_path / "local" / "refit_001").glob("checkpoint_*"))) == 2  # keeps 2
    a = load_denoiser_at(tmp_path / "out.pt")[0].state_dict()
    b = load_denoiser_at(tmp_path / "local.pt")[0].state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_killed_stream_worker_of_two_resumes_from_the_last_checkpoint(ray_cluster, tmp_path):
    """train.ingest = stream with 2 DDP workers, each fed its shard of both sets by Ray Data
    (0.75 CPU each, so that the reading tasks have 0.5): one is killed; the restarted group
    resumes from the last checkpoint, with new dataset shards, and trains to the stage's end."""
    from sfbd.stages.refit import TrainJob, TrainSet

    t_start = time.time()
    data = _toy_data(tmp_path)
    # 16 KB per worker: 64-item shuffle buffers, so both sets (200 and 3,724 items) stream.
    train = TrainConfig(
        batch_size=64,
        lr=2e-3,
        checkpoint_kimg=8,
        log_kimg=8,
        num_workers=2,
        cpus_per_worker=0.75,
        threads=1,
        ingest="stream",
        ingest_budget_gb=1.6e-5,
    )
    net = NetworkConfig(preset="mlp", channels=2)
    sets = [TrainSet(path=str(data / "clean")), TrainSet(path=str(data / "noisy"))]
    job = TrainJob("refit_001", train, net, sets, (2,), 40.0, 0, storage=str(tmp_path / "train"))
    summary = _kill_the_worker_after_two_checkpoints(job, tmp_path / "out.pt", t_start)
    assert summary["set_sizes"] == [200, 3724] and math.isfinite(summary["loss"])


def _scrape(pattern: str) -> list[str]:
    import ray

    node = ray._private.worker.global_worker.node
    url = f"http://{node.node_ip_address}:{node.metrics_export_port}/metrics"
    try:
        text = urllib.request.urlopen(url, timeout=5).read().decode()
    except OSError:
        return []
    return [line for line in text.splitlines() if line.startswith(pattern)]


def test_killed_orchestrator_then_killed_driver_resume_with_nothing_lost_or_duplicated(
    ray_cluster, tmp_path
):
    """One run, killed twice: its orchestrator actor in refit_001 (the driver then exits 1
    naming the stage), and after a rerun its driver (taking the orchestrator with it) in
    refit_002. Each rerun redoes no finished stage and continues the interrupted refit from
    its checkpoint; every noisy id is denoised once per iteration. The refits run in Ray
    Train's local mode (in the orchestrator's process, which both kills take down; the
    checkpoints are in the same storage folder); Ray Train's own worker restart is
    test_killed_train_worker_resumes_from_the_last_checkpoint."""
    t_start = time.time()
    run = tmp_path / "run"
    args = ["--config", "toy2d", "--run-dir", str(run), "--address", ray_cluster]
    for setting in (
        "iterations=2",
        "train.pretrain_kimg=20",
        "train.refit_kimg=60",
        "train.checkpoint_kimg=10",
        "train.num_workers=0",
        "eval.num_samples=2000",
    ):
        args += ["--set", setting]
    cmd = [sys.executable, str(ROOT / "jobs" / "sfbd.py"), *args]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}

    def in_refit_with_checkpoint(k: int) -> bool:
        stage = f"refit_{k:03d}"
        return (
            (run / "state.json").is_file()
            and RunDir(run).read_state().get("current") == stage
            and bool(list((run / "train" / stage).glob("checkpoint_*")))
        )

    # 1. The orchestrator dies in refit_001: the driver says which stage, exit 1.
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        # While refit_001 runs, the metrics agent exports the run's stage (1.0 for the running
        # one) and its denoised images; read before the checkpoint, so that the kill follows
        # the checkpoint at once and lands inside the refit however fast it trains.
        def refit_exported():
            if RunDir(run).read_state().get("current") != "refit_001":
                return None
            running = [line for line in _scrape("ray_sfbd_stage{") if 'stage="refit_001"' in line]
            return running if running and running[0].endswith(" 1.0") else None

        _wait_for(refit_exported, 400, "refit_001 running in the exported stage metric", 0.5)
        denoised = _wait_for(
            lambda: _scrape("ray_sfbd_images_denoised_total{"), 60, "images denoised metric"
        )
        assert sum(float(line.rsplit(" ", 1)[1]) for line in denoised) >= 9310
        orch = _alive_actors("Orchestrator", t_start)[0]
        _wait_for(lambda: in_refit_with_checkpoint(1), 400, "refit_001 with a checkpoint", 0.2)
        os.kill(orch["Pid"], signal.SIGKILL)
        output, _ = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 1, output
    assert "stage refit_001 failed" in output and "rerun the same command" in output
    first = RunDir(run).read_state()
    assert "refit_001" not in first["completed"] and "denoise_001" in first["completed"]

    # 2. The rerun resumes refit_001; its driver is killed in refit_002.
    log = open(tmp_path / "second.log", "w")
    proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=log, start_new_session=True)
    try:
        _wait_for(lambda: in_refit_with_checkpoint(2), 400, "refit_002 with a checkpoint")
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        log.close()
    second_out = (tmp_path / "second.log").read_text()
    assert "stage 1/8: pretrain" not in second_out and "stage 3/8: denoise_001" not in second_out
    assert "refit_001: resumed from its checkpoint at" in second_out
    second = RunDir(run).read_state()
    assert "denoise_002" in second["completed"] and "refit_002" not in second["completed"]
    assert not second.get("finished")
    ckpt1 = (run / "checkpoints" / "iter_001.pt").stat().st_mtime_ns
    denoised2 = (run / "denoised" / "iter_002" / "_COMPLETE.json").read_text()

    # 3. The same command completes the run.
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    out = r.stdout + r.stderr
    final, metrics = RunDir(run).read_state(), RunDir(run).read_metrics()
    assert final["finished"] and sorted(final["completed"]) == sorted(s.key for s in plan(2))
    # Finished stages were not redone: same records, same files.
    for name in ("pretrain", "evaluate_000", "denoise_001"):
        assert final["completed"][name] == first["completed"][name]
    for name in ("refit_001", "evaluate_001", "denoise_002"):
        assert final["completed"][name] == second["completed"][name]
    assert (run / "checkpoints" / "iter_001.pt").stat().st_mtime_ns == ckpt1
    assert (run / "denoised" / "iter_002" / "_COMPLETE.json").read_text() == denoised2
    assert "stage 6/8: denoise_002" not in out and "refit_002: resumed from its checkpoint" in out
    assert [m["iteration"] for m in metrics] == [0, 1, 2]
    assert final["completed"]["denoise_001"]["count"] == 9310  # toy2d: 10000, 2% clean, 5% held out
    assert all(m["denoised"]["count"] == 9310 for m in metrics[1:])
    resumed = [final["completed"][f"refit_{k:03d}"]["resumed_from_kimg"] for k in (1, 2)]
    print(f"orchestrator killed in refit_001, driver in refit_002; resumed from {resumed} kimg")
    assert all(r is not None and r >= 10 - 0.1 for r in resumed)


def test_corrupted_and_truncated_files_are_refused(tmp_path):
    from sfbd.runfiles import publish_dir, stage_dir
    from sfbd.stages.refit import load_items

    data = _toy_data(tmp_path, num=400)
    # A prepared shard flipped after preparation: refused where the trainer reads it.
    shard = data / "clean" / "part-00000.parquet"
    raw = bytearray(shard.read_bytes())
    raw[len(raw) // 2] ^= 0x01
    shard.write_bytes(bytes(raw))
    with pytest.raises(ValueError, match="part-00000.parquet does not match the sha256"):
        load_items(str(data / "clean"), (2,))

    # A stage output truncated after it was published.
    out = tmp_path / "denoised"
    tmp = stage_dir(out)
    ids, items = read_split(data, "noisy")
    from sfbd.data.store import write_shards

    write_shards(tmp, ids, items, 100)
    publish_dir(tmp, out, {"count": len(ids)})
    assert len(load_items(str(out), (2,))) == len(ids)
    victim = sorted(out.glob("*.parquet"))[1]
    victim.write_bytes(victim.read_bytes()[:-100])
    with pytest.raises(ValueError, match=f"{victim.name} does not match the sha256"):
        load_items(str(out), (2,))
    victim.unlink()
    with pytest.raises(FileNotFoundError, match=f"{victim.name} listed as written is missing"):
        parquet_files(out)
    assert json.loads((out / COMPLETE).read_text())["count"] == len(ids)

    # Checkpoints: a flipped byte and a truncation are both caught by the sha256 sidecar...
    ckpt = _mlp_checkpoint(tmp_path / "ckpt" / "iter_001.pt")
    good = ckpt.read_bytes()
    ckpt.write_bytes(good[:100] + bytes([good[100] ^ 1]) + good[101:])
    with pytest.raises(ValueError, match="iter_001.pt does not match its sha256"):
        read_checkpoint(ckpt)
    ckpt.write_bytes(good[: len(good) // 2])
    with pytest.raises(ValueError, match="does not match its sha256"):
        load_denoiser_at(ckpt)
    # ...and without one a truncated file is still refused, not half-loaded.
    Path(str(ckpt) + ".sha256").unlink()
    with pytest.raises(ValueError, match="not a readable sfbd checkpoint"):
        load_denoiser_at(ckpt)


@pytest.mark.parametrize("kind", ["parent is a file", "under /proc"])
def test_unwritable_run_dir_fails_before_any_work(tmp_path, capsys, kind):
    (tmp_path / "afile").write_text("x")
    run = tmp_path / "afile" / "run" if kind == "parent is a file" else "/proc/sfbd-run"
    t0 = time.time()
    assert run_job(["--config", "toy2d", "--run-dir", str(run)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: run-dir: {run} is not writable"), err
    assert len(err.splitlines()) == 1
    assert time.time() - t0 < 5  # before Ray starts
