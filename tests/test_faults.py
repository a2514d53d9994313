"""Faults the pipeline must survive or refuse clearly (issue: running it for real):

- a denoise actor killed mid-stage: Ray Data restarts it and retries its work; every id comes
  out exactly once;
- a train worker killed mid-refit: FailureConfig restarts the worker group from the last
  checkpoint, losing at most one checkpoint interval;
- the orchestrator killed mid-run: the job fails saying which stage, and the same command
  resumes it (nothing lost or duplicated); the Ray metrics show the running stage meanwhile;
- corrupted or truncated Parquet shards and checkpoints are refused with a clear error;
- a full disk or an unwritable run directory fails clearly, and no stage is marked complete.
"""

import json
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
from conftest import load_job

from sfbd.config import DenoiseConfig, TrainConfig
from sfbd.data.prepare import PrepareConfig, prepare
from sfbd.data.store import read_split
from sfbd.diffusion.networks import NetworkConfig, build_denoiser
from sfbd.orchestrator import read_metrics, read_state
from sfbd.runfiles import (
    COMPLETE,
    load_denoiser_at,
    parquet_files,
    read_checkpoint,
    save_denoiser_at,
)

ROOT = Path(__file__).resolve().parents[1]


def _toy_data(tmp_path, num=4000):
    cfg = PrepareConfig(dataset="toy2d", num=num, clean_fraction=0.05, out=str(tmp_path / "data"))
    return prepare(cfg, log=lambda *_: None).local


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


def test_killed_train_worker_resumes_from_the_last_checkpoint(ray_cluster, tmp_path):
    from sfbd.stages.refit import run_train

    t_start = time.time()
    data = _toy_data(tmp_path)
    storage = tmp_path / "train"
    train = TrainConfig(
        batch_size=64, lr=2e-3, checkpoint_kimg=8, log_kimg=8, num_workers=1, threads=1
    )
    net = NetworkConfig(preset="mlp", channels=2)
    sets = [{"path": str(data / "clean"), "weight": None}]
    args = ("refit_001", tmp_path / "out.pt", storage, train, net, sets, (2,), 48.0, 0)
    thread, box = _run_in_thread(run_train, *args)

    def checkpoints():
        stage = storage / "refit_001"
        return sorted(d for d in stage.glob("checkpoint_*") if d.is_dir()) if stage.is_dir() else []

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
    # one checkpoint interval of training was redone; the stage still trained 48 kimg.
    assert resumed is not None and resumed >= 2 * train.checkpoint_kimg - 0.1
    assert summary["kimg"] == 48.0
    assert load_denoiser_at(tmp_path / "out.pt")[2]["stage"] == "refit_001"


def _scrape(pattern: str) -> list[str]:
    import ray

    node = ray._private.worker.global_worker.node
    url = f"http://{node.node_ip_address}:{node.metrics_export_port}/metrics"
    try:
        text = urllib.request.urlopen(url, timeout=5).read().decode()
    except OSError:
        return []
    return [line for line in text.splitlines() if line.startswith(pattern)]


def test_killed_orchestrator_run_resumes_with_nothing_lost_or_duplicated(ray_cluster, tmp_path):
    t_start = time.time()
    run = tmp_path / "run"
    args = ["--config", "toy2d", "--run-dir", str(run), "--address", ray_cluster]
    args += ["--set", "iterations=2", "--set", "train.pretrain_kimg=40"]
    args += ["--set", "train.refit_kimg=40", "--set", "train.checkpoint_kimg=10"]
    args += ["--set", "eval.num_samples=4000"]
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "jobs" / "sfbd.py"), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        _wait_for(
            lambda: (
                (run / "state.json").is_file()
                and read_state(run).get("current") == "refit_001"
                and list((run / "train" / "refit_001").glob("checkpoint_*"))
            ),
            400,
            "refit_001 with a checkpoint",
            poll=0.5,
        )
        # Meanwhile the metrics agent exports the run's stage and its denoised images.
        stage = _wait_for(lambda: _scrape("ray_sfbd_stage{"), 60, "exported stage metric")
        denoised = _wait_for(
            lambda: _scrape("ray_sfbd_images_denoised_total{"), 60, "images denoised metric"
        )
        running = [line for line in stage if 'stage="refit_001"' in line]
        assert running and running[0].endswith(" 1.0"), stage
        assert sum(float(line.rsplit(" ", 1)[1]) for line in denoised) >= 9800
        orch = _alive_actors("Orchestrator", t_start)[0]
        os.kill(orch["Pid"], signal.SIGKILL)
        output, _ = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 1, output
    assert "stage refit_001 failed" in output and "rerun the same command" in output
    done_before = set(read_state(run)["completed"])
    assert "refit_001" not in done_before and "denoise_001" in done_before

    job = load_job("sfbd")
    assert job.main(args) == 0
    state, metrics = read_state(run), read_metrics(run)
    assert [m["iteration"] for m in metrics] == [0, 1, 2]
    assert state["completed"]["denoise_001"]["count"] == 9800  # toy2d: 10000 items, 2% clean
    assert all(m["denoised"]["count"] == 9800 for m in metrics[1:])
    resumed = state["completed"]["refit_001"]["resumed_from_kimg"]
    print(f"orchestrator killed in refit_001; the rerun resumed it from {resumed} kimg")
    assert resumed is not None and resumed >= 10 - 0.1


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
    job = load_job("sfbd")
    t0 = time.time()
    assert job.main(["--config", "toy2d", "--run-dir", str(run)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: run-dir: {run} is not writable"), err
    assert len(err.splitlines()) == 1
    assert time.time() - t0 < 5  # before Ray starts


def test_full_disk_fails_the_stage_clearly_and_marks_nothing_complete(
    ray_cluster, tmp_path, capsys
):
    run = tmp_path / "run"
    args = ["--config", "toy2d", "--run-dir", str(run), "--address", ray_cluster]
    args += ["--set", "iterations=1", "--set", "train.pretrain_kimg=10"]
    args += ["--set", "train.refit_kimg=10", "--set", "train.checkpoint_kimg=10"]
    args += ["--set", "eval.num_samples=2000"]
    # The pretrained checkpoint's bytes go to /dev/full, which answers ENOSPC like a full disk.
    (run / "checkpoints").mkdir(parents=True)
    os.symlink("/dev/full", run / "checkpoints" / "iter_000.pt.tmp")
    job = load_job("sfbd")
    assert job.main(args) == 1
    err = capsys.readouterr().err
    assert "stage pretrain failed" in err and "No space left on device" in err, err
    assert "iter_000.pt" in err
    assert not (run / "checkpoints" / "iter_000.pt").exists()
    assert "pretrain" not in read_state(run)["completed"]
    # With space again the same command completes, training pretrain from its checkpoint.
    assert job.main(args) == 0
    assert [m["iteration"] for m in read_metrics(run)] == [0, 1]
