"""Concurrent sweep trials against the same trials one after another (`sfbd sweep
--compare-sequential`).

Runs the grid twice on the same cluster, from scratch each time: first with `max_concurrent`
trials at once into `OUT/concurrent`, then one at a time into `OUT/sequential`. Reports each
sweep's wall time (from the call to Ray Tune to its last result, trial start-up and data
preparation included) and each trial's time in its stages (from its first stage's start to
its last one's end, `state.json`'s `started` / `finished`), and writes `OUT/comparison.json`.
The concurrent sweep goes first, so any warm-up of the machine counts against it.
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

from sfbd.config import SFBDConfig
from sfbd.rundir import RunDir
from sfbd.sweep import SweepConfig, sweep


def stage_span(run_dir: Path) -> tuple[float, float]:
    """(start, end) of a finished run's stages, Unix times."""
    stages = [s for s in RunDir(run_dir).read_state()["completed"].values() if "started" in s]
    return min(s["started"] for s in stages), max(s["finished"] for s in stages)


def overlap_seconds(spans: list[tuple[float, float]]) -> float:
    """How long all the spans ran at the same time (0 if some never met)."""
    return max(0.0, min(end for _, end in spans) - max(start for start, _ in spans))


def compare_sequential(config: SFBDConfig, grid: SweepConfig, out: Path, log=print) -> dict:
    """Time the sweep with `grid.max_concurrent` trials at once and with one at a time."""
    if out.exists() and any(out.iterdir()):
        raise ValueError(f"--out: {out} is not empty; --compare-sequential times fresh sweeps")
    modes = {}
    for mode, n in (("concurrent", grid.max_concurrent), ("sequential", 1)):
        t0 = time.time()
        rows, failed = sweep(config, dataclasses.replace(grid, max_concurrent=n), out / mode, log)
        seconds = time.time() - t0
        if failed:
            raise RuntimeError(f"{mode} sweep: {len(failed)} trial(s) failed: {failed[0].error}")
        spans = [stage_span(Path(r["run_dir"])) for r in rows]
        trial_seconds = [end - start for start, end in spans]
        modes[mode] = {
            "max_concurrent": n,
            "seconds": round(seconds, 1),
            "trials": len(rows),
            "trial_stage_seconds": [round(s, 1) for s in trial_seconds],
            "all_trials_overlap_seconds": round(overlap_seconds(spans), 1),
        }
        log(f"[sweep] {mode} (max_concurrent {n}): {seconds:.1f}s")
    result = {
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "config": config.name,
        "axes": grid.space().keys(),
        **modes,
        "speedup": round(modes["sequential"]["seconds"] / modes["concurrent"]["seconds"], 2),
    }
    (out / "comparison.json").write_text(json.dumps(result, indent=1) + "\n")
    return result


def format_comparison(result: dict, cpus: float) -> str:
    lines = [
        f"sweep timing: {result['concurrent']['trials']} trials of {result['config']}, "
        f"{cpus:g} CPUs",
        f"  {'mode':<12} {'at once':>7} {'wall s':>8} {'trial stages s (each)':<32} all overlap s",
    ]
    for mode in ("concurrent", "sequential"):
        m = result[mode]
        each = ", ".join(f"{s:g}" for s in m["trial_stage_seconds"])
        lines.append(
            f"  {mode:<12} {m['max_concurrent']:>7} {m['seconds']:>8.1f} {each:<32} "
            f"{m['all_trials_overlap_seconds']:g}"
        )
    lines.append(f"  speed-up (sequential / concurrent wall time): {result['speedup']:.2f}x")
    return "\n".join(lines)
