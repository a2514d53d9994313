"""Run directories and prepared data on any file system: local paths, `file://` URIs (the
URI code path on the local disk) and fsspec ones (`memory://`, which behaves like an object
store: no folder renames, so completion records are the commit points)."""

import os

import numpy as np
import pytest

from sfbd.cli import main
from sfbd.data.prepare import DataConfig, prepare
from sfbd.data.store import read_split, verify_split
from sfbd.rundir import RunDir
from sfbd.runfiles import (
    COMPLETE,
    is_complete,
    parquet_files,
    publish_dir,
    read_parquet,
    stage_dir,
)
from sfbd.storage import Location


@pytest.fixture(params=["local", "file-uri", "memory"])
def root(request, tmp_path):
    if request.param == "local":
        return str(tmp_path / "root")
    if request.param == "file-uri":
        return f"file://{tmp_path}/root"
    return f"memory://sfbd-test/{tmp_path.name}"


def test_location_reads_writes_lists_and_removes(root):
    loc = Location.of(root)
    assert not loc.exists()
    (loc / "a" / "x.txt").write_text("hello")
    (loc / "a" / "y.bin").write_bytes(b"\x00\x01")
    assert (loc / "a" / "x.txt").read_text() == "hello"
    assert [c.name for c in (loc / "a").children()] == ["x.txt", "y.bin"]
    assert [c.name for c in (loc / "a").children(".bin")] == ["y.bin"]
    assert (loc / "a").is_dir() and (loc / "a" / "y.bin").is_file()
    assert str(loc / "a" / "x.txt").startswith(root.rstrip("/"))
    (loc / "a").remove()
    assert not (loc / "a").exists()
    with pytest.raises(FileNotFoundError, match="x.txt does not exist"):
        (loc / "a" / "x.txt").read_bytes()


def test_prepared_data_round_trips_and_is_verified(root):
    out = f"{root}/data"
    prepare(DataConfig(dataset="toy2d", num=500, clean_fraction=0.1), out, lambda *_: 0)
    ids, y = read_split(out, "noisy")
    assert len(ids) == 441 and y.shape == (441, 2)  # 450 observed, 2% of them held out
    verify_split(out)
    shard = Location.of(out) / "noisy" / "part-00000.parquet"
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0xFF
    shard.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="part-00000.parquet does not match its manifest"):
        verify_split(out)


def test_stage_output_is_complete_only_once_published(root):
    final = Location.of(root) / "denoised" / "iter_001"
    tmp = stage_dir(final)
    if final.local is None:  # object stores: written in place, the record is the commit
        assert tmp.path == final.path
    else:
        assert tmp.name == "iter_001.tmp"
    import pyarrow.parquet as pq

    from sfbd.data.store import items_table

    table = items_table(np.arange(5), np.ones((5, 2), np.float32))
    part = tmp / "part-0.parquet"
    pq.write_table(table, part.path, filesystem=part.fs)
    assert not is_complete(final)
    publish_dir(tmp, final, {"count": 5})
    assert is_complete(final) and (final / COMPLETE).is_file()
    assert read_parquet(parquet_files(final)).num_rows == 5
    # Written again (a rerun of the stage): not complete until published again.
    stage_dir(final)
    assert not is_complete(final) or final.local is not None


def test_a_run_through_file_uris_survives_a_full_disk(ray_cluster, tmp_path, capsys):
    """Data and run directory given as file:// URIs: Ray Data, Ray Train (storage_path) and
    every file of the run go through the URI code path. The pretrained checkpoint's bytes
    first go to /dev/full, which answers ENOSPC like a full disk: the stage fails clearly and
    marks nothing complete; with space again the same command completes."""
    data = f"file://{tmp_path}/data"
    assert main(["prepare", "--dataset", "toy2d", "--clean-fraction", "0.05", "--out", data]) == 0
    run = f"file://{tmp_path}/run"
    args = ["run", "--config", "toy2d", "--data", data, "--run-dir", run]
    args += ["--address", ray_cluster]
    for s in [
        "iterations=1",
        "train.pretrain_kimg=10",
        "train.refit_kimg=10",
        "train.checkpoint_kimg=5",
        "eval.num_samples=2000",
    ]:
        args += ["--set", s]
    local = tmp_path / "run"
    (local / "checkpoints").mkdir(parents=True)
    os.symlink("/dev/full", local / "checkpoints" / "iter_000.pt.tmp")
    capsys.readouterr()
    assert main(args) == 1
    err = capsys.readouterr().err
    assert "stage pretrain failed" in err and "No space left on device" in err, err
    assert "iter_000.pt" in err and len([e for e in err.splitlines() if "error:" in e]) == 1
    assert not (local / "checkpoints" / "iter_000.pt").exists()
    assert "pretrain" not in RunDir(run).read_state()["completed"]

    assert main(args) == 0
    assert [m["iteration"] for m in RunDir(run).read_metrics()] == [0, 1]
    assert RunDir(run).read_state()["finished"]
    assert (local / "checkpoints" / "iter_001.pt.sha256").is_file()
    assert is_complete(local / "denoised" / "iter_001")
    assert [p for p in (local / "train" / "refit_001").glob("checkpoint_*") if p.is_dir()]
    assert not (local / "data").exists()  # the given data was used, not prepared again
