"""config.yaml guards a run directory: the same settings resume it (also when the run was
begun by a version that lacked some keys), other settings are refused."""

import pytest
import yaml

from sfbd.config import load_config
from sfbd.run import prepare_run_dir


def _config(*overrides):
    return load_config("toy2d", ["data.num=200", *overrides])


def test_same_settings_resume_other_settings_are_refused(tmp_path):
    run = tmp_path / "run"
    prepare_run_dir(_config(), run, None)
    first = (run / "config.yaml").read_text()
    prepare_run_dir(_config(), run, None)  # same settings: accepted, file unchanged
    assert (run / "config.yaml").read_text() == first

    # A run begun before `train.bf16` and `denoise.compile` existed resumes with defaults.
    old = yaml.safe_load(first)
    del old["train"]["bf16"], old["denoise"]["compile"]
    (run / "config.yaml").write_text(yaml.safe_dump(old))
    prepare_run_dir(_config(), run, None)
    assert yaml.safe_load((run / "config.yaml").read_text())["train"]["bf16"] is True

    with pytest.raises(ValueError, match="run-dir: .* holds a run with a different config"):
        prepare_run_dir(_config("train.lr=0.01"), run, None)
