"""The run directory: config.yaml guards it (the same settings resume it, also when the run
was begun by a version that lacked some keys or said `data.sigma`; other settings are
refused), and `RunDir` names its files."""

import pytest
import yaml

from sfbd.config import load_config
from sfbd.plan import Stage, plan
from sfbd.run import prepare_run_dir
from sfbd.rundir import RunDir


def _config(*overrides):
    return load_config("toy2d", ["data.num=200", *overrides])


def test_same_settings_resume_other_settings_are_refused(tmp_path, capsys):
    run = RunDir(tmp_path / "run")
    prepare_run_dir(_config(), run, None)
    first = run.config_file.read_text()
    prepare_run_dir(_config(), run, None)  # same settings: accepted, file unchanged
    assert run.config_file.read_text() == first

    # A run begun before `train.bf16` and `denoise.compile` existed resumes with defaults.
    old = yaml.safe_load(first)
    del old["train"]["bf16"], old["denoise"]["compile"]
    run.config_file.write_text(yaml.safe_dump(old))
    prepare_run_dir(_config(), run, None)
    assert yaml.safe_load(run.config_file.read_text())["train"]["bf16"] is True

    # A run begun when the observation noise was `data.sigma` resumes, read as `data.tau`.
    old = yaml.safe_load(first)
    old["data"]["sigma"] = old["data"].pop("tau")
    run.config_file.write_text(yaml.safe_dump(old))
    capsys.readouterr()
    prepare_run_dir(_config(), run, None)
    assert "data.sigma is now data.tau" in capsys.readouterr().out
    assert yaml.safe_load(run.config_file.read_text())["data"]["tau"] == 0.59

    with pytest.raises(ValueError, match="run-dir: .* holds a run with a different config"):
        prepare_run_dir(_config("train.lr=0.01"), run, None)


def test_stages_are_typed_values_with_the_state_keys_of_older_runs():
    keys = [s.key for s in plan(2)]
    assert keys == [
        "pretrain",
        "evaluate_000",
        "denoise_001",
        "refit_001",
        "evaluate_001",
        "denoise_002",
        "refit_002",
        "evaluate_002",
    ]
    assert [Stage.parse(k) for k in keys] == plan(2)
    assert Stage.parse("refit_012") == Stage("refit", 12) and Stage("refit", 12).trains
    for bad in ("refit", "refit_x", "train_001"):
        with pytest.raises(ValueError, match="stage"):
            Stage.parse(bad)
    with pytest.raises(ValueError, match="denoise cannot run at iteration 0"):
        Stage("denoise", 0)


def test_run_dir_names_every_file(tmp_path):
    run = RunDir(tmp_path)
    rel = lambda loc: str(loc)[len(str(tmp_path)) + 1 :]  # noqa: E731
    assert rel(run.config_file) == "config.yaml" and rel(run.state_file) == "state.json"
    assert rel(run.metrics_file) == "metrics.jsonl" and rel(run.metrics_plot) == "metrics.png"
    assert rel(run.checkpoint(3)) == "checkpoints/iter_003.pt"
    assert rel(run.denoised(1)) == "denoised/iter_001"
    assert rel(run.grid(run.grid_prefix(2), "samples")) == "grids/iter_002_samples.png"
    assert rel(run.train_storage(Stage("refit", 1))) == "train/refit_001"
    assert rel(run.baseline_result("noisy")) == "baselines/noisy.json"
    assert run.read_state() == {"completed": {}, "finished": False}
    run.append_metrics({"iteration": 0, "metric": "swd", "swd": 1.0})
    run.append_metrics({"iteration": 1, "metric": "swd", "swd": 0.5})
    assert [r["iteration"] for r in run.read_metrics()] == [0, 1]
    assert run.metrics_row(1)["swd"] == 0.5 and run.metrics_row(2) is None


def test_point_plot_with_no_point_in_range_is_still_written(tmp_path):
    import numpy as np
    from PIL import Image

    from sfbd.viz import save_scatter

    far = np.full((10, 2), 50.0)  # a diverged model: every sample off the plot
    save_scatter({"samples": far, "true": np.zeros((10, 2))}, tmp_path / "p.png", size=32)
    assert Image.open(tmp_path / "p.png").size == (32 * 2 + 4, 32)
