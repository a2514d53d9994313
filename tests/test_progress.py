"""Progress lines and the run's time estimate (pure arithmetic), and TensorBoard events
written and read back (local folder and a URI), without Ray."""

import time

import numpy as np
import pytest
from PIL import Image

from sfbd.progress import (
    Ticker,
    duration,
    progress_line,
    remaining_seconds,
    run_left,
    stage_seconds,
    time_left,
)
from sfbd.storage import Location
from sfbd.tensorboard_events import EventLog, flat_numbers, image_tags, read_scalars


def test_duration_text():
    assert [duration(s) for s in (0, 42.4, 60, 185, 3600 * 2 + 7 * 60 + 30)] == [
        "0s",
        "42s",
        "1m00s",
        "3m05s",
        "2h07m",
    ]
    assert duration(None) == "unknown"


def test_remaining_is_the_mean_per_kind_times_the_remaining_stages():
    finished = {"pretrain": [100.0], "evaluate": [10.0, 20.0], "denoise": [30.0]}
    assert remaining_seconds(finished, ["evaluate", "denoise", "evaluate"]) == 15 + 30 + 15
    assert remaining_seconds(finished, []) == 0
    # A remaining kind without a finished stage: unknown, whatever else is known.
    assert remaining_seconds(finished, ["denoise", "refit", "evaluate"]) is None
    assert remaining_seconds({"refit": []}, ["refit"]) is None
    assert run_left(finished, ["evaluate", "denoise"]) == "about 45s left"
    assert run_left(finished, ["refit", "denoise", "refit"]) == (
        "time left unknown (no refit done yet)"
    )


def test_stage_seconds_by_kind_from_the_state():
    completed = {
        "pretrain": {"seconds": 50.0, "wall_seconds": 55.0},
        "evaluate_000": {"seconds": 9.0},
        "denoise_001": {"seconds": 20.0, "wall_seconds": 21.0},
        "evaluate_001": {"seconds": 0.0, "recovered": True},  # not timed: left out
    }
    assert stage_seconds(completed) == {"pretrain": [55.0], "evaluate": [9.0], "denoise": [21.0]}


def test_progress_line_and_time_left():
    assert time_left(0, 100, 5) is None and time_left(50, 100, 10) == 10
    assert progress_line(120, 360, 10, "items") == "120/360 items (33%), 12.0 items/s, 20s left"
    assert progress_line(320, 640, 2, "kimg", scale=1000) == (
        "0.32/0.64 kimg (50%), 160.0 images/s, 2s left"
    )
    assert progress_line(0, 10, 3, "samples").endswith("0.0 samples/s, unknown left")


def test_ticker_logs_plain_lines_while_the_count_moves():
    lines, count = [], [0]
    with Ticker("denoise 001", lambda: count[0], 10, "items", lines.append, every_s=0.02):
        for n in (2, 5):
            count[0] = n
            for _ in range(200):  # until the ticker has seen this count
                if any(f"{n}/10 items" in line for line in lines):
                    break
                time.sleep(0.01)
    assert any(line.startswith("denoise 001: 2/10 items (20%)") for line in lines), lines
    assert any("5/10 items (50%)" in line and line.endswith(" left") for line in lines), lines
    assert all("\r" not in line for line in lines)


def test_flat_numbers_skips_text_and_flags():
    row = {"fd": 2.5, "metric": "fd", "ok": True, "n": 3, "memorization": {"clean": {"min": 0.1}}}
    assert dict(flat_numbers(row)) == {"fd": 2.5, "n": 3.0, "memorization/clean/min": 0.1}


@pytest.mark.parametrize("uri", [False, True])
def test_event_log_round_trip(tmp_path, uri):
    png = tmp_path / "g.png"
    Image.fromarray(np.full((6, 4, 3), 200, np.uint8)).save(png)
    where = f"memory://tb-test-{tmp_path.name}/tb" if uri else str(tmp_path / "tb")
    log = EventLog(where, "pretrain")
    log.scalar("train/loss", 1.25, 64)
    log.scalars({"fd": 3.0, "seconds": {"refit": 2.0}, "metric": "fd"}, 1, "eval")
    assert log.image_file("grids/samples", Location.of(png), 1)
    assert not log.image_file("grids/denoised", Location.of(tmp_path / "none.png"), 1)
    log.flush()
    # A second writer (a resumed run) adds its own file beside the first.
    again = EventLog(where, "pretrain")
    again.scalar("train/loss", 1.0, 128)
    again.close()
    log.close()
    files = [f.name for f in Location.of(where).children()]
    assert len(files) == 2 and all(".tfevents." in f for f in files)
    scalars = read_scalars(where)
    assert sorted(scalars["train/loss"]) == [(64, 1.25), (128, 1.0)]
    assert scalars["eval/fd"] == [(1, 3.0)] and scalars["eval/seconds/refit"] == [(1, 2.0)]
    assert "eval/metric" not in scalars
    assert image_tags(where) == {"grids/samples": [1]}


def test_read_events_skips_a_cut_off_last_record_and_refuses_a_damaged_one(tmp_path):
    log = EventLog(tmp_path, "x")
    log.scalar("train/loss", 2.0, 1)
    log.close()
    (f,) = tmp_path.glob("*.tfevents.*")
    whole = f.read_bytes()
    f.write_bytes(whole[:-3])  # a crash in the middle of the last record
    assert read_scalars(tmp_path) == {}
    f.write_bytes(whole[:-1] + bytes([whole[-1] ^ 1]))
    with pytest.raises(ValueError, match="is damaged"):
        read_scalars(tmp_path)
    f.write_bytes(whole)
    assert read_scalars(tmp_path) == {"train/loss": [(1, 2.0)]}


def test_train_progress_lines_and_events_come_from_rank_0_only(tmp_path, capsys):
    from types import SimpleNamespace

    from sfbd.diffusion.networks import NetworkConfig
    from sfbd.diffusion.training import TrainConfig
    from sfbd.stages.refit import Reporter, TrainJob

    train = TrainConfig(batch_size=32, log_kimg=0.064, checkpoint_kimg=100.0)
    job = TrainJob(
        "refit_002", train, NetworkConfig(), [], (2,), 1.0, 0, storage=str(tmp_path / "train"),
        tensorboard=str(tmp_path / "tb"), images_before=5000,
    )  # fmt: skip
    for rank in (1, 0):
        state = SimpleNamespace(images_seen=0, loss=float("nan"))
        reporter = Reporter(job, rank, state, None)
        for _ in range(4):  # 128 images: lines at 64 and 128
            state.images_seen += 32
            reporter.step(0.5, state)
        lines = capsys.readouterr().out.splitlines()
        assert len(lines) == (2 if rank == 0 else 0), lines
    assert lines[1].startswith("refit_002: 0.1/1.0 kimg (13%), loss 0.5000, ")
    assert lines[1].endswith(" left") and "images/s" in lines[1]
    steps = [step for step, _ in read_scalars(tmp_path / "tb")["train/loss"]]
    assert steps == [5064, 5128]


def test_tensorboard_itself_reads_the_events(tmp_path):
    """What `tensorboard --logdir RUN` loads, read by TensorBoard's own reader: the train
    steps (images) and the evaluation steps (iterations) in folders of their own, since
    TensorBoard drops a folder's points above a step it meets again later."""
    from tensorboard.backend.event_processing.event_multiplexer import EventMultiplexer

    from sfbd.rundir import RunDir

    run = RunDir(tmp_path / "run")
    png = tmp_path / "g.png"
    Image.fromarray(np.full((6, 4, 3), 200, np.uint8)).save(png)
    for name, steps in (("pretrain", (64, 128)), ("refit_001", (192, 256))):
        log = EventLog(run.tensorboard_train, name)
        for step in steps:
            log.scalar("train/loss", step / 100, step)
        log.close()
    log = EventLog(run.tensorboard_eval, "orchestrator")
    for k in (0, 1):
        log.scalars({"swd_test": 0.25 / (k + 1)}, k, "eval")
        assert log.image_file("grids/samples", Location.of(png), k)
    log.close()
    tb = EventMultiplexer().AddRunsFromDirectory(str(run.tensorboard)).Reload()
    assert sorted(tb.Runs()) == ["eval", "train"]
    loss = [(e.step, round(e.value, 5)) for e in tb.Scalars("train", "train/loss")]
    assert loss == [(64, 0.64), (128, 1.28), (192, 1.92), (256, 2.56)]
    swd = [(e.step, e.value) for e in tb.Scalars("eval", "eval/swd_test")]
    assert swd == [(0, 0.25), (1, 0.125)]
    images = tb.Images("eval", "grids/samples")
    assert [(i.step, i.width, i.height) for i in images] == [(0, 4, 6), (1, 4, 6)]
