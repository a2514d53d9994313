"""Ray Tune's own experiment-tracking callbacks for sweeps (`sfbd sweep --callback NAME`):
MLflow (`ray.air.integrations.mlflow.MLflowLoggerCallback`) and Weights & Biases
(`ray.air.integrations.wandb.WandbLoggerCallback`). Each trial becomes one tracked run with
the trial's axis values as parameters and every report (`metric`, `iteration`, ...) as a
step. The packages are optional (`pip install 'sfbd[track]'`); a missing one is reported
before Ray starts.

Configured through the tools' own environment variables: `MLFLOW_TRACKING_URI` (default:
MLflow's, `./mlruns`) and `MLFLOW_EXPERIMENT_NAME` (default `sfbd-sweep-<config name>`);
`WANDB_PROJECT` (default `sfbd`), `WANDB_MODE` (`offline` logs without network; passed on to
the logging actors) and `WANDB_DIR` (default: `OUT/wandb` for a local `--out`)."""

from __future__ import annotations

import importlib
import os

from sfbd.storage import Location

PACKAGES = {"mlflow": "mlflow", "wandb": "wandb"}


def check_callbacks(names) -> None:
    """A one-line `ValueError` naming the first callback whose package is not installed."""
    for name in names:
        package = PACKAGES[name]
        try:
            importlib.import_module(package)
        except ImportError:
            raise ValueError(
                f"--callback {name}: the package {package} is not installed; "
                f"pip install 'sfbd[track]' (or pip install {package})"
            ) from None


def make_callbacks(names, sweep_name: str, out: Location) -> list:
    """The Tune logger callbacks for `names` (`mlflow`, `wandb`)."""
    callbacks = []
    for name in names:
        if name == "mlflow":
            from ray.air.integrations.mlflow import MLflowLoggerCallback

            callbacks.append(
                MLflowLoggerCallback(
                    tracking_uri=os.environ.get("MLFLOW_TRACKING_URI"),
                    experiment_name=os.environ.get(
                        "MLFLOW_EXPERIMENT_NAME", f"sfbd-sweep-{sweep_name}"
                    ),
                )
            )
        elif name == "wandb":
            from ray.air.integrations.wandb import WandbLoggerCallback

            options = {}
            # The logging actors run in Ray workers, which need not share this environment.
            if os.environ.get("WANDB_MODE"):
                options["mode"] = os.environ["WANDB_MODE"]
            folder = os.environ.get("WANDB_DIR") or (
                str(out.local / "wandb") if out.local is not None else None
            )
            if folder:
                os.makedirs(folder, exist_ok=True)
                options["dir"] = folder
            callbacks.append(
                WandbLoggerCallback(
                    project=os.environ.get("WANDB_PROJECT", "sfbd"),
                    group=f"sfbd-sweep-{sweep_name}",
                    **options,
                )
            )
    return callbacks
