"""`iterations: auto`: when to stop the SFBD loop without clean originals, and which
iteration to keep.

The rule reads the label-free `noisy_distance` of each evaluation (iteration 0 is the
pretrained model): the run stops after iteration k when none of the last `patience` iterations
improved on the best distance before them by more than `margin` (relative), or at the cap
`iterations`. Algorithm 1 iterates towards a fixed point, so once the model's samples, pushed
through the observation channel, stop getting closer to the held-out noisy observations, more
iterations spend compute without a measurable gain.
"""

from __future__ import annotations

from dataclasses import dataclass

AUTO_CAP = 10  # the cap that `iterations: auto` sets


@dataclass
class StopConfig:
    """Early stopping of the loop (`iterations: auto` is `auto: true` with the cap 10)."""

    auto: bool = False  # stop by the rule below; `iterations` is then the cap
    patience: int = 2  # iterations in a row without improvement before stopping
    margin: float = 0.02  # relative improvement of noisy_distance that counts

    def validate(self) -> None:
        if self.patience < 1:
            raise ValueError(f"stop.patience = {self.patience}; must be >= 1")
        if not 0 <= self.margin < 1:
            raise ValueError(f"stop.margin = {self.margin}; must lie in [0, 1)")


def stop_reason(distances: list[float], patience: int, margin: float) -> str | None:
    """Why to stop after the last of `distances` (noisy_distance of iterations 0..k), or None.

    An iteration improves when its distance is below (1 - margin) times the best one before
    it; the loop stops once the last `patience` iterations all failed to."""
    if len(distances) <= patience:
        return None
    best = min(distances[: len(distances) - patience])
    recent = distances[len(distances) - patience :]
    if min(recent) < (1 - margin) * best:
        return None
    k = len(distances) - 1
    return (
        f"noisy_distance has not improved by {margin:.0%} on {best:.4g} for {patience} "
        f"iteration{'s' if patience > 1 else ''} (iterations {k - patience + 1}..{k}: "
        + ", ".join(f"{d:.4g}" for d in recent)
        + ")"
    )


def best_iteration(distances: list[float | None]) -> int | None:
    """The iteration (index into `distances`, noisy_distance of iterations 0..k) whose model
    lies closest to the held-out noisy observations: the one to keep when a late iteration
    drifts back (the earliest of equals); None when no row has the distance."""
    scored = [(d, k) for k, d in enumerate(distances) if d is not None]
    return min(scored)[1] if scored else None


def best_row(rows: list[dict]) -> dict | None:
    """The `metrics.jsonl` row (any order) of `best_iteration`, or None."""
    rows = sorted(rows, key=lambda r: r["iteration"])
    i = best_iteration([r.get("noisy_distance") for r in rows])
    return None if i is None else rows[i]
