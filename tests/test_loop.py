"""The SFBD loop on a local Ray cluster: the toy claim, a tiny image run (training in Ray
Train's local mode; DDP across workers is test_multinode.py), `sfbd sample`, and bad
configurations and resource requests."""

import json
import re
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from sfbd.cli import main
from sfbd.data.store import read_split
from sfbd.rundir import RunDir
from sfbd.tensorboard_events import image_tags, read_scalars

ROOT = Path(__file__).resolve().parents[1]


def run_job(args: list[str]) -> int:
    """`python jobs/sfbd.py ARGS`, in this process."""
    return main(["run", *args])


def test_toy_sfbd_beats_pretraining_and_noisy_training(ray_cluster, tmp_path, monkeypatch):
    run = tmp_path / "toy"
    args = ["--config", "toy2d", "--run-dir", str(run), "--address", ray_cluster]
    # Ray Train's local mode: the claim is about the algorithm, and local mode gives what one
    # worker gives, bit for bit (test_local_mode_trains_as_one_worker), 20 s sooner per stage.
    args += ["--set", "iterations=2", "--set", "train.num_workers=0"]
    assert run_job(args + ["--baselines", "noisy"]) == 0
    metrics = RunDir(run).read_metrics()
    assert [m["iteration"] for m in metrics] == [0, 1, 2]
    swd = [m["swd_true"] for m in metrics]
    noisy = json.loads((run / "baselines" / "noisy.json").read_text())["swd_true"]
    print(
        f"toy swd_true: pretrain {swd[0]:.4f}, SFBD {[round(s, 4) for s in swd[1:]]}, "
        f"noisy-only {noisy:.4f}"
    )
    assert swd[-1] < swd[0]
    assert swd[-1] < noisy
    # The fixed-point residual RMS(E_2 - E_1), the label-free sign of convergence.
    assert "residual_rms" not in metrics[1].get("denoised_check", {})
    assert 0 < metrics[2]["denoised_check"]["residual_rms"] < 1
    assert (run / "grids" / "iter_002_points.png").is_file()
    # checkpoints/best.pt: the iteration with the lowest noisy_distance, copied.
    near = [m["noisy_distance"] for m in metrics]
    best = near.index(min(near))
    assert RunDir(run).read_state()["best"]["iteration"] == best
    assert (run / "checkpoints" / "best.pt").read_bytes() == (
        run / "checkpoints" / f"iter_{best:03d}.pt"
    ).read_bytes()
    # A model of 2-D points cannot be written as images.
    sample = ["sample", "--checkpoint", str(run / "checkpoints" / "iter_002.pt"), "--num", "2"]
    assert main([*sample, "--format", "png", "--out", str(tmp_path / "p")]) == 2
    assert not (tmp_path / "p").exists()
    # A finished run returns at once and changes nothing.
    before = (run / "state.json").read_text()
    t0 = time.time()
    assert run_job(args) == 0
    assert time.time() - t0 < 30
    assert (run / "state.json").read_text() == before
    assert len(RunDir(run).read_metrics()) == 3

    # A variant that shares this run's pretraining (train.init, pretrain_kimg 0, its data):
    # iteration 0 is that checkpoint byte for byte, and with the same settings iteration 1
    # (ODE backward pass, seeded refit) is the same model as the first run's.
    branch = tmp_path / "branch"
    init = run / "checkpoints" / "iter_000.pt"
    more = ["--set", "train.pretrain_kimg=0", "--set", f"train.init={init}"]
    more += ["--set", "iterations=1", "--data", str(run / "data")]
    # The driver checks the checkpoint's network before and after the data: one read.
    from sfbd import runfiles

    reads, read = [], runfiles.load_denoiser_at
    monkeypatch.setattr(runfiles, "load_denoiser_at", lambda p, *a: reads.append(p) or read(p, *a))
    assert (
        run_job(
            [
                "--config",
                "toy2d",
                "--run-dir",
                str(branch),
                "--address",
                ray_cluster,
                "--set",
                "train.num_workers=0",
                *more,
            ]
        )
        == 0
    )
    assert reads == [str(init)]
    theirs = RunDir(branch).read_metrics()
    assert (branch / "checkpoints" / "iter_000.pt").read_bytes() == init.read_bytes()
    assert [r["swd_true"] for r in theirs] == swd[:2]
    assert theirs[0]["train_loss"] is None and "pretrain" not in [
        p.name for p in (branch / "train").iterdir()
    ]

    # train.refit_start: continue from the same pretraining: the refit carries on its train
    # state (copied beside iteration 0), counting the pretraining's images as trained before.
    carry = tmp_path / "carry"
    more += ["--set", "train.refit_start=continue", "--set", "train.refit_kimg=2"]
    common = ["--config", "toy2d", "--address", ray_cluster, "--set", "train.num_workers=0"]
    assert run_job([*common, "--run-dir", str(carry), *more]) == 0
    pretrain_states = list((run / "train" / "pretrain").glob("checkpoint_*/train_state.pt"))
    newest = max(pretrain_states, key=lambda p: p.parent.name)
    assert (carry / "train" / "pretrain" / newest.parent.name / "train_state.pt").read_bytes() == (
        newest.read_bytes()
    )
    refit = torch.load(
        max((carry / "train" / "refit_001").glob("checkpoint_*/train_state.pt")), weights_only=True
    )
    # Whole batches of 64: 150 kimg are 150,016 images, 2 kimg 2,048.
    assert (refit["images_before"], refit["images_seen"]) == (150_016, 2_048)


@pytest.fixture
def tiny_images(tmp_path):
    rng = np.random.default_rng(0)
    # Blobs on a dark background: structured enough for a tiny UNet to learn something.
    yy, xx = np.mgrid[:16, :16]
    images = []
    for _ in range(400):
        cy, cx = rng.integers(4, 12, size=2)
        blob = 255 * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / 8.0)
        images.append(blob[None].astype(np.uint8))
    path = tmp_path / "blobs.npz"
    np.savez(path, images=np.stack(images))
    return path


def test_tiny_image_run(ray_cluster, tmp_path, tiny_images, capfd):
    data = tmp_path / "data"
    assert (
        main(
            [
                "prepare",
                "--dataset",
                f"npz:{tiny_images}",
                "--clean-fraction",
                "0.1",
                "--tau",
                "0.5",
                "--out",
                str(data),
                "--shard-size",
                "70",
            ]
        )
        == 0
    )
    run = tmp_path / "run"
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.ReLU(), torch.nn.Flatten())
    feature_net = tmp_path / "features.pt"
    torch.jit.script(net).save(str(feature_net))
    sets = [
        "iterations=1",
        "baselines=[]",
        "network.preset=tiny",
        # Ray Train's local mode; DDP across workers: test_multinode.py
        "train.num_workers=0",
        "train.threads=1",
        "denoise.threads=1",
        "eval.threads=1",
        "train.batch_size=32",
        "train.pretrain_kimg=0.64",
        "train.refit_kimg=0.32",
        "train.checkpoint_kimg=0.32",
        "train.warmup_kimg=0.1",
        "denoise.steps=3",
        "denoise.batch_size=50",
        "eval.num_samples=16",
        "eval.seeds=2",
        "eval.steps=4",
        "eval.grid=4",
        "eval.reference=clean",
        "eval.metric=fd",
        f"eval.feature_net={feature_net}",
        "eval.memorization_threshold=0.1",
    ]
    args = [
        "--config",
        "fashion-mnist-cpu",
        "--data",
        str(data),
        "--run-dir",
        str(run),
        "--address",
        ray_cluster,
    ]
    assert run_job(args + [a for s in sets for a in ("--set", s)]) == 0

    noisy_ids, _ = read_split(data, "noisy")
    out = run / "denoised" / "iter_001"
    ids = np.concatenate(
        [pq.read_table(p, columns=["id"]).column("id").to_numpy() for p in out.glob("*.parquet")]
    )
    held_ids, _ = read_split(data, "holdout")  # 2% of the 360 noisy observations
    assert len(held_ids) == 7 and len(ids) == len(noisy_ids) == 353
    assert sorted(ids.tolist()) == sorted(noisy_ids.tolist())  # each id exactly once
    assert not set(ids.tolist()) & set(held_ids.tolist())  # the holdout is never denoised
    assert json.loads((out / "_COMPLETE.json").read_text())["count"] == 353
    for k in (0, 1):
        assert (run / "checkpoints" / f"iter_{k:03d}.pt").is_file()
        assert (run / "grids" / f"iter_{k:03d}_samples.png").is_file()
    assert (run / "grids" / "iter_001_denoised.png").is_file()
    rows = RunDir(run).read_metrics()
    assert [r["iteration"] for r in rows] == [0, 1]
    assert rows[1]["denoised"]["count"] == 353 and "denoise" in rows[1]["seconds"]
    assert all(r["metric"] == "fd" and "features.pt" in r["feature_net"] for r in rows)
    assert all(r["fd"] >= 0 for r in rows)
    for r in rows:  # two seed sets of 16 samples: the metric is their mean
        assert len(r["fd_per_seed"]) == 2 and r["fd_min"] == min(r["fd_per_seed"])
        assert r["fd"] == pytest.approx(sum(r["fd_per_seed"]) / 2)
        assert r["fd_per_seed"][0] != r["fd_per_seed"][1] and r["num_samples"] == 16
    assert all(r["kid_std"] > 0 and np.isfinite(r["kid"]) for r in rows)  # KID beside fd
    # The denoised set's own fd, on as many items as the samples' (16), with KID beside it.
    assert "denoised_distance" not in rows[0] and rows[1]["denoised_distance"] >= 0
    assert rows[1]["denoised_distance_items"] == 16 and rows[1]["denoised_kid_std"] > 0
    check = rows[1]["denoised_check"]  # iteration 1: no E_0 to compare with
    assert "residual_rms" not in check and 0 <= check["fraction_near_clean"] <= 1
    assert set(rows[1]["memorization"]) == {"threshold", "clean", "denoised"}
    assert (run / "metrics.png").is_file() and (run / "grids" / "iter_001_closest.png").is_file()

    # TensorBoard: the train loss on one axis across stages (images trained in the run:
    # pretraining 640, then the refit's 320 after it), every metric per iteration, the grids.
    tb = RunDir(run).tensorboard
    scalars, images = read_scalars(tb), image_tags(tb)
    assert [step for step, _ in scalars["train/loss"]] == [640, 960]
    assert scalars["train/loss"][-1][1] == pytest.approx(rows[1]["train_loss"], rel=1e-5)
    assert [step for step, _ in scalars["train/images_per_s"]] == [640, 960]
    assert scalars["eval/fd"] == [(k, pytest.approx(rows[k]["fd"], rel=1e-5)) for k in (0, 1)]
    assert [s for s, _ in scalars["eval/memorization/denoised/fraction_copies"]] == [1]
    assert scalars["eval/denoised/count"] == [(1, 353.0)]
    assert images == {"grids/samples": [0, 1], "grids/closest": [0, 1], "grids/denoised": [1]}
    assert set(read_scalars(RunDir(run).tensorboard_train)) == {"train/loss", "train/images_per_s"}

    # A clean log: progress with the run's time left, no deprecation or missing-tqdm notes.
    out = capfd.readouterr()
    log = out.out + out.err
    assert "RayDeprecationWarning" not in log and "tqdm is not installed" not in log
    assert "non-writable" not in log and "not writable" not in log
    assert "stage 2/5: evaluate_000; run " in log
    assert "stage 1/5: pretrain; run 0s elapsed, time left unknown (no " in log
    assert re.search(r"stage 3/5: denoise_001; run \S+ elapsed, time left unknown", log)
    assert re.search(r"stage 4/5: refit_001 done in \S+; run \S+ elapsed, about \S+ left", log)
    assert re.search(r"pretrain: 0\.6/0\.6 kimg \(100%\), loss [0-9.]+, \d+ images/s", log)

    out = tmp_path / "s.npz"
    assert (
        main(
            [
                "sample",
                "--checkpoint",
                str(run / "checkpoints" / "iter_001.pt"),
                "--num",
                "5",
                "--steps",
                "3",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    images = np.load(out)["images"]
    assert images.shape == (5, 1, 16, 16) and images.dtype == np.float32
    assert images.min() >= -1 and images.max() <= 1

    # The same samples as a folder of 8-bit PNGs, for FID tools; never into a used folder.
    from PIL import Image

    pngs = tmp_path / "pngs"
    args = ["sample", "--checkpoint", str(run / "checkpoints" / "iter_001.pt"), "--num", "5"]
    args += ["--steps", "3", "--format", "png", "--out", str(pngs)]
    assert main(args) == 0
    assert sorted(p.name for p in pngs.iterdir()) == [f"{i:06d}.png" for i in range(5)]
    first = np.asarray(Image.open(pngs / "000000.png"))
    assert first.dtype == np.uint8 and first.shape == (16, 16)
    expected = np.clip((images[0, 0] + 1) * 127.5, 0, 255).round()
    assert np.array_equal(first, expected.astype(np.uint8))
    assert main(args) == 2
    assert "--out: " in capfd.readouterr().err


@pytest.mark.parametrize(
    "args,needle",
    [
        (["--config", "no-such-preset"], "unknown preset"),
        (["--config", "toy2d", "--set", "train.learning_rate=1"], "train.learning_rate"),
        (["--config", "toy2d", "--set", "train.batch_size=big"], "train.batch_size"),
        (["--config", "toy2d", "--set", "denoise.steps=2.5"], "denoise.steps"),
        (["--config", "toy2d", "--set", "train.num_workers=-1"], "train.num_workers"),
        (
            ["--config", "toy2d", "--set", "train.num_workers=0", "--set", "train.use_gpu=true"],
            "train.use_gpu",
        ),
        (["--config", "toy2d", "--set", "data.tau=0"], "data.tau"),
        (["--config", "toy2d", "--set", "data.sigma=0"], "data.tau"),
        (["--config", "toy2d", "--set", "network.preset=resnet"], "network.preset"),
        (["--config", "missing.yaml"], "does not exist"),
        (["--config", "toy2d", "--set", "train.pretrain_kimg=0"], "train.pretrain_kimg"),
        (["--config", "toy2d", "--set", "train.init=/no/such.pt"], "train.init"),
        (["--config", "toy2d", "--set", "train.refit_start=warm"], "train.refit_start"),
        (
            [
                "--config",
                "fashion-mnist-cpu",
                "--set",
                "data.clean_fraction=0",
                "--set",
                "data.pretrain=fashion-mnist:test",
                "--set",
                "data.pretrain_classes=[0,12]",
            ],
            "data.pretrain_classes",
        ),
    ],
)
def test_bad_configuration_fails_before_any_work(tmp_path, capsys, args, needle):
    run = tmp_path / "run"
    assert run_job(args + ["--run-dir", str(run)]) == 2
    err = capsys.readouterr().err
    assert needle in err and len(err.strip().splitlines()) == 1, err
    assert not run.exists()


@pytest.mark.parametrize(
    "setting,needle",
    [
        ("train.num_workers=8", "train.num_workers"),
        ("train.use_gpu=true", "train.use_gpu"),
        ("denoise.cpus_per_actor=16", "denoise.cpus_per_actor"),
    ],
)
def test_impossible_resource_request_fails_before_any_work(
    ray_cluster, tmp_path, capsys, setting, needle
):
    run = tmp_path / "run"
    rc = run_job(
        ["--config", "toy2d", "--run-dir", str(run), "--set", setting, "--address", ray_cluster]
    )
    assert rc == 2
    err = capsys.readouterr().err
    assert needle in err and len(err.strip().splitlines()) == 1, err
    assert not run.exists()
