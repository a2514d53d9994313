"""`scripts/gpu_check.sh`: its dry run on this CPU end to end (one invocation, with Ray
clusters of its own in subprocesses), its one-line errors for bad input, and the end-to-end
projection and verdicts of `sfbd.studies.gpu_check`."""

from __future__ import annotations

import gzip
import json
import os
import struct
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest

from sfbd.studies.gpu_check import judge, project_preset_seconds

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "scripts" / "gpu_check.sh"


def write_fashion_mnist(folder: Path, train: int = 300, test: int = 100) -> Path:
    """Four idx gz files in Fashion-MNIST's layout with random pixels and labels."""
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    for prefix, n in (("train", train), ("t10k", test)):
        with gzip.open(folder / f"{prefix}-images-idx3-ubyte.gz", "wb") as f:
            f.write(struct.pack(">IIII", 2051, n, 28, 28))
            f.write(rng.integers(0, 256, (n, 28, 28), dtype=np.uint8).tobytes())
        with gzip.open(folder / f"{prefix}-labels-idx1-ubyte.gz", "wb") as f:
            f.write(struct.pack(">II", 2049, n))
            f.write(rng.integers(0, 10, n, dtype=np.uint8).tobytes())
    return folder


def script_env() -> dict:
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env.pop("SFBD_FASHION_MNIST", None)
    return env


def run_script(*args: str, timeout: float = 1800) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["bash", str(SCRIPT), *args],
        cwd=ROOT,
        env=script_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_dry_run_writes_the_check_layout(tmp_path):
    data = write_fashion_mnist(tmp_path / "fmnist")
    out = tmp_path / "out"
    t0 = time.time()
    proc = run_script(str(out), "--data", str(data), "--dry-run")
    wall = time.time() - t0
    print(f"gpu_check dry run: {wall:.1f} s")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    lines = [x for x in proc.stdout.splitlines() if x.startswith("gpu_check: [")]
    assert [x.split("]")[0] for x in lines] == [f"gpu_check: [{i}/5" for i in range(1, 6)]

    for name in ("environment.json", "benchmark.json", "benchmark.log", "preset.log"):
        assert (out / name).is_file(), name
    rows = [json.loads(x) for x in (out / "preset" / "metrics.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in rows] == [0, 1]
    assert all(isinstance(r["swd_test"], float) for r in rows)
    assert json.loads((out / "preset" / "state.json").read_text())["finished"] is True
    grids = {p.name for p in (out / "preset" / "grids").glob("*.png")}
    assert {"iter_000_samples.png", "iter_001_samples.png", "iter_001_denoised.png"} <= grids
    assert not (out / "preset" / "checkpoints").exists()  # only the small files come back

    s = json.loads((out / "summary.json").read_text())
    assert s["dry_run"] is True and s["dry_run_reason"] == "--dry-run"
    assert set(s["parts"]) == {"environment", "ray", "benchmark", "preset"}
    for part in s["parts"].values():
        assert part["status"] == "ok"
        assert isinstance(part["seconds"], float) and isinstance(part["budget_seconds"], int)
    assert set(s["targets"]) == {
        "ray_data_ratio",
        "ray_train_ratio",
        "compiled_ddpmpp_peak_fraction",
        "preset_end_to_end_minutes",
    }
    for key in ("ray_data_ratio", "ray_train_ratio", "preset_end_to_end_minutes"):
        t = s["targets"][key]
        assert isinstance(t["value"], float) and t["value"] > 0, key
        assert isinstance(t["met"], bool) and t["status"] == ("met" if t["met"] else "not met")
    peak = s["targets"]["compiled_ddpmpp_peak_fraction"]
    assert peak["value"] is None and peak["met"] is None and peak["status"] == "not measured"
    b = s["benchmark"]
    assert b["network"] == "tiny"
    for rate in (*b["denoise_images_per_s"].values(), *b["train_images_per_s"].values()):
        assert isinstance(rate, float) and rate > 0
    p = s["preset"]
    assert p["name"] == "fashion-mnist-gpu" and p["metrics_rows"] == 2 and p["finished"]
    assert p["shrunk"] is True and p["schedule_ran"]["iterations"] == 1
    assert p["schedule_preset"] == {"iterations": 3, "pretrain_kimg": 400.0, "refit_kimg": 200.0}
    assert f"data.root={data}" in p["overrides"]
    assert isinstance(p["wall_seconds"], float) and p["projected_seconds"] > p["wall_seconds"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--dry-run"], "usage: scripts/gpu_check.sh OUTDIR"),
        (["OUT", "--fast"], "unknown option --fast"),
        (["OUT", "--data", "/nonexistent/fmnist"], "--data: folder '/nonexistent/fmnist'"),
    ],
)
def test_bad_input_is_one_line_before_any_work(tmp_path, args, message):
    args = [str(tmp_path / a) if a == "OUT" else a for a in args]
    proc = run_script(*args, timeout=30)
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and message in proc.stderr
    assert not (tmp_path / "OUT").exists()


def test_a_missing_gz_file_is_named(tmp_path):
    data = write_fashion_mnist(tmp_path / "fmnist", train=2, test=2)
    (data / "t10k-images-idx3-ubyte.gz").unlink()
    proc = run_script(str(tmp_path / "out"), "--data", str(data), timeout=30)
    assert proc.returncode == 2
    assert "t10k-images-idx3-ubyte.gz is missing" in proc.stderr


def test_projection_rescales_train_stages_and_adds_iterations():
    # pretrain: 10 kimg at 1000 images/s loop rate = 10 s of its 15 s -> 5 s fixed.
    # refit: 5 kimg at 500/s = 10 s of its 12 s -> 2 s fixed. denoise 20 s, evaluate 8 s.
    completed = {
        "pretrain": {"seconds": 15.0, "kimg": 10.0, "loop_images_per_s": 1000.0},
        "evaluate_000": {"seconds": 8.0},
        "denoise_001": {"seconds": 20.0},
        "refit_001": {"seconds": 12.0, "kimg": 5.0, "loop_images_per_s": 500.0},
        "evaluate_001": {"seconds": 8.0},
    }
    ran = {"iterations": 1, "pretrain_kimg": 10.0, "refit_kimg": 5.0}
    full = {"iterations": 3, "pretrain_kimg": 100.0, "refit_kimg": 50.0}
    seconds, how = project_preset_seconds(completed, 100.0, ran, full)
    # 100 + (5 + 100 - 15) + (2 + 100 - 12) + 2 x (20 + 102 + 8)
    assert seconds == pytest.approx(100 + 90 + 90 + 2 * 130)
    assert how.startswith("projected")
    assert project_preset_seconds(completed, 100.0, full, full) == (
        100.0,
        "measured: the preset ran as it is",
    )
    del completed["refit_001"]
    assert project_preset_seconds(completed, 100.0, ran, full)[0] is None


def test_judge_marks_met_not_met_and_not_measured():
    assert judge("ray_data_ratio", 0.95)["status"] == "met"
    assert judge("ray_data_ratio", 0.9499)["met"] is False
    assert judge("preset_end_to_end_minutes", 10.0)["met"] is True
    assert judge("preset_end_to_end_minutes", 10.5)["status"] == "not met"
    missing = judge("compiled_ddpmpp_peak_fraction", None, "needs --compile")
    assert missing["status"] == "not measured" and missing["note"] == "needs --compile"
