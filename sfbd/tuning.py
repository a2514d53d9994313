"""The Ray Tune side of sweeps: the per-trial function (one whole SFBD run for a
(clean_fraction, sigma) grid point) and the results table and heatmap. The CLI is
`tuning/sweep.py`."""

from __future__ import annotations

import csv
from pathlib import Path

from sfbd.config import SFBDConfig, from_dict


def trial_dir(root: str, clean_fraction: float, sigma: float) -> Path:
    return Path(root) / f"cf{clean_fraction:g}_sigma{sigma:g}"


def run_trial(params: dict) -> None:
    """Tune function trainable: one whole SFBD run for (clean_fraction, sigma)."""
    import ray
    import ray.tune

    from sfbd.orchestrator import read_metrics, start
    from sfbd.run import prepare_run_dir

    base = dict(params["base"])
    base["data"] = {
        **base["data"],
        "clean_fraction": params["clean_fraction"],
        "sigma": params["sigma"],
    }
    config = from_dict(SFBDConfig, base)
    run_dir = trial_dir(params["root"], params["clean_fraction"], params["sigma"])
    run_dir.mkdir(parents=True, exist_ok=True)
    data = prepare_run_dir(config, run_dir, None)

    # The loop runs in an orchestrator actor outside the trial's placement group; the trial
    # forwards every metrics row (also those of stages finished before a resume) to Tune.
    actor = start(run_dir, data)
    ref = actor.run.remote()
    reported = 0
    while True:
        done, _ = ray.wait([ref], timeout=1.0)
        rows = read_metrics(run_dir)
        for row in rows[reported:]:
            metric = row["metric"]
            ray.tune.report(
                {
                    "iteration": row["iteration"],
                    "metric": row[metric],
                    "metric_name": metric,
                    "run_dir": str(run_dir),
                }
            )
        reported = len(rows)
        if done:
            ray.get(ref)
            return


def write_results(rows: list[dict], out: Path) -> None:
    """results.csv and heatmap.png of the final metric."""
    from sfbd.viz import save_heatmap

    out.mkdir(parents=True, exist_ok=True)
    fields = [
        "clean_fraction",
        "sigma",
        "iterations_done",
        "metric_name",
        "final_metric",
        "best_metric",
        "run_dir",
    ]
    with open(out / "results.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields)
        w.writeheader()
        for r in sorted(rows, key=lambda r: (r["clean_fraction"], r["sigma"])):
            w.writerow({k: r.get(k) for k in fields})
    save_heatmap(rows, out / "heatmap.png")
