"""`sfbd experiment` (sfbd.studies.experiment): SFBD against its baselines at two clean
fractions on a tiny image set, the all-clean baseline reading the originals without writing
them, and a resumed run that trains nothing."""

import json
import time

import numpy as np
import pytest
import torch

from sfbd.cli import main
from sfbd.data.store import read_split

ROWS = ["noisy-only", "pretrain-only", "SFBD iteration 1", "all-clean"]
# What a run directory may hold; the originals of the noisy part belong nowhere in it.
RUN_ENTRIES = {
    "config.yaml",
    "state.json",
    "metrics.jsonl",
    "metrics.png",
    "data",
    "checkpoints",
    "denoised",
    "grids",
    "cache",
    "train",
    "baselines",
    "experiment",
    "tensorboard",
}


@pytest.fixture
def unique_images(tmp_path):
    """400 distinct 16 px blobs (random centre, width, brightness and a faint noisy floor):
    no row of one image occurs in another, so a row's bytes identify its image."""
    rng = np.random.default_rng(1)
    yy, xx = np.mgrid[:16, :16]
    images = []
    for _ in range(400):
        cy, cx = rng.uniform(4, 12, size=2)
        width, peak = rng.uniform(4, 12), rng.uniform(150, 235)
        blob = peak * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / width)
        images.append((blob + rng.integers(0, 20, size=blob.shape))[None].astype(np.uint8))
    path = tmp_path / "blobs.npz"
    np.savez(path, images=np.stack(images))
    return path


def _files(run):
    """Every file with its modification time (config.yaml is rewritten, with the same text,
    by every start of a run)."""
    return {
        p: p.stat().st_mtime_ns for p in run.rglob("*") if p.is_file() and p.name != "config.yaml"
    }


def test_experiment_table_baselines_and_resume(ray_cluster, tmp_path, unique_images):
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.ReLU(), torch.nn.Flatten())
    feature_net = tmp_path / "features.pt"
    torch.jit.script(net).save(str(feature_net))
    sets = [
        f"data.dataset=npz:{unique_images}",
        "data.limit=null",
        "data.tau=0.5",
        "iterations=1",
        "network.preset=tiny",
        "train.batch_size=32",
        "train.pretrain_kimg=0.32",
        "train.refit_kimg=0.16",
        "train.checkpoint_kimg=0.32",
        "train.warmup_kimg=0.1",
        "denoise.steps=3",
        "denoise.batch_size=100",
        "eval.num_samples=16",
        "eval.steps=4",
        "eval.grid=4",
        "eval.reference=clean",
        # One torch thread per process: each holds one of the cluster's two CPUs, and two
        # threads in processes that share a loaded core make a step many times slower.
        "train.threads=1",
        "train.num_workers=0",  # local mode: seven train stages, no worker start-ups
        "denoise.threads=1",
        "eval.threads=1",
    ]
    out = tmp_path / "exp"
    args = ["experiment", "--config", "fashion-mnist-cpu", "--clean-fractions", "0.1,0.25"]
    args += ["--out", str(out), "--address", ray_cluster, "--feature-net", str(feature_net)]
    args += ["--extra-metrics", "swd"] + [a for s in sets for a in ("--set", s)]
    assert main(args) == 0

    results = json.loads((out / "results.json").read_text())
    assert results["columns"] == ["fd", "swd_clean"]
    assert [f["clean_fraction"] for f in results["fractions"]] == [0.1, 0.25]
    table = (out / "results.md").read_text()
    for frac, name in zip(results["fractions"], ("cf0.1", "cf0.25"), strict=True):
        assert [r["row"] for r in frac["rows"]] == ROWS
        for r in frac["rows"]:
            assert set(r["metrics"]) == {"fd", "swd_clean"}
            assert all(np.isfinite(v) and v >= 0 for v in r["metrics"].values()), r
            assert "features.pt" in r["feature_net"]
            assert r["grid"] and (out / name / "grids").as_posix() in r["grid"]
        assert (out / f"comparison_{name}.png").is_file()
        # The all-clean baseline trained on every item, the noisy one on the noisy set.
        run = out / name
        noisy_ids, _ = read_split(run / "data", "noisy")
        by_row = {r["row"]: r for r in frac["rows"]}
        assert by_row["all-clean"]["train_items"] == 400
        assert by_row["noisy-only"]["train_items"] == len(noisy_ids)
        assert by_row["all-clean"]["kimg"] == by_row["SFBD iteration 1"]["kimg"] == 0.48
    # The all-clean model is the same at every fraction: trained once, evaluated in each run.
    first, second = (out / n / "baselines" / "all-clean.pt" for n in ("cf0.1", "cf0.25"))
    assert first.read_bytes() == second.read_bytes()
    assert not (out / "cf0.25" / "train" / "baseline_all-clean").exists()
    for row in ROWS:
        assert f"| {row} |" in table
    assert "fd (10% clean)" in table and "swd_clean (25% clean)" in table

    # Nothing but the pipeline's outputs in the run directories: in particular no noisy-set
    # original, row by row (16 floats), while the clean items' rows are found (the control).
    images = np.load(unique_images)["images"].astype(np.float32) / 127.5 - 1
    for name in ("cf0.1", "cf0.25"):
        run = out / name
        assert {p.name for p in run.iterdir()} <= RUN_ENTRIES
        assert all(
            p.name.split(".")[0] in ("noisy", "all-clean") for p in (run / "baselines").iterdir()
        )
        blob = b"".join(p.read_bytes() for p in run.rglob("*") if p.is_file())
        clean_ids, _ = read_split(run / "data", "clean")
        noisy_ids, _ = read_split(run / "data", "noisy")
        assert all(images[i, 0, 8].tobytes() in blob for i in clean_ids[:20])
        assert not any(
            images[i, 0, r].tobytes() in blob for i in noisy_ids[:60] for r in (4, 8, 12)
        )

    # Again: everything is read back, nothing is trained or written in the run directories.
    before = {n: _files(out / n) for n in ("cf0.1", "cf0.25")}
    t0 = time.time()
    assert main(args) == 0
    assert time.time() - t0 < 40
    assert {n: _files(out / n) for n in ("cf0.1", "cf0.25")} == before
    assert json.loads((out / "results.json").read_text())["fractions"] == results["fractions"]


@pytest.mark.parametrize(
    "flags, named",
    [
        (["--clean-fractions", "0.1,1.5"], "--clean-fractions"),
        (["--clean-fractions", "0.1,0.1"], "--clean-fractions"),
        (["--extra-metrics", "swd,kid"], "--extra-metrics"),
        (["--extra-metrics", "fid"], "--extra-metrics"),  # the toy models vectors
        (["--set", "train.lrr=0.1"], "train.lrr"),
    ],
)
def test_bad_input_fails_before_any_work(tmp_path, capsys, flags, named):
    out = tmp_path / "exp"
    assert main(["experiment", "--config", "toy2d", "--out", str(out), *flags]) == 2
    err = capsys.readouterr().err
    assert named in err and len(err.strip().splitlines()) == 1
    assert not out.exists()
