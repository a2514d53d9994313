"""Bad configuration files: one line naming the file (and line), exit 2, before any work."""

import pytest

from sfbd.cli import main
from sfbd.config import load_config


@pytest.mark.parametrize(
    "text,needle",
    [
        ("iterations: 2\ntrain: {lr: 1e-3\n", "line 3"),  # unclosed flow mapping
        ("iterations: [1, 2\n", "not valid YAML"),
        ("- iterations: 2\n- seed: 1\n", "top level is a list"),
        ("", "is empty"),
        ("# only a comment\n", "is empty"),
        ("42\n", "top level is a int"),
    ],
)
def test_bad_yaml_files_give_one_line_naming_the_file(tmp_path, capsys, text, needle):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    run = tmp_path / "run"
    assert main(["run", "--config", str(path), "--run-dir", str(run)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: config: {path}"), err
    assert needle in err and len(err.splitlines()) == 1, err
    assert not run.exists()


def test_sigma_in_a_yaml_file_is_read_as_tau_with_a_note(tmp_path, capsys):
    path = tmp_path / "old.yaml"
    path.write_text("data: {dataset: toy2d, sigma: 0.3}\nnetwork: {preset: mlp, channels: 2}\n")
    assert load_config(str(path)).data.tau == 0.3
    assert "data.sigma is now data.tau" in capsys.readouterr().out
    path.write_text("data: {dataset: toy2d, sigma: 0.3, tau: 0.3}\n")
    with pytest.raises(ValueError, match="data.sigma is now data.tau"):
        load_config(str(path))


def test_a_config_object_and_overrides_are_accepted_by_the_api(tmp_path):
    from sfbd.run import resolve

    config = load_config("toy2d")
    resolved, run, data = resolve(config, ["iterations=2", "data.tau=0.3"], tmp_path / "r")
    assert resolved.iterations == 2 and resolved.data.tau == 0.3 and data is None
    assert str(run) == str(tmp_path / "r")
    with pytest.raises(ValueError, match="baselines: unknown"):
        resolve(config, [], tmp_path / "r", baselines=["nope"])


def test_exponent_without_a_dot_is_a_float_and_a_word_is_refused():
    # YAML 1.1 reads 2e-4 as a string; the example in `--set`'s help must still work.
    assert load_config("toy2d", ["train.lr=2e-4"]).train.lr == 2e-4
    with pytest.raises(ValueError, match="train.lr = 'fast'; expected float"):
        load_config("toy2d", ["train.lr=fast"])


def test_the_built_in_classifier_is_a_feature_net_spec_not_a_file():
    config = load_config(
        "fashion-mnist-cpu", ["eval.metric=fd", "eval.feature_net=classifier:fashion-mnist"]
    )
    assert config.eval.feature_net == "classifier:fashion-mnist"
    with pytest.raises(ValueError, match="built-in classifiers are classifier:fashion-mnist"):
        load_config("fashion-mnist-cpu", ["eval.metric=fd", "eval.feature_net=classifier:cifar"])
    with pytest.raises(FileNotFoundError, match="eval.feature_net = nope.pt does not exist"):
        load_config("fashion-mnist-cpu", ["eval.metric=fd", "eval.feature_net=nope.pt"])


def test_storage_dtypes_are_checked_and_older_runs_resume_with_float32(capsys):
    from sfbd.config import adopt_added_keys, config_from_text

    config = load_config("toy2d", ["data.noisy_dtype=float16", "denoise.out_dtype=float16"])
    assert (config.data.noisy_dtype, config.denoise.out_dtype) == ("float16", "float16")
    with pytest.raises(
        ValueError, match=r"^config: data.noisy_dtype: 'uint8'; allowed: float32, float16$"
    ):
        load_config("toy2d", ["data.noisy_dtype=uint8"])
    with pytest.raises(
        ValueError, match=r"^config: denoise.out_dtype = 'bf16'; allowed: float32, float16$"
    ):
        load_config("toy2d", ["denoise.out_dtype=bf16"])
    # A run directory written before the keys: its data and denoised sets are float32.
    old = "data: {dataset: toy2d}\ndenoise: {steps: 4}\n"
    assert config_from_text(old, "old").data.noisy_dtype == "float32"
    adopt_added_keys(config, old, "RUN/config.yaml", note=print)
    assert (config.data.noisy_dtype, config.denoise.out_dtype) == ("float32", "float32")
    assert "predates data.noisy_dtype" in capsys.readouterr().out
