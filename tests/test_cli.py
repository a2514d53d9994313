"""The console script's surface: every option explains itself, `--version`, and
`sfbd config show` (no Ray)."""

import argparse

import pytest
import yaml

from sfbd.cli import COMMANDS, build_parser, main
from sfbd.cli.config_cmd import meanings
from sfbd.config import SFBDConfig, load_config


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    (action,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return dict(action.choices)


def test_every_option_of_every_command_has_help():
    subs = _subparsers(build_parser())
    assert sorted(subs) == sorted(COMMANDS)
    missing = [
        f"sfbd {name} {a.option_strings or a.dest}"
        for name, p in subs.items()
        for a in p._actions
        if not isinstance(a, argparse._HelpAction)
        and a.help != argparse.SUPPRESS  # renamed flags, refused with their new name
        and not (a.help or "").strip()
    ]
    assert not missing, missing


def test_version(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("sfbd 0.") and "ray 2." in out and "torch 2." in out


def test_config_show_prints_the_resolved_preset_with_meanings(capsys):
    assert main(["config", "show", "toy2d", "--set", "iterations=2"]) == 0
    out = capsys.readouterr().out
    # The output is the resolved config as YAML (comments are the meanings) ...
    shown = yaml.safe_load(out)
    assert shown == load_config("toy2d", ["iterations=2"]).to_dict()
    # ... with every key's meaning from the configuration reference.
    about = meanings()
    for section, value in SFBDConfig().to_dict().items():
        keys = [f"{section}.{k}" for k in value] if isinstance(value, dict) else [section]
        for key in keys:
            assert key in about, key
    assert "# the observation noise" in out
    assert main(["config", "list"]) == 0
    assert "toy2d" in capsys.readouterr().out.split()


def test_config_show_of_an_unknown_name_is_one_line(capsys):
    assert main(["config", "show", "nope"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: config:") and "nope" in err[0]


def test_a_failed_stage_survives_pickling():
    import pickle

    from sfbd.run import StageFailed

    back = pickle.loads(pickle.dumps(StageFailed("refit_001", "boom")))
    assert (back.stage, back.reason, back.line()) == (
        "refit_001",
        "boom",
        "error: stage refit_001 failed: boom (rerun the same command to resume)",
    )


def test_the_run_ends_with_what_it_got():
    """`sfbd run`'s last lines: the distance after pretraining and every iteration, the kept
    iteration, the baselines, and the share of samples in the classes pretraining lacked."""
    from sfbd.cli.run import outcome_lines

    config = load_config(
        "fashion-mnist-cpu",
        [
            "data.clean_fraction=0",
            "data.pretrain=fashion-mnist:test",
            "data.pretrain_classes=[0,1,2,3,4,6]",
            "train.pretrain_kimg=12",
            "train.refit_kimg=8",
        ],
    )
    shares = [0.1] * 10

    def row(fd, **more):
        return {"metric": "fd", "fd": fd, "kid": fd / 2, "class_shares": shares, **more}

    summary = {
        "metrics": [
            row(456.4, iteration=0, feature_net="fm.pt", num_samples=1000),
            row(236.0, iteration=1),
            row(250.5, iteration=2),
        ],
        "best": {"iteration": 1, "noisy_distance": 1.0},
        "baselines": {"clean-only": row(300.0, kimg=28.0), "all-clean": row(140.2, kimg=28.0)},
    }
    lines = outcome_lines(summary, config)
    text = "\n".join(lines)
    assert "fd, lower is better; 1000 samples, classifier:fashion-mnist features" in text
    assert [ln.split()[0] for ln in lines[2:]] == [
        "pretraining", "iteration", "iteration", "kept:", "clean-only", "all-clean", "(classes"
    ]  # fmt: skip
    assert "12 kimg" in lines[2] and "456.4" in lines[2] and "20 kimg" in lines[3]
    assert "kept: iteration 1" in lines[5] and "236.0" in lines[5] and "best.pt" in lines[5]
    assert "28 kimg" in lines[6] and "300.0" in lines[6]
    # Four classes missing (5, 7, 8, 9) at 10% each.
    assert "in classes pretraining lacks 40.0%" in lines[2]
    assert lines[-1].strip() == "(classes the pretraining set lacks: 5, 7, 8, 9)"
    assert outcome_lines({"metrics": [], "baselines": {}}, config) == []
