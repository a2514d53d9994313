"""The bare job (`ray job submit --working-dir . -- python jobs/sfbd.py`, no --config): the
preset from the cluster's resources, the default run directory, and runtime_env.yaml. No Ray."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest
import yaml

from sfbd.cli import build_parser, main
from sfbd.defaults import default_preset, default_run_dir, working_dir_copy

ROOT = Path(__file__).resolve().parents[1]
# What Ray 2.60 makes of `--working-dir .`: the job's cwd is a copy under the session dir.
COPY = Path(
    "/tmp/ray/session_2026-11-29_04-00-00_000000_1/runtime_resources/working_dir_files"
    "/_ray_pkg_0123456789abcdef"
)


def test_the_bare_command_parses_without_config():
    args = build_parser().parse_args(["run"])
    assert args.config is None and args.run_dir is None and args.set == []
    args = build_parser().parse_args(["run", "--set", "iterations=1"])
    assert args.config is None and args.set == ["iterations=1"]


@pytest.mark.parametrize(
    "resources, preset",
    [
        ({"CPU": 16.0, "GPU": 1.0, "memory": 1e9}, "fashion-mnist-gpu"),
        ({"CPU": 2.0, "GPU": 0.5}, "fashion-mnist-gpu"),
        ({"CPU": 2.0}, "fashion-mnist-cpu"),
        ({"CPU": 2.0, "GPU": 0.0}, "fashion-mnist-cpu"),
    ],
)
def test_preset_follows_the_clusters_gpus(resources, preset):
    name, why = default_preset(resources)
    assert name == preset
    assert ("GPU(s)" in why) == (preset == "fashion-mnist-gpu")


def test_sfbd_storage_path_and_uri(tmp_path):
    d = default_run_dir("fm", env={"SFBD_STORAGE": str(tmp_path)}, cwd=COPY, home=tmp_path)
    assert d.where == str(tmp_path / "fm") and "SFBD_STORAGE" in d.why
    d = default_run_dir("fm", env={"SFBD_STORAGE": "s3://bucket/runs/"}, cwd=COPY)
    assert d.where == "s3://bucket/runs/fm"
    d = default_run_dir("fm", env={"SFBD_STORAGE": "shared"}, cwd=tmp_path)
    assert d.where == str(tmp_path / "shared" / "fm")
    with pytest.raises(ValueError, match=r"^SFBD_STORAGE: 'shared' is relative"):
        default_run_dir("fm", env={"SFBD_STORAGE": "shared"}, cwd=COPY / "jobs")


def test_a_ray_jobs_working_dir_copy_never_holds_the_default_run_dir(tmp_path):
    assert working_dir_copy(COPY / "jobs") == COPY and working_dir_copy(tmp_path) is None
    for cwd in (COPY, COPY / "jobs"):
        d = default_run_dir("fashion-mnist-cpu", env={}, cwd=cwd, home=tmp_path)
        assert d.where == str(tmp_path / "sfbd" / "runs" / "fashion-mnist-cpu")
        assert not Path(d.where).is_relative_to(COPY) and "temporary copy" in d.why


def test_a_plain_run_goes_to_absolute_runs_name(tmp_path, monkeypatch):
    d = default_run_dir("toy2d", env={}, cwd=tmp_path, home="/nowhere")
    assert d.where == str(tmp_path / "runs" / "toy2d") and Path(d.where).is_absolute()
    # The process's own cwd and environment when none are given; resolve() logs the choice.
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("SFBD_STORAGE", raising=False)
    assert default_run_dir("toy2d").where == str(tmp_path / "runs" / "toy2d")


def test_bare_run_rejects_bad_input_before_ray_starts(tmp_path, monkeypatch, capsys):
    import sfbd.run

    def no_ray(*a, **k):
        raise AssertionError("Ray started before the input was checked")

    monkeypatch.setattr(sfbd.run, "init_ray", no_ray)
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("SFBD_STORAGE", raising=False)
    assert main(["run", "--set", "train.nope=1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: config:") and "nope" in err[0], err
    assert main(["run", "--baselines", "clean"]) == 2
    assert "baselines: unknown" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []  # the writability checks left nothing behind


def test_bare_fit_picks_the_preset_once_ray_is_up(tmp_path, monkeypatch, capsys):
    """fit(None): the preset from ray.cluster_resources(), the run under SFBD_STORAGE; stopped
    at the lease (the first step after the choice) so that no run starts."""
    import ray

    import sfbd.run

    class Chosen(Exception):
        pass

    def stop(run, log):
        raise Chosen(str(run))

    monkeypatch.setattr(sfbd.run, "init_ray", lambda address=None: None)
    monkeypatch.setattr(ray, "cluster_resources", lambda: {"CPU": 8.0, "GPU": 2.0})
    monkeypatch.setattr(sfbd.run, "hold_lease", stop)
    monkeypatch.setenv("SFBD_STORAGE", str(tmp_path / "store"))
    with pytest.raises(Chosen) as chosen:
        sfbd.run.fit(overrides=["iterations=1"])
    assert str(chosen.value) == str(tmp_path / "store" / "fashion-mnist-gpu")
    out = capsys.readouterr().out
    assert re.search(r"config fashion-mnist-gpu: the cluster has 2 GPU\(s\)", out), out
    assert f"run directory {tmp_path / 'store' / 'fashion-mnist-gpu'} (SFBD_STORAGE=" in out


def test_runtime_env_lists_the_dependencies_without_ray():
    env = yaml.safe_load((ROOT / "runtime_env.yaml").read_text())
    packages = env["pip"]["packages"]
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    name = re.compile(r"[A-Za-z0-9_.-]+")
    assert not [p for p in packages if name.match(p).group(0).lower() == "ray"]
    wanted = [d.split("#")[0].strip() for d in deps if not d.startswith("ray[")]
    assert set(wanted) <= set(packages), sorted(set(wanted) - set(packages))
    # What Ray's data/train/tune extras add to ray[default], which a bare cluster may lack.
    assert {"pandas>=2.2.3", "fsspec", "tensorboardX>=1.9"} <= set(packages)


def test_a_node_local_default_on_several_nodes_is_warned_about(tmp_path, monkeypatch, capsys):
    import ray

    from sfbd.run import warn_if_node_local
    from sfbd.rundir import RunDir

    nodes = [{"Alive": True}, {"Alive": False}]
    monkeypatch.setattr(ray, "nodes", lambda: nodes)
    warn_if_node_local(RunDir(tmp_path / "r"))
    assert capsys.readouterr().out == ""  # one live node
    nodes.append({"Alive": True})
    warn_if_node_local(RunDir(tmp_path / "r"))
    out = capsys.readouterr().out
    assert "the cluster has 2 nodes; set SFBD_STORAGE or --run-dir" in out, out
    warn_if_node_local(RunDir("memory://bucket/r"))  # a URI is seen by every node
    assert capsys.readouterr().out == ""
