"""One owner per run directory (`sfbd.lease`): a run takes `RUN/lease.json` before any work,
renews it, releases it; a second run is refused with one line naming the holder, before Ray
starts; a dead holder's lease is taken over (at once on this host when its process is gone,
else once its heartbeat is stale), on local paths and on fsspec `memory://` URIs; and
`metrics.jsonl` never holds two rows for one evaluation. No Ray cluster."""

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time

import pytest

from sfbd.cli import main
from sfbd.lease import Holder, Lease, LeaseHeld, hold_lease, stale_s
from sfbd.rundir import RunDir


@pytest.fixture(autouse=True)
def fast_heartbeat(monkeypatch):
    monkeypatch.setenv("SFBD_LEASE_HEARTBEAT_S", "0.05")
    monkeypatch.setenv("SFBD_LEASE_STALE_S", "30")


@pytest.fixture(params=["local", "memory"])
def run(request, tmp_path):
    if request.param == "local":
        return RunDir(tmp_path / "run")
    return RunDir(f"memory://sfbd-lease/{tmp_path.name}/run")


def _lease(run: RunDir, logs: list[str] | None = None) -> Lease:
    return Lease(run.lease_file, what=str(run), log=(logs.append if logs is not None else print))


def _holder(run: RunDir) -> dict:
    return json.loads(run.lease_file.read_text())


def _write_foreign(run: RunDir, heartbeat_age: float, host: str = "elsewhere") -> None:
    """A lease as a run on another host would have left it."""
    now = time.time()
    holder = Holder(
        "f" * 32, host, 4242, None, None, "raysubmit_x", now - 3600, now - heartbeat_age
    )
    run.lease_file.write_bytes(holder.to_bytes())


def test_acquire_renew_release(run):
    lease = _lease(run)
    lease.acquire()
    try:
        first = _holder(run)
        assert first["token"] == lease.token and first["pid"] == os.getpid()
        assert first["host"] == socket.gethostname() and first["started"] <= first["heartbeat"]
        # The heartbeat thread renews it.
        deadline = time.time() + 5
        while _holder(run)["heartbeat"] == first["heartbeat"] and time.time() < deadline:
            time.sleep(0.02)
        assert _holder(run)["heartbeat"] > first["heartbeat"]
        assert _holder(run)["started"] == first["started"]
    finally:
        lease.release()
    assert not run.lease_file.exists()
    with hold_lease(run, log=print):  # a released lease is free again
        assert run.lease_file.exists()
    assert not run.lease_file.exists()


def test_second_holder_is_refused_with_one_line_naming_the_holder(run):
    with hold_lease(run, log=print) as first:
        with pytest.raises(LeaseHeld) as exc:
            _lease(run).acquire()
        text = str(exc.value)
        assert len(text.splitlines()) == 1, text
        assert text.startswith(f"run-dir: {run} is in use by another run (host ")
        for part in (socket.gethostname(), f"pid {os.getpid()}", "started ", "last heartbeat"):
            assert part in text
        assert "wait for it to finish, stop it, or use another --run-dir" in text
        assert _holder(run)["token"] == first.token
    # It ends however the block ends.
    with pytest.raises(RuntimeError), hold_lease(run, log=print):
        raise RuntimeError("stage failed")
    assert not run.lease_file.exists()


def test_stale_lease_of_another_host_is_taken_over_a_fresh_one_is_refused(run):
    _write_foreign(run, heartbeat_age=5)
    with pytest.raises(LeaseHeld, match="host elsewhere, pid 4242, Ray job raysubmit_x"):
        _lease(run).acquire()
    _write_foreign(run, heartbeat_age=stale_s() + 1)
    logs: list[str] = []
    with hold_lease(run, log=logs.append) as lease:
        assert _holder(run)["token"] == lease.token
    (line,) = logs
    assert line.startswith(f"lease: took over {run} from host elsewhere, pid 4242")
    assert "its last heartbeat was" in line and "stale after 30 s" in line


def test_unreadable_lease_counts_as_held_until_stale(tmp_path):
    run = RunDir(tmp_path / "run")
    run.lease_file.write_text("{half a rec")
    with pytest.raises(LeaseHeld, match="an unreadable lease file"):
        _lease(run).acquire()
    old = time.time() - stale_s() - 5
    os.utime(run.lease_file.local, (old, old))
    with hold_lease(run, log=print):
        pass


HOLDER = """
import sys, time
from sfbd.lease import Lease
from sfbd.storage import Location
lease = Lease(Location.of(sys.argv[1]), log=print)  # the lease file (importing less: faster)
lease.acquire()
print("held", flush=True)
time.sleep(120)
"""


def test_sigkilled_holder_on_this_host_is_taken_over_at_once(tmp_path):
    run = RunDir(tmp_path / "run")
    proc = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(HOLDER), str(run.lease_file)],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout.readline().strip() == "held"
        with pytest.raises(LeaseHeld, match=f"pid {proc.pid}"):
            _lease(run).acquire()
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert _holder(run)["pid"] == proc.pid  # left behind: a SIGKILL runs no cleanup
    logs: list[str] = []
    t0 = time.time()
    with hold_lease(run, log=logs.append) as lease:
        assert time.time() - t0 < 2  # not after the staleness limit (30 s here)
        assert _holder(run)["token"] == lease.token
    (line,) = logs
    assert f"pid {proc.pid}" in line and f"its process {proc.pid} on this host" in line
    assert "is gone" in line


def test_of_many_runs_racing_for_a_stale_lease_exactly_one_wins(tmp_path):
    run = RunDir(tmp_path / "run")
    _write_foreign(run, heartbeat_age=stale_s() + 1)
    leases = [_lease(run, []) for _ in range(8)]
    outcomes: list[str] = []
    barrier = threading.Barrier(len(leases))

    def contend(lease: Lease) -> None:
        barrier.wait()
        try:
            lease.acquire()
            outcomes.append("won")
        except LeaseHeld:
            outcomes.append("refused")

    threads = [threading.Thread(target=contend, args=(lease,)) for lease in leases]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(outcomes) == ["refused"] * 7 + ["won"]
    (winner,) = [lease for lease in leases if lease._thread is not None]
    assert _holder(run)["token"] == winner.token
    winner.release()
    assert sorted(p.name for p in tmp_path.joinpath("run").iterdir()) == []  # no leftovers


def test_a_run_whose_lease_was_taken_over_finds_out_and_leaves_the_new_one(run):
    lease = _lease(run)
    lease.acquire()
    lease._stop.set()  # no background renewals: renew by hand below
    lease._thread.join()
    _write_foreign(run, heartbeat_age=0)  # as if another run judged us dead and took over
    assert lease.renew() is False
    assert lease.lost.startswith(f"lease: {run} was taken over by host elsewhere, pid 4242")
    lease.release()
    assert _holder(run)["host"] == "elsewhere"  # not ours to remove


def test_sfbd_run_on_a_held_run_dir_fails_before_any_work(tmp_path, capsys, monkeypatch):
    import sfbd.run

    def no_ray(*_args, **_kwargs):
        raise AssertionError("Ray started")

    monkeypatch.setattr(sfbd.run, "init_ray", no_ray)
    monkeypatch.setenv("SFBD_LEASE_HEARTBEAT_S", "10")  # no renewal's temporary file in listings
    run = RunDir(tmp_path / "run")
    with hold_lease(run, log=print):
        before = sorted(p.name for p in tmp_path.joinpath("run").iterdir())
        rc = main(["run", "--config", "toy2d", "--run-dir", str(run.root)])
        err = capsys.readouterr().err.strip()
        assert rc == 2, err
        assert len(err.splitlines()) == 1, err
        assert err.startswith(f"error: run-dir: {run} is in use by another run (host ")
        assert f"pid {os.getpid()}" in err
        assert sorted(p.name for p in tmp_path.joinpath("run").iterdir()) == before
        assert before == ["lease.json"]  # and Ray never started (init_ray above)


def test_lease_settings_are_checked(monkeypatch):
    monkeypatch.setenv("SFBD_LEASE_STALE_S", "0.01")
    with pytest.raises(ValueError, match="SFBD_LEASE_STALE_S .* must exceed"):
        stale_s()
    monkeypatch.setenv("SFBD_LEASE_STALE_S", "soon")
    with pytest.raises(ValueError, match="'soon' is not a number of seconds"):
        stale_s()


def test_an_evaluation_redone_after_a_crash_leaves_one_row(run):
    """A kill between the metrics append and the state write: the rerun evaluates again (or
    recovers the row); either way one row per evaluation, the latest, in place."""
    run.append_metrics({"iteration": 0, "metric": "swd", "swd": 1.0})
    run.append_metrics({"iteration": 1, "metric": "swd", "swd": 0.5})
    # killed here: state.json does not list evaluate_001; the rerun's evaluate appends again
    run.append_metrics({"iteration": 1, "metric": "swd", "swd": 0.4})
    assert [(r["iteration"], r["swd"]) for r in run.read_metrics()] == [(0, 1.0), (1, 0.4)]
    assert run.metrics_row(1)["swd"] == 0.4


def test_a_sweep_never_puts_two_trials_on_one_run_dir():
    from sfbd.sweep import SweepConfig

    with pytest.raises(ValueError, match="--clean-fractions: 0.1,0.1 repeats a value"):
        SweepConfig(clean_fractions=(0.1, 0.1000000001)).validate()
    with pytest.raises(ValueError, match="--taus: 0.2,0.2 repeats a value"):
        SweepConfig(taus=(0.2, 0.2)).validate()
