"""`train.ingest`: memory, stream and auto (sfbd.stages.ingest). The plan and the validation
need no Ray; the feeds read through Ray Data in this process (what a worker of Ray Train's
local mode does) on the session's cluster; two short local-mode stages train on each path."""

from __future__ import annotations

import dataclasses

import numpy as np
import pyarrow as pa
import pytest
import torch

from sfbd.config import ADDED_KEYS, config_from_text, dump_config, load_config
from sfbd.data.store import write_shards
from sfbd.diffusion.networks import NetworkConfig
from sfbd.diffusion.training import TrainConfig, mix_counts, set_weights
from sfbd.run import check_resources
from sfbd.stages.ingest import (
    check_stream_room,
    open_feeds,
    plan_ingest,
    stream_batch,
    stream_datasets,
)
from sfbd.stages.refit import TrainJob, TrainSet, latest_state, run_train


def _write(directory, items: np.ndarray, first_id: int = 0, shard: int = 128) -> str:
    write_shards(directory, np.arange(len(items)) + first_id, items, shard)
    return str(directory)


def _feeds(sets, train, shape, stage="t"):
    """A worker's feeds as in local mode, where a dataset shard is the dataset itself."""
    plan, why = plan_ingest(sets, train, shape)
    datasets = stream_datasets(sets, plan, shape, 0, stage)
    feeds = open_feeds(sets, plan, shape, torch.device("cpu"), 0, stage, 0, datasets.__getitem__)
    return plan, why, feeds


def test_a_bad_ingest_is_refused_before_any_work(tmp_path):
    with pytest.raises(
        ValueError, match=r"^config: train.ingest = 'disk'; allowed: auto, memory, stream$"
    ):
        load_config("toy2d", ["train.ingest=disk"])
    with pytest.raises(ValueError, match=r"^config: train.ingest_budget_gb = 0.0; must be > 0$"):
        load_config("toy2d", ["train.ingest_budget_gb=0"])
    # A stage built by hand (the benchmark, a study) is refused by run_train itself, before
    # its sets are read or Ray Train starts: no storage folder appears.
    job = TrainJob(
        "refit_001",
        TrainConfig(ingest="streaming"),
        NetworkConfig(preset="mlp", channels=2),
        [TrainSet(path=str(tmp_path / "missing"))],
        (2,),
        1.0,
        0,
        storage=str(tmp_path / "train"),
    )
    with pytest.raises(ValueError, match="train.ingest = 'streaming'; allowed"):
        run_train(job, tmp_path / "out.pt")
    # Workers that hold every CPU would leave the stream's reading tasks none: the stage would
    # wait forever. Refused before Ray starts (stream asked for), or when auto picks stream.
    crowded = load_config("toy2d", ["train.ingest=stream", "train.num_workers=2"])
    with pytest.raises(
        ValueError,
        match=r"^config: train.ingest = stream \(as configured\) "
        r"reads with 0.5 CPUs beside .* = 2; the cluster has 2 CPUs: lower "
        r"train.cpus_per_worker \(e.g. to 0.75\)",
    ):
        check_resources(crowded, {"CPU": 2.0})
    check_resources(crowded, {"CPU": 2.5})
    check_resources(load_config("toy2d", ["train.num_workers=2"]), {"CPU": 2.0})  # auto
    with pytest.raises(ValueError, match=r"stream \(chosen by auto\)"):
        check_stream_room(crowded.train, 2.0, "chosen by auto")
    assert not (tmp_path / "train").exists()
    # A run written before the key resumes as it trained: in memory.
    old = "\n".join(s for s in dump_config(load_config("toy2d")).splitlines() if "ingest:" not in s)
    assert ADDED_KEYS["train.ingest"] == "memory"
    assert config_from_text(old, "config.yaml").train.ingest == "memory"
    assert load_config("toy2d").train.ingest == "auto"


def test_auto_picks_memory_within_the_budget_and_streams_over_it(tmp_path):
    shape = (1, 8, 8)  # 256 bytes per item as float32
    small = _write(tmp_path / "clean", np.zeros((20, *shape), np.float32))
    large = _write(tmp_path / "denoised", np.zeros((1000, *shape), np.float32))
    source = TrainSet(source={"spec": "toy2d"}, count=10)  # counted, never loaded here
    sets = [TrainSet(path=small), TrainSet(path=large), source]
    nbytes = (20 + 1000 + 10) * 256

    plan, why = plan_ingest(sets, TrainConfig(ingest_budget_gb=(nbytes + 1) / 1e9), shape)
    assert plan.mode == "memory" and plan.sizes == [20, 1000, 10]
    assert plan.streamed == [False, False, False]
    assert "auto -> memory: the sets hold 0.3 MB of float32 items, within" in why

    over = TrainConfig(batch_size=16, ingest_budget_gb=(nbytes - 1) / 1e9)
    plan, why = plan_ingest(sets, over, shape)
    assert plan.mode == "stream" and plan.sizes == [20, 1000, 10]
    # The budget split over the two Parquet sets, a sixteenth of each share for its buffer.
    assert plan.shuffle_rows == (nbytes - 1) // 2 // (16 * 256) == 32
    assert plan.streamed == [False, True, False]  # 20 items fit in a shuffle buffer: held
    assert "auto -> stream: the sets hold 0.3 MB of float32 items, over" in why
    assert f"in memory: {small}, source toy2d" in why

    plan, _ = plan_ingest(sets, TrainConfig(ingest="memory", ingest_budget_gb=1e-9), shape)
    assert plan.mode == "memory"
    plan, _ = plan_ingest(sets, TrainConfig(ingest="stream"), shape)
    assert plan.mode == "stream" and plan.streamed == [False, False, False]  # all fit


def test_the_stream_honours_the_weights_and_visits_every_item_once_per_pass(ray_cluster, tmp_path):
    """Items (+1, id) and (-1, id): the sign tells the set, the second value the item."""
    a = np.stack([np.ones(200), np.arange(200)], axis=1).astype(np.float32)
    b = np.stack([-np.ones(900), np.arange(900)], axis=1).astype(np.float32)
    sets = [
        TrainSet(path=_write(tmp_path / "a", a, shard=50), weight=0.5),
        TrainSet(path=_write(tmp_path / "b", b, shard=100), weight=0.5),
    ]
    train = TrainConfig(batch_size=32, ingest="stream", ingest_budget_gb=2e-6)
    plan, _, feeds = _feeds(sets, train, (2,))
    assert plan.streamed == [True, True] and plan.shuffle_rows == 32
    weights = set_weights(plan.sizes, [0.5, 0.5])
    try:
        drawn = [stream_batch(feeds, weights, 32, 0, "t", 0, step) for step in range(35)]
    finally:
        for f in feeds:
            f.close()
    x = torch.cat(drawn).numpy()
    from_a = x[:, 0] > 0
    # Exactly the counts the seeded draw gave, the same on every rank; and near the weights.
    expected = sum(mix_counts(weights, 32, 0, "t", step)[0] for step in range(35))
    assert from_a.sum() == expected and abs(from_a.mean() - 0.5) < 0.05
    # Without replacement within a pass: every run of 200 draws from a is a permutation of a's
    # ids (passes 1 and 2), and the second pass comes in a new order.
    ids_a = x[from_a, 1].astype(int)
    assert len(ids_a) >= 400 and feeds[0].passes >= 3
    first, second = ids_a[:200], ids_a[200:400]
    assert sorted(first) == sorted(second) == list(range(200))
    assert not np.array_equal(first, second)


def test_a_streamed_set_much_larger_than_the_budget_stays_within_it(
    ray_cluster, tmp_path, anon_peak
):
    """188 MB of items, a 10 MB budget: over a whole pass, the Arrow memory the feed holds
    stays under the budget, and this process's anonymous memory (Python, NumPy, Arrow, torch,
    and Ray Data's executor of the next pass) grows by well under the set's size."""
    n, shape = 60_000, (1, 28, 28)
    x = np.zeros((n, *shape), np.float32)
    x[:, 0, 0, 0] = np.arange(n)  # the item's id, read back below
    path = _write(tmp_path / "denoised", x, shard=4096)
    set_bytes = x.nbytes
    del x
    train = TrainConfig(batch_size=256, ingest="stream", ingest_budget_gb=0.01)
    arrow0 = pa.total_allocated_bytes()
    plan, _, feeds = _feeds([TrainSet(path=path)], train, shape)
    # From the second step (the first also makes Ray Data's one-off objects), over the rest of
    # the pass, the start of the next and its first shuffle buffer.
    seen = [stream_batch(feeds, np.ones(1), 256, 0, "t", 0, 0)[:, 0, 0, 0].numpy().astype(int)]
    arrow_peak = pa.total_allocated_bytes() - arrow0
    with anon_peak:
        for step in range(1, n // 256 + plan.shuffle_rows // 256 + 2):
            batch = stream_batch(feeds, np.ones(1), 256, 0, "t", 0, step)
            seen.append(batch[:, 0, 0, 0].numpy().astype(int))
            anon_peak.sample()
            arrow_peak = max(arrow_peak, pa.total_allocated_bytes() - arrow0)
        feeds[0].close()
    ids = np.concatenate(seen)
    assert sorted(ids[:n]) == list(range(n)) and feeds[0].passes == 2
    grown = anon_peak.growth
    print(
        f"set {set_bytes / 1e6:.1f} MB; Arrow {arrow_peak / 1e6:.1f} MB; grown {grown / 1e6:.1f} MB"
    )
    assert set_bytes > 180e6 and arrow_peak < 10e6 and grown < set_bytes / 6


def test_memory_and_stream_stages_train_count_and_resume(ray_cluster, tmp_path):
    """Local-mode stages on 40 clean and 400 denoised vectors: memory and stream report the
    same set sizes and images; a stopped stream stage resumes and keeps counting."""
    rng = np.random.default_rng(0)
    sets = [
        TrainSet(path=_write(tmp_path / "clean", rng.normal(size=(40, 2)).astype(np.float32))),
        TrainSet(path=_write(tmp_path / "den", rng.normal(size=(400, 2)).astype(np.float32))),
    ]
    train = TrainConfig(
        batch_size=64,
        checkpoint_kimg=0.32,
        log_kimg=0.32,
        num_workers=0,
        threads=1,
        ingest_budget_gb=3e-6,  # 3.5 KB of vectors: over it; 64-item shuffle buffers
    )
    net = NetworkConfig(preset="mlp", channels=2)
    job = TrainJob("refit_001", train, net, sets, (2,), 0.64, 0, storage=str(tmp_path / "t"))
    threads = torch.get_num_threads()
    try:
        lines = []
        memory = run_train(
            dataclasses.replace(job, train=dataclasses.replace(train, ingest="memory")),
            tmp_path / "memory.pt",
            log=lines.append,
        )
        part = dataclasses.replace(job, stage="refit_002", kimg=0.32)
        run_train(part, tmp_path / "part.pt", log=lines.append)
        whole = run_train(dataclasses.replace(part, kimg=0.64), tmp_path / "s.pt", log=lines.append)
    finally:
        torch.set_num_threads(threads)
    assert "refit_001: train.ingest = memory: the sets hold 0.0 MB of float32 items" in lines
    assert any("auto -> stream" in s and "streamed 1 set(s)" in s for s in lines), lines
    assert memory["set_sizes"] == whole["set_sizes"] == [40, 400]
    assert whole["resumed_from_kimg"] == 0.32
    for stage in ("refit_001", "refit_002"):
        assert latest_state(tmp_path / "t" / stage)["images_seen"] == 640
    assert np.isfinite(memory["loss"]) and np.isfinite(whole["loss"])
