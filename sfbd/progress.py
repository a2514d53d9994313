"""Progress lines with rates and time left, for a stage and for the whole run.

Every line is a plain, complete line (no carriage-return updates), so that it reads the same
in a terminal, in `ray job logs -f` and in a log file. The run's estimate is the mean duration
of the finished stages of each kind times the remaining stages of that kind; it is unknown
while a remaining kind has no finished stage yet.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Mapping

UNKNOWN = "unknown"


def duration(seconds: float | None) -> str:
    """`42s`, `3m05s`, `2h07m`; `unknown` for None."""
    if seconds is None:
        return UNKNOWN
    s = max(int(round(seconds)), 0)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


def remaining_seconds(
    finished: Mapping[str, Iterable[float]], remaining: Iterable[str]
) -> float | None:
    """Estimated seconds of the `remaining` stages (their kinds, in any order), from the
    durations of the `finished` stages by kind; None when a remaining kind has none yet."""
    means = {}
    for kind, seconds in finished.items():
        seconds = list(seconds)
        if seconds:
            means[kind] = sum(seconds) / len(seconds)
    total = 0.0
    for kind in remaining:
        if kind not in means:
            return None
        total += means[kind]
    return total


def time_left(done: float, total: float, seconds: float) -> float | None:
    """Seconds until `total` at the rate of `done` in `seconds`; None before any progress."""
    if done <= 0 or seconds <= 0:
        return None
    return max(total - done, 0) * seconds / done


def progress_line(done: float, total: float, seconds: float, unit: str, scale: float = 1) -> str:
    """`120/360 items (33%), 12.0 items/s, 20s left` after `seconds` of work.

    `scale` divides `done` and `total` for display (1000: images shown as kimg) but not the
    rate, which stays per item (`images/s` for kimg)."""
    rate = done / seconds if seconds > 0 else 0.0
    left = time_left(done, total, seconds)
    share = 100 * done / total if total else 100.0
    fmt = "g" if scale == 1 else ".2f"
    per = "images" if scale != 1 else unit
    return (
        f"{done / scale:{fmt}}/{total / scale:{fmt}} {unit} ({share:.0f}%), "
        f"{rate:.1f} {per}/s, {duration(left)} left"
    )


class Ticker:
    """Logs `progress_line` of `count()` against `total` every `every_s` seconds from a
    background thread while the `with` block runs (only when the count moved)."""

    def __init__(
        self,
        label: str,
        count: Callable[[], int],
        total: int,
        unit: str,
        log: Callable[[str], None],
        every_s: float = 10.0,
    ):
        self.label, self.count, self.total, self.unit = label, count, total, unit
        self.log, self.every_s = log, every_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name=f"ticker {label}")
        self._t0 = 0.0

    def _run(self) -> None:
        last = 0
        while not self._stop.wait(self.every_s):
            try:
                done = self.count()
            except Exception:  # a progress line is never worth failing a stage for
                continue
            if done != last and done < self.total:
                last = done
                line = progress_line(done, self.total, time.time() - self._t0, self.unit)
                self.log(f"{self.label}: {line}")

    def __enter__(self) -> Ticker:
        self._t0 = time.time()
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def stage_seconds(completed: Mapping[str, dict]) -> dict[str, list[float]]:
    """Durations by stage kind of a run's completed stages (`state.json`'s `completed`, keyed
    `pretrain`, `denoise_001`, ...); stages recovered without being timed are left out."""
    out: dict[str, list[float]] = {}
    for key, record in completed.items():
        if record.get("recovered"):
            continue
        seconds = record.get("wall_seconds", record.get("seconds"))
        if seconds is not None:
            out.setdefault(key.partition("_")[0], []).append(float(seconds))
    return out


def run_left(finished: Mapping[str, list[float]], remaining: list[str]) -> str:
    """`about 3m10s left`, or which kinds are missing: `time left unknown (no refit done yet)`."""
    left = remaining_seconds(finished, remaining)
    if left is not None:
        return f"about {duration(left)} left"
    missing = sorted({k for k in remaining if not finished.get(k)})
    return f"time left {UNKNOWN} (no {', '.join(missing)} done yet)"
