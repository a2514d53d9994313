"""`iterations: auto`: the stopping rule, its config, and the orchestrator's use of it
(the loop driven without Ray: each stage writes what the real one would)."""

import pytest

from sfbd.config import SFBDConfig, adopt_added_keys, config_from_text, dump_config, load_config
from sfbd.orchestrator import Orchestrator
from sfbd.rundir import RunDir
from sfbd.stopping import AUTO_CAP, best_iteration, stop_reason


def test_the_rule_stops_after_patience_iterations_without_a_margin_of_improvement():
    # Improving by more than 2% every time: never stops.
    assert stop_reason([1.0, 0.9, 0.8, 0.7], patience=2, margin=0.02) is None
    # 0.79 and 0.81 are not below 0.98 * 0.8 = 0.784: stop after iteration 3.
    reason = stop_reason([1.0, 0.8, 0.79, 0.81], patience=2, margin=0.02)
    assert "iterations 2..3" in reason and "0.8" in reason
    # One of the recent ones improving enough keeps the loop going.
    assert stop_reason([1.0, 0.8, 0.78, 0.81], patience=2, margin=0.02) is None
    # Not enough history to judge.
    assert stop_reason([1.0, 1.0], patience=2, margin=0.02) is None
    assert stop_reason([1.0, 1.0], patience=1, margin=0.0) is not None
    # Margin 0: any strict improvement counts.
    assert stop_reason([1.0, 0.999], patience=1, margin=0.0) is None


def test_iterations_auto_in_a_config():
    config = load_config("toy2d", ["iterations=auto"])
    assert config.stop.auto and config.iterations == AUTO_CAP
    capped = load_config("toy2d", ["iterations=5", "stop.auto=true", "stop.patience=1"])
    assert capped.stop.auto and capped.iterations == 5 and capped.stop.patience == 1
    with pytest.raises(ValueError, match="needs data.holdout_fraction > 0"):
        load_config("toy2d", ["iterations=auto", "data.holdout_fraction=0"])
    with pytest.raises(ValueError, match="stop.patience = 0; must be >= 1"):
        load_config("toy2d", ["stop.patience=0"])
    with pytest.raises(ValueError, match=r"stop.margin = 1.0; must lie in \[0, 1\)"):
        load_config("toy2d", ["stop.margin=1.0"])


def test_clean_weight_zero_refits_on_the_denoised_set_alone():
    assert load_config("toy2d", ["train.clean_weight=0"]).train.clean_weight == 0
    with pytest.raises(ValueError, match=r"train.clean_weight = 1.5; must lie in \[0, 1\]"):
        load_config("toy2d", ["train.clean_weight=1.5"])


def test_a_run_written_before_the_holdout_resumes_with_none_held_out(capsys):
    old = dump_config(load_config("toy2d"))
    old = "\n".join(line for line in old.splitlines() if "holdout_fraction" not in line)
    assert config_from_text(old, "config.yaml").data.holdout_fraction == 0.0
    config = load_config("toy2d")  # the same command as the run's first one
    assert config.data.holdout_fraction == 0.05
    adopt_added_keys(config, old, "runs/x/config.yaml")
    assert config.data.holdout_fraction == 0.0
    assert "predates data.holdout_fraction" in capsys.readouterr().out
    assert config_from_text(old, "config.yaml") == config  # so the resume is accepted
    new = dump_config(load_config("toy2d"))
    adopt_added_keys(config := load_config("toy2d"), new, "runs/y/config.yaml")
    assert config.data.holdout_fraction == 0.05  # a run that has the key keeps it


def _loop(tmp_path, distances: list[float], iterations: int) -> tuple[Orchestrator, list[str]]:
    """An orchestrator on a run directory whose stages only record what ran; evaluation k
    writes the metrics row a real one would, with noisy_distance = distances[k]."""
    run = RunDir(tmp_path / "run")
    config = load_config("toy2d", [f"iterations={iterations}", "stop.auto=true"])
    run.write_config(config)
    orch = Orchestrator.__new__(Orchestrator)
    orch.run, orch.config, orch.state = run, config, run.read_state()
    orch.events, ran = None, []

    class Quiet:
        def __getattr__(self, name):
            return lambda *a, **k: None

    orch.metrics = Quiet()
    done = set()

    def run_stage(stage):
        ran.append(stage.key)
        done.add(stage.key)
        if stage.trains:  # a stand-in checkpoint that names its iteration
            run.checkpoint(stage.iteration).write_bytes(f"model {stage.iteration}".encode())
        if stage.kind == "evaluate":
            k = stage.iteration
            run.append_metrics({"iteration": k, "metric": "swd", "swd": 1.0,
                                "noisy_distance": distances[k]})  # fmt: skip
        return {}

    orch._run_stage = run_stage
    orch._output_exists = lambda stage: stage.key in done
    orch._log = lambda msg: ran.append(f"log: {msg}")
    return orch, ran


def test_the_loop_stops_early_and_a_rerun_does_nothing_more(tmp_path):
    orch, ran = _loop(tmp_path, [1.0, 0.8, 0.79, 0.81, 0.5, 0.4], iterations=5)
    Orchestrator.run(orch)  # (the instance's `run` is its RunDir)
    stages = [r for r in ran if not r.startswith("log: ")]
    assert stages[-1] == "evaluate_003" and "denoise_004" not in stages
    assert len(stages) == 2 + 3 * 3
    state = orch.run.read_state()
    assert state["finished"] and state["stopped_early"]["iteration"] == 3
    assert any("stopping after iteration 3 of at most 5" in r for r in ran)
    ran.clear()
    Orchestrator.run(orch)  # resumed: the rule reads the same rows and stops at the same place
    assert [r for r in ran if not r.startswith("log: ")] == []


def test_the_best_iteration_is_the_lowest_noisy_distance():
    assert best_iteration([1.0, 0.8, 0.79, 0.81]) == 2
    assert best_iteration([1.0, 0.5, 0.7, 0.5]) == 1  # the earliest of equals
    assert best_iteration([None, 0.9, None]) == 1  # rows without the distance are skipped
    assert best_iteration([None, None]) is None and best_iteration([]) is None


def test_the_run_keeps_a_copy_of_the_best_iteration(tmp_path):
    # Iteration 2 is the best; 3 drifts back: best.pt stays iteration 2's checkpoint.
    orch, ran = _loop(tmp_path, [1.0, 0.8, 0.7, 0.9], iterations=3)
    orch.config.stop.auto = False
    summary = Orchestrator.run(orch)
    best = orch.run.best_checkpoint
    assert best.read_bytes() == orch.run.checkpoint(2).read_bytes() == b"model 2"
    assert orch.run.read_state()["best"] == {"iteration": 2, "noisy_distance": 0.7}
    assert summary["best"] == {"iteration": 2, "noisy_distance": 0.7, "checkpoint": str(best)}
    moved = [r for r in ran if "best so far" in r]
    assert [m.split("iteration ")[1][0] for m in moved] == ["0", "1", "2"]
    # A copy lost in a crash is made again when the finished run is resumed.
    best.remove()
    Orchestrator.run(orch)
    assert best.read_bytes() == b"model 2"


def test_without_auto_the_loop_runs_every_iteration(tmp_path):
    orch, ran = _loop(tmp_path, [1.0, 1.0, 1.0, 1.0], iterations=3)
    orch.config.stop.auto = False
    Orchestrator.run(orch)  # (the instance's `run` is its RunDir)
    assert [r for r in ran if not r.startswith("log: ")][-1] == "evaluate_003"
    assert "stopped_early" not in orch.run.read_state()


def test_the_default_config_is_not_auto():
    assert SFBDConfig().stop.auto is False
