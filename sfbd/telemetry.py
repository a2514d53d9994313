"""Live figures of a run as Ray metrics (`ray.util.metrics`), exported by every node's
metrics agent to Prometheus (and the dashboard's Grafana panels) with the prefix `ray_`.

    sfbd_iteration{run}                     current SFBD iteration (0: pretraining)
    sfbd_stage{run, stage}                  1 while that stage runs, else 0
    sfbd_stages_completed{run}              stages finished so far
    sfbd_images_denoised{run, iteration}    counter, incremented by the denoise actors per batch
    sfbd_denoise_images_per_second{run}     rate of the last finished denoise stage
    sfbd_kimg_trained{run, stage}           progress of the running train stage (rank 0)
    sfbd_metric{run, metric}                the latest evaluation (e.g. metric="fid")

`run` is the run directory's name, so runs sharing a cluster (a sweep) stay apart.
"""

from __future__ import annotations

from ray.util.metrics import Counter, Gauge

from sfbd.plan import Stage

_METRICS: dict[str, Counter | Gauge] = {}


def _get(kind: type, name: str, description: str, tags: tuple[str, ...]):
    """One metric object per name and process (Ray refuses to register a name twice)."""
    if name not in _METRICS:
        _METRICS[name] = kind(name, description=description, tag_keys=tags)
    return _METRICS[name]


def images_denoised() -> Counter:
    return _get(
        Counter, "sfbd_images_denoised", "noisy items denoised so far", ("run", "iteration")
    )


def kimg_trained() -> Gauge:
    return _get(Gauge, "sfbd_kimg_trained", "thousands of images trained", ("run", "stage"))


class RunMetrics:
    """The orchestrator's view: iteration, stage, completed stages, rates, latest metric."""

    def __init__(self, run: str):
        self.run = run
        self.iteration = _get(Gauge, "sfbd_iteration", "current SFBD iteration", ("run",))
        self.stage = _get(Gauge, "sfbd_stage", "1 while the stage runs", ("run", "stage"))
        self.completed = _get(Gauge, "sfbd_stages_completed", "stages finished", ("run",))
        self.rate = _get(
            Gauge, "sfbd_denoise_images_per_second", "last denoise stage's rate", ("run",)
        )
        self.metric = _get(Gauge, "sfbd_metric", "latest evaluation", ("run", "metric"))
        self._running: str | None = None

    def stage_started(self, stage: Stage, index: int) -> None:
        if self._running is not None:
            self.stage.set(0, tags={"run": self.run, "stage": self._running})
        self._running = stage.key
        self.stage.set(1, tags={"run": self.run, "stage": stage.key})
        self.completed.set(index, tags={"run": self.run})
        self.iteration.set(stage.iteration, tags={"run": self.run})

    def finished(self, total: int) -> None:
        if self._running is not None:
            self.stage.set(0, tags={"run": self.run, "stage": self._running})
            self._running = None
        self.completed.set(total, tags={"run": self.run})

    def denoised(self, images_per_s: float) -> None:
        self.rate.set(images_per_s, tags={"run": self.run})

    def evaluated(self, metric: str, value: float) -> None:
        self.metric.set(value, tags={"run": self.run, "metric": metric})
