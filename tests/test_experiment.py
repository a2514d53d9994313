"""`sfbd experiment` (sfbd.studies.experiment): SFBD against its baselines with two seeds on a
tiny image set, the all-clean baseline reading the originals without writing them, and a
resumed run that trains nothing; `--seeds` over two fractions with `fit` faked (the all-clean
model shared within a seed only); bad input."""

import json
import time

import numpy as np
import pytest
import torch

from sfbd.cli import main
from sfbd.data.store import read_split

ROWS = [
    "noisy-only",
    "pretrain-only",
    "SFBD iteration 1",
    "SFBD, kept by noisy_distance",
    "pretrain-only, same budget",
    "all-clean",
]
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
        # The preset pretrains on another set; this experiment keeps a clean fraction.
        "data.pretrain=null",
        "data.pretrain_limit=null",
        "data.pretrain_classes=null",
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
    # One fraction, two seeds: seed 1 (seed=1, data.seed=1) in cf0.1-seed1.
    args = ["experiment", "--config", "fashion-mnist-cpu", "--clean-fractions", "0.1"]
    args += ["--seeds", "2", "--out", str(out), "--address", ray_cluster]
    args += ["--feature-net", str(feature_net), "--extra-metrics", "swd"]
    args += [a for s in sets for a in ("--set", s)]
    names = ("cf0.1", "cf0.1-seed1")
    assert main(args) == 0

    results = json.loads((out / "results.json").read_text())
    assert results["columns"] == ["fd", "kid", "noisy_distance", "swd_clean"]
    assert results["seeds"] == 2
    (frac,) = results["fractions"]
    assert frac["clean_fraction"] == 0.1
    table = (out / "results.md").read_text()
    for seed, run_rows, name in zip((0, 1), frac["runs"], names, strict=True):
        assert run_rows["seed"] == seed and run_rows["run_dir"] == str(out / name)
        assert [r["row"] for r in run_rows["rows"]] == ROWS
        for r in run_rows["rows"]:
            assert set(r["metrics"]) == {"fd", "kid", "noisy_distance", "swd_clean"}
            # KID is unbiased, so it may fall below 0 on 16 samples; the distances may not.
            assert all(np.isfinite(v) for v in r["metrics"].values()), r
            assert all(v >= 0 for c, v in r["metrics"].items() if c != "kid"), r
            assert "features.pt" in r["feature_net"]
            assert r["grid"] and (out / name / "grids").as_posix() in r["grid"]
        assert (out / f"comparison_{name}.png").is_file()
        # The all-clean baseline trained on every item, the noisy one on the noisy set.
        run = out / name
        noisy_ids, _ = read_split(run / "data", "noisy")
        by_row = {r["row"]: r for r in run_rows["rows"]}
        assert by_row["all-clean"]["train_items"] == 400
        assert by_row["noisy-only"]["train_items"] == len(noisy_ids)
        same = by_row["pretrain-only, same budget"]  # the clean set alone, SFBD's budget
        assert same["train_items"] == len(read_split(run / "data", "clean")[0]) == 40
        assert by_row["all-clean"]["kimg"] == by_row["SFBD iteration 1"]["kimg"] == 0.48
        assert same["kimg"] == 0.48 and by_row["pretrain-only"]["kimg"] == 0.32
        # The kept row is the iteration with the lower noisy_distance, as best.pt is.
        its = [by_row[label] for label in ("pretrain-only", "SFBD iteration 1")]
        kept = min(its, key=lambda r: r["metrics"]["noisy_distance"])
        assert by_row["SFBD, kept by noisy_distance"]["metrics"] == kept["metrics"]
        best = json.loads((run / "state.json").read_text())["best"]["iteration"]
        assert kept["checkpoint"].endswith(f"iter_{best:03d}.pt")
    # Every cell over the two seeds: their mean, n = 2.
    for i, row in enumerate(frac["rows"]):
        assert row["row"] == ROWS[i]
        assert row["kimg"] == sorted({r["rows"][i]["kimg"] for r in frac["runs"]})
        for c in results["columns"]:
            values = [run_rows["rows"][i]["metrics"][c] for run_rows in frac["runs"]]
            cell = row["metrics"][c]
            assert cell["n"] == 2 and cell["values"] == values
            assert cell["mean"] == pytest.approx(sum(values) / 2)
        assert f"| {row['row']} | " in table
    assert table.count("(n=2)") == len(ROWS) * len(results["columns"])
    assert "fd (10% clean)" in table and "noisy_distance (10% clean)" in table
    # Another seed is another split and another all-clean model, trained in its own run.
    clean = [read_split(out / n / "data", "clean")[0] for n in names]
    assert not np.array_equal(np.sort(clean[0]), np.sort(clean[1]))
    first, second = (out / n / "baselines" / "all-clean.pt" for n in names)
    assert first.read_bytes() != second.read_bytes()
    assert all((out / n / "train" / "baseline_all-clean").exists() for n in names)
    assert results["notes"] == []

    # Nothing but the pipeline's outputs in the run directories: in particular no noisy-set
    # original, row by row, neither as float32 (16 floats) nor as 8-bit pixel codes (16
    # bytes), while the clean items' rows are found in the encoding they are stored in, pixel
    # codes (the control).
    codes = np.load(unique_images)["images"]
    images = codes.astype(np.float32) / 127.5 - 1
    for name in names:
        run = out / name
        assert {p.name for p in run.iterdir()} <= RUN_ENTRIES
        assert all(
            p.name.split(".")[0] in ("noisy", "clean-only", "all-clean")
            for p in (run / "baselines").iterdir()
        )
        blob = b"".join(p.read_bytes() for p in run.rglob("*") if p.is_file())
        clean_ids, _ = read_split(run / "data", "clean")
        noisy_ids, _ = read_split(run / "data", "noisy")
        assert all(codes[i, 0, 8].tobytes() in blob for i in clean_ids[:20])
        assert not any(
            a[i, 0, r].tobytes() in blob
            for a in (images, codes)
            for i in noisy_ids[:60]
            for r in (4, 8, 12)
        )

    # Again: everything is read back, nothing is trained or written in the run directories.
    before = {n: _files(out / n) for n in names}
    t0 = time.time()
    assert main(args) == 0
    assert time.time() - t0 < 40
    assert {n: _files(out / n) for n in names} == before
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


def test_seeds_must_be_positive(tmp_path, capsys):
    out = tmp_path / "exp"
    for n in ("0", "-2"):
        assert main(["experiment", "--config", "toy2d", "--out", str(out), "--seeds", n]) == 2
        assert capsys.readouterr().err == "error: --seeds: must be >= 1\n"
    flags = ["--seeds", "2", "--set", "data.seed=3"]
    assert main(["experiment", "--config", "toy2d", "--out", str(out), *flags]) == 2
    assert capsys.readouterr().err.startswith("error: --seeds: sets seed and data.seed")
    assert not out.exists()


def _fake_fit(calls: list, trained: list, stop_early: set):
    """`sfbd.run.fit` without Ray: a finished run with a metrics row per iteration (distance
    seed + k + clean fraction), the baselines asked for (a model that names its seed and
    fraction, trained unless the run has one), stopped after iteration 1 when the run's name
    is in `stop_early`."""
    from sfbd.baselines import budget_kimg
    from sfbd.config import load_config
    from sfbd.rundir import RunDir
    from sfbd.runfiles import checkpoint_complete, save_checkpoint, write_json_atomic

    def fit(config, run_dir, *, overrides=(), address=None, baselines=()):
        cfg, run = load_config(config, list(overrides)), RunDir(run_dir)
        calls.append((run.name, list(overrides), list(baselines)))
        run.write_config(cfg)
        if not run.read_state().get("finished"):
            last = 1 if run.name in stop_early else cfg.iterations
            for k in range(last + 1):
                value = cfg.seed + k + cfg.data.clean_fraction
                run.append_metrics({"iteration": k, "metric": "swd_true", "swd_true": value})
            state = {"completed": {}, "finished": True}
            if last < cfg.iterations:
                state["stopped_early"] = {"iteration": last, "reason": "test"}
            run.write_state(state)
        for kind in baselines:
            ckpt = run.baseline_checkpoint(kind)
            if not checkpoint_complete(ckpt):
                trained.append((run.name, kind))
                model = f"{kind} seed {cfg.seed} fraction {cfg.data.clean_fraction}"
                save_checkpoint(ckpt, model.encode())
            record = {"metric": "swd_true", "swd_true": 1.0, "kimg": budget_kimg(run, cfg)}
            write_json_atomic(run.baseline_result(kind), {**record, "train_items": 10})

    return fit


def test_seeds_share_all_clean_within_a_seed_only(tmp_path, monkeypatch):
    """Orchestration of `--seeds 2` over two fractions (fit faked): run names, seed overrides,
    the all-clean model trained once per seed and budget, and a resume that trains nothing."""
    from sfbd.rundir import RunDir
    from sfbd.studies.experiment import run_experiment, share_all_clean

    calls, trained = [], []
    monkeypatch.setattr("sfbd.run.fit", _fake_fit(calls, trained, {"cf0.25-seed1"}))
    monkeypatch.setattr("sfbd.run.init_ray", lambda address=None: None)
    out = tmp_path / "exp"

    def experiment():
        return run_experiment(
            "toy2d", [0.1, 0.25], out, seeds=2, overrides=["iterations=2"], extra="none", log=str
        )

    results = experiment()
    every, first = ["noisy", "clean-only", "all-clean"], ["noisy", "clean-only"]
    assert [(c[0], c[2]) for c in calls] == [
        ("cf0.1", every),
        ("cf0.25", first),  # SFBD first: the budget decides the sharing
        ("cf0.25", every),
        ("cf0.1-seed1", every),  # no earlier run of seed 1
        ("cf0.25-seed1", first),
        ("cf0.25-seed1", every),
    ]
    assert calls[3][1] == ["iterations=2", "data.clean_fraction=0.1", "seed=1", "data.seed=1"]
    # cf0.25 evaluates cf0.1's model; seed 1 trains its own, and cf0.25-seed1 stopped early:
    # a smaller budget, so a model of its own too.
    assert [name for name, kind in trained if kind == "all-clean"] == [
        "cf0.1",
        "cf0.1-seed1",
        "cf0.25-seed1",
    ]
    model = {n: (out / n / "baselines" / "all-clean.pt").read_bytes() for n in ("cf0.1", "cf0.25")}
    assert model["cf0.25"] == model["cf0.1"] == b"all-clean seed 0 fraction 0.1"
    assert results["notes"] == [
        "all-clean does not depend on the clean fraction: the model trained in `cf0.1` is also "
        "evaluated in `cf0.25`."
    ]
    quarter = results["fractions"][1]
    assert [r["run_dir"] for r in quarter["runs"]] == [
        str(out / "cf0.25"),
        str(out / "cf0.25-seed1"),
    ]
    assert quarter["runs"][0]["rows"][-1]["trained_in"] == str(out / "cf0.1")
    assert "trained_in" not in quarter["runs"][1]["rows"][-1]
    table = {r["row"]: r for r in quarter["rows"]}
    it1, it2 = table["SFBD iteration 1"]["metrics"], table["SFBD iteration 2"]["metrics"]
    assert it1["swd_true"]["values"] == [1.25, 2.25] and it1["swd_true"]["mean"] == 1.75
    assert it2["swd_true"]["values"] == [2.25] and it2["swd_true"]["n"] == 1
    assert table["all-clean"]["kimg"] == [250.0, 350.0]  # 150 + 1 x 100, 150 + 2 x 100
    text = (out / "results.md").read_text()
    assert "| SFBD iteration 2 | 350 | 2.6 +/- 0.7071 (n=2) | 2.25 (n=1) |" in text

    # A model of another seed is never shared, even with the same budget.
    assert share_all_clean([RunDir(out / "cf0.1")], RunDir(out / "cf0.1-seed1")) is None
    # Again: everything read back, nothing trained, one fit per run.
    calls.clear()
    again = experiment()
    assert len(calls) == 4 and len(trained) == 11  # 4 noisy, 4 clean-only, 3 all-clean
    assert again["fractions"] == results["fractions"] and again["notes"] == results["notes"]


def test_rows_carry_the_share_of_classes_pretraining_lacks(tmp_path):
    """With a pretraining set that lacks classes (the make-run preset: no shoes or bags) and
    every item noisy, each row carries the share of its samples in those classes."""
    from sfbd.config import load_config
    from sfbd.rundir import RunDir
    from sfbd.runfiles import write_json_atomic
    from sfbd.studies.experiment import LACKING, collect_rows

    run = RunDir(tmp_path / "run")
    config = load_config("fashion-mnist-cpu")
    assert config.data.classes_pretraining_lacks() == [5, 7, 8, 9]
    run.write_config(config)
    shares = [[0.2, 0.2, 0.2, 0.1, 0.2, 0.0, 0.1, 0.0, 0.1, 0.1], [0.1] * 10]
    for k, s in enumerate(shares):
        run.append_metrics(
            {"iteration": k, "metric": "fd", "fd": 10.0 - k, "noisy_distance": 5.0 - k}
            | {"class_shares": s}
        )
    for kind in ("noisy", "clean-only", "all-clean"):
        row = {"metric": "fd", "fd": 1.0, "kimg": 36.0, "class_shares": shares[1]}
        write_json_atomic(run.baseline_result(kind), row)
    _, rows = collect_rows(run)
    got = {r["row"]: r["metrics"][LACKING] for r in rows}
    assert got["pretrain-only"] == pytest.approx(0.2)  # 0.0 + 0.0 + 0.1 + 0.1
    assert got["SFBD iteration 1"] == got["all-clean"] == pytest.approx(0.4)
    # A clean fraction of the data set itself: no class is missing, no such column.
    assert load_config("toy2d").data.classes_pretraining_lacks() is None
