"""One owner per run directory: a lease file (`RUN/lease.json`, named by `RunDir.lease_file`).

A run takes the lease before any work, renews it from a daemon thread (its heartbeat) and
releases it at the end, success or failure (`hold_lease`). A second run on the directory is
refused with `LeaseHeld` (one line naming the holder) while the lease is live. A lease whose
holder is dead is taken over, with a log line saying so: at once when the holder ran on this
host and its process is gone, else once its heartbeat is older than the staleness limit.

What the store guarantees: on a local or shared (NFS) file system the lease is created
atomically (written under a unique name, then hard-linked into place, which fails if a lease
exists); a dead one is checked and removed under a short-lived lock file (`lease.json.takeover`,
created the same way), so no run removes another's new lease; ownership is read back after
writing. Object stores reached through pyarrow/fsspec offer no conditional write here:
the lease is written when none exists and read back, so two runs starting within about one
round trip of each other can both pass; the heartbeat then finds the loser's lease replaced
and stops it within one heartbeat interval.

    SFBD_LEASE_HEARTBEAT_S   seconds between renewals (default 10)
    SFBD_LEASE_STALE_S       a heartbeat older than this is dead (default 60)

No Ray import at module level: the lease is taken before Ray starts.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from sfbd.storage import Location

if TYPE_CHECKING:
    from sfbd.rundir import RunDir

HEARTBEAT_S = 10.0
STALE_S = 60.0
_ATTEMPTS = 100  # acquire rounds when other runs race for the same dead lease

Log = Callable[[str], None]


class LeaseHeld(ValueError):
    """The run directory belongs to a live run (a ValueError: the CLI's `error: ...`, exit 2)."""


def _seconds(var: str, default: float) -> float:
    text = os.environ.get(var)
    if text is None or not text.strip():
        return default
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"{var}: {text!r} is not a number of seconds") from None
    if not value > 0:
        raise ValueError(f"{var}: {text!r} must be > 0")
    return value


def heartbeat_s() -> float:
    return _seconds("SFBD_LEASE_HEARTBEAT_S", HEARTBEAT_S)


def stale_s() -> float:
    stale, beat = _seconds("SFBD_LEASE_STALE_S", STALE_S), heartbeat_s()
    if stale <= beat:
        raise ValueError(
            f"SFBD_LEASE_STALE_S ({stale:g}) must exceed SFBD_LEASE_HEARTBEAT_S ({beat:g})"
        )
    return stale


# -- who holds it --------------------------------------------------------------------------------


def _pid_namespace() -> str | None:
    """Two processes with one hostname can still live in different PID namespaces (containers
    sharing the host's network); their pids say nothing about each other."""
    try:
        return os.readlink("/proc/self/ns/pid")
    except OSError:
        return None


def _process_started(pid: int) -> float | None:
    """When process `pid` started (seconds since the epoch), to tell it from a reused pid."""
    try:
        import psutil  # installed with ray[default]

        return psutil.Process(pid).create_time()
    except Exception:  # noqa: BLE001 - unknown is an answer
        return None


def _alive(pid: int, started: float | None) -> bool:
    """Whether `pid` on this host is still the process that took the lease."""
    try:
        import psutil
    except ImportError:  # pragma: no cover - psutil ships with ray[default]
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True
    try:
        proc = psutil.Process(pid)
        if proc.status() == psutil.STATUS_ZOMBIE:
            return False
        return started is None or abs(proc.create_time() - started) < 1.0
    except psutil.NoSuchProcess:
        return False
    except psutil.Error:  # AccessDenied: it exists
        return True


def ray_job_id() -> str | None:
    """The Ray job this process belongs to, when it can be told without starting Ray."""
    for var in ("RAY_JOB_SUBMISSION_ID", "RAY_JOB_ID"):
        if os.environ.get(var):
            return os.environ[var]
    # `ray job submit` hands its driver the job's metadata in this variable.
    with contextlib.suppress(ValueError, AttributeError):
        meta = json.loads(os.environ.get("RAY_JOB_CONFIG_JSON_ENV_VAR", "{}")).get("metadata")
        if isinstance(meta, dict) and meta.get("job_submission_id"):
            return str(meta["job_submission_id"])
    ray = sys.modules.get("ray")  # asked only when imported (maybe half-way, by another thread)
    with contextlib.suppress(Exception):
        if ray is not None and ray.is_initialized():
            return ray.get_runtime_context().get_job_id()
    return None


@dataclass
class Holder:
    """The content of a lease file. Times are seconds since the epoch (`time.time()`)."""

    token: str
    host: str
    pid: int
    pid_started: float | None
    pid_namespace: str | None
    job_id: str | None
    started: float
    heartbeat: float

    @classmethod
    def me(cls, token: str) -> Holder:
        now = time.time()
        pid = os.getpid()
        return cls(
            token=token,
            host=socket.gethostname(),
            pid=pid,
            pid_started=_process_started(pid),
            pid_namespace=_pid_namespace(),
            job_id=ray_job_id(),
            started=now,
            heartbeat=now,
        )

    @classmethod
    def parse(cls, data: bytes, mtime: float) -> Holder:
        """A lease file's holder; an unreadable file (half-written, or not ours) is an unknown
        holder whose heartbeat is the file's modification time."""
        try:
            d = json.loads(data)
            return cls(
                token=str(d["token"]),
                host=str(d["host"]),
                pid=int(d["pid"]),
                pid_started=d.get("pid_started"),
                pid_namespace=d.get("pid_namespace"),
                job_id=d.get("job_id"),
                started=float(d["started"]),
                heartbeat=float(d["heartbeat"]),
            )
        except (ValueError, KeyError, TypeError, AttributeError):
            return cls("", "?", -1, None, None, None, mtime, mtime)

    def to_bytes(self) -> bytes:
        return (json.dumps(asdict(self), indent=2, sort_keys=True) + "\n").encode()

    def describe(self, now: float | None = None) -> str:
        now = time.time() if now is None else now
        age = f"last heartbeat {max(0.0, now - self.heartbeat):.0f} s ago"
        if not self.token:
            return f"an unreadable lease file ({age})"
        job = f", Ray job {self.job_id}" if self.job_id else ""
        return f"host {self.host}, pid {self.pid}{job}, started {_clock(self.started)}, {age}"

    def dead_because(self, now: float, stale: float) -> str | None:
        """Why this holder is dead, or None while it may be alive."""
        here = socket.gethostname()
        ns, my_ns = self.pid_namespace, _pid_namespace()
        same_pids = self.host == here and (ns is None or my_ns is None or ns == my_ns)
        if self.token and same_pids and not _alive(self.pid, self.pid_started):
            return f"its process {self.pid} on this host ({here}) is gone"
        age = now - self.heartbeat
        if age > stale:
            return f"its last heartbeat was {age:.0f} s ago (stale after {stale:g} s)"
        return None


def _clock(t: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t))


# -- the lease ---------------------------------------------------------------------------------


class Lease:
    """The lease file `file` as one run sees it: `acquire`, heartbeat, `release`."""

    def __init__(self, file: Location, what: str | None = None, log: Log = print):
        self.file = file
        self.what = what or str(file.parent)  # the run directory, for messages
        self.log = log
        self.token = uuid.uuid4().hex
        self.me = Holder.me(self.token)
        self.lost: str | None = None  # why this run no longer holds the lease
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- file primitives: local (atomic) or object store (write, then read back) --------------

    @property
    def _local(self) -> Path | None:
        return self.file.local

    def _sibling(self, tag: str) -> Path:
        assert self._local is not None
        return self._local.with_name(f"{self._local.name}.{self.token}.{tag}")

    def _read(self) -> tuple[bytes, Holder] | None:
        """The lease file's bytes and holder, or None when there is none."""
        try:
            if self._local is not None:
                data, mtime = self._local.read_bytes(), self._local.stat().st_mtime
            else:
                data = self.file.read_bytes()
                info = self.file.fs.get_file_info(self.file.path)
                mtime = info.mtime.timestamp() if info.mtime is not None else 0.0
        except FileNotFoundError:
            return None
        return data, Holder.parse(data, mtime)

    def _create(self, holder: Holder) -> bool:
        """Write the lease only if none exists; False when one does."""
        if self._local is None:
            if self.file.exists():
                return False
            self.file.write_bytes(holder.to_bytes())
            return True
        self.file.parent.mkdir()
        return self._create_local(self._local, holder.to_bytes())

    def _create_local(self, path: Path, data: bytes) -> bool:
        """Create `path` holding `data` unless it exists, atomically (also on NFS): readers
        never see it half-written."""
        tmp = self._sibling("tmp")
        try:
            tmp.write_bytes(data)
            try:
                os.link(tmp, path)  # fails if `path` exists
            except FileExistsError:
                return False
            except OSError:  # a file system without hard links
                try:
                    fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
                except FileExistsError:
                    return False
                with os.fdopen(fd, "wb") as f:
                    f.write(data)
            return True
        finally:
            tmp.unlink(missing_ok=True)

    def _replace(self, holder: Holder) -> None:
        """Overwrite our own lease (a renewal); readers see the old or the new, never half."""
        if self._local is None:
            self.file.write_bytes(holder.to_bytes())
            return
        tmp = self._sibling("tmp")
        try:
            tmp.write_bytes(holder.to_bytes())
            os.replace(tmp, self._local)
        finally:
            tmp.unlink(missing_ok=True)

    def _remove_if(self, data: bytes) -> bool | None:
        """Remove the lease if it still holds `data`: True when removed, False when it changed
        meanwhile, None when another run is removing it right now (try again shortly)."""
        local = self._local
        if local is None:  # object stores: no lock; the window is one round trip
            current = self._read()
            if current is None or current[0] != data:
                return False
            with contextlib.suppress(FileNotFoundError):
                self.file.fs.delete_file(self.file.path)
            return True
        # Checking and removing happen under a short-lived lock file, so that of several runs
        # taking over one dead lease none removes the new lease of another.
        lock = local.with_name(f"{local.name}.takeover")
        if not self._create_local(lock, self.token.encode()):
            with contextlib.suppress(FileNotFoundError):
                if time.time() - lock.stat().st_mtime > stale_s():  # left by a crashed run
                    lock.unlink()
            return None
        try:
            current = self._read()
            if current is None or current[0] != data:
                return False
            local.unlink(missing_ok=True)
            return True
        finally:
            lock.unlink(missing_ok=True)

    # -- the protocol --------------------------------------------------------------------------

    def acquire(self) -> None:
        """Take the lease, or raise `LeaseHeld` naming the live holder; then start renewing."""
        stale = stale_s()
        took_over = None
        for _ in range(_ATTEMPTS):
            self.me.heartbeat = time.time()
            if self._create(self.me):
                current = self._read()  # confirm: on object stores another write may have won
                if current is not None and current[1].token == self.token:
                    if took_over is not None:
                        self.log(f"lease: took over {self.what} from {took_over}")
                    self._start_heartbeat()
                    return
                if current is None:
                    continue
            else:
                current = self._read()
                if current is None:
                    continue  # released (or renamed aside) meanwhile: try again
            data, holder = current
            why = holder.dead_because(time.time(), stale)
            if why is None:
                raise LeaseHeld(self._held_message(holder))
            removed = self._remove_if(data)
            if removed:
                took_over = f"{holder.describe()}: {why}"
            elif removed is None:
                time.sleep(0.02)
        raise LeaseHeld(
            f"run-dir: {self.what}: could not take its lease ({self.file}) after "
            f"{_ATTEMPTS} attempts; other runs are starting on it; wait, or use another --run-dir"
        )

    def _held_message(self, holder: Holder) -> str:
        return (
            f"run-dir: {self.what} is in use by another run ({holder.describe()}); wait for it "
            f"to finish, stop it, or use another --run-dir (a lease whose heartbeat is older "
            f"than {stale_s():g} s is taken over; lease file {self.file})"
        )

    def renew(self) -> bool:
        """Write a fresh heartbeat; False (and `lost` set) once another run holds the lease."""
        if self.lost:
            return False
        self.me.heartbeat = time.time()
        current = self._read()
        if current is None:
            # Removed by hand, or renamed aside by a run taking over; while it is ours to
            # hold, recreate it (that run then finds our fresh heartbeat and stops).
            if self._create(self.me):
                return True
            current = self._read()
        if current is not None and current[1].token != self.token:
            self.lost = f"lease: {self.what} was taken over by {current[1].describe()}"
            return False
        if self.me.job_id is None:
            self.me.job_id = ray_job_id()  # known once Ray is up
        self._replace(self.me)
        return True

    def _start_heartbeat(self) -> None:
        interval = heartbeat_s()

        def beat() -> None:
            failing = False
            while not self._stop.wait(interval):
                try:
                    if not self.renew():
                        self.log(f"{self.lost}; this run stops")
                        return
                    failing = False
                except Exception as exc:  # noqa: BLE001 - keep beating; log once per streak
                    if not failing:
                        self.log(f"lease: cannot renew {self.file} ({exc}); retrying")
                    failing = True

        self._thread = threading.Thread(target=beat, name="sfbd-lease", daemon=True)
        self._thread.start()

    def release(self) -> None:
        """Stop renewing and remove the lease if it is still ours."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
        try:
            current = self._read()
            if current is not None and current[1].token == self.token:
                self._remove_if(current[0])  # None: a run is taking it over; it is theirs
        except OSError as exc:  # the run's outcome stands; a later run takes the lease over
            self.log(f"lease: cannot remove {self.file} ({exc})")


@contextlib.contextmanager
def hold_lease(run: RunDir, log: Log = print) -> Iterator[Lease]:
    """Hold the lease of `run` (a `RunDir`) for the `with` block: refused with `LeaseHeld`
    while another run holds it; released when the block ends, however it ends."""
    lease = Lease(run.lease_file, what=str(run), log=log)
    new = not run.root.exists()
    lease.acquire()
    try:
        yield lease
    finally:
        lease.release()
        # A run refused before any work (bad resources, say) leaves no directory behind.
        if new and run.root.is_dir() and not run.root.children():
            run.root.remove()
