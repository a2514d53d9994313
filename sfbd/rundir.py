"""The run directory: the only code that names a run's files.

    config.yaml                resolved configuration
    state.json                 completed stages with their timings and summaries
    lease.json                 the run that owns the directory and its heartbeat (sfbd.lease)
    data/                      prepared data (when no --data was given)
    checkpoints/iter_000.pt    EMA denoiser after pretraining; iter_{k:03d}.pt after iteration k
    checkpoints/best.pt        a copy of the iteration with the lowest noisy_distance so far
                               (every .pt has its .sha256 beside it)
    denoised/iter_{k:03d}/     denoised noisy set of iteration k (Parquet, id + x) + _COMPLETE.json
    grids/                     iter_{k:03d}_samples.png, _denoised.png, _closest.png, _points.png
    metrics.jsonl              one JSON object per evaluation; metrics.png: metric per iteration
    baselines/<kind>.pt|.json  comparison models (noisy, all-clean) and their evaluation
    experiment/<row>.json      `sfbd experiment`'s extra distances of each row
    train/<stage>/             Ray Train storage: per stage its checkpoints (resume points)
    cache/                     reference statistics of feature distances
    tensorboard/               TensorBoard event files: train loss and rate, metrics, grids

Any `Location` works: a local path or a URI (`s3://...`, `file://...`).
"""

from __future__ import annotations

import json

from sfbd.config import SFBDConfig, config_from_text, dump_config
from sfbd.plan import Stage
from sfbd.runfiles import read_json, write_json_atomic
from sfbd.storage import Location, Where


class RunDir:
    """A run directory on any storage `Location`."""

    def __init__(self, where: Where | RunDir):
        self.root = where.root if isinstance(where, RunDir) else Location.of(where)

    def __str__(self) -> str:
        return str(self.root)

    def __repr__(self) -> str:
        return f"RunDir({str(self.root)!r})"

    @property
    def name(self) -> str:
        return self.root.name

    # -- where things are ----------------------------------------------------------------------

    @property
    def config_file(self) -> Location:
        return self.root / "config.yaml"

    @property
    def state_file(self) -> Location:
        return self.root / "state.json"

    @property
    def lease_file(self) -> Location:
        """Who owns the run directory while a run works in it (see `sfbd.lease`)."""
        return self.root / "lease.json"

    @property
    def metrics_file(self) -> Location:
        return self.root / "metrics.jsonl"

    @property
    def metrics_plot(self) -> Location:
        return self.root / "metrics.png"

    @property
    def data(self) -> Location:
        """Prepared data of a run started without `--data`."""
        return self.root / "data"

    @property
    def grids(self) -> Location:
        return self.root / "grids"

    @property
    def train(self) -> Location:
        """Ray Train's storage path; stage `s` keeps its checkpoints in `train/<s>`."""
        return self.root / "train"

    @property
    def cache(self) -> Location:
        return self.root / "cache"

    @property
    def tensorboard(self) -> Location:
        """TensorBoard event files (`sfbd.tensorboard_events`), what `tensorboard --logdir RUN`
        shows."""
        return self.root / "tensorboard"

    @property
    def tensorboard_train(self) -> Location:
        """The train stages' events (step: images trained in the run). TensorBoard drops a
        folder's events above a step it meets again later ("orphaned" by a restart), so
        each step axis has its own folder, that is, its own TensorBoard run."""
        return self.tensorboard / "train"

    @property
    def tensorboard_eval(self) -> Location:
        """The evaluations' events (step: iteration)."""
        return self.tensorboard / "eval"

    def checkpoint(self, iteration: int) -> Location:
        """The EMA denoiser after pretraining (0) or after SFBD iteration k."""
        return self.root / "checkpoints" / f"iter_{iteration:03d}.pt"

    @property
    def best_checkpoint(self) -> Location:
        """A copy of the checkpoint of the iteration with the lowest `noisy_distance`."""
        return self.root / "checkpoints" / "best.pt"

    def denoised(self, iteration: int) -> Location:
        return self.root / "denoised" / f"iter_{iteration:03d}"

    def grid_prefix(self, iteration: int) -> str:
        """Pictures of an evaluation are `grids/<prefix>_<what>.png`."""
        return f"iter_{iteration:03d}"

    def grid(self, prefix: str, what: str) -> Location:
        return self.grids / f"{prefix}_{what}.png"

    def train_storage(self, stage: Stage | str) -> Location:
        return self.train / str(stage)

    def baseline_checkpoint(self, kind: str) -> Location:
        return self.root / "baselines" / f"{kind}.pt"

    def baseline_result(self, kind: str) -> Location:
        return self.root / "baselines" / f"{kind}.json"

    def extra_metrics(self, row: str) -> Location:
        """`sfbd experiment`'s extra distances of one row (e.g. `iter_002`)."""
        return self.root / "experiment" / f"{row}.json"

    # -- what is in them -----------------------------------------------------------------------

    def read_config(self) -> SFBDConfig:
        return config_from_text(self.config_file.read_text(), str(self.config_file))

    def write_config(self, config: SFBDConfig) -> None:
        self.config_file.write_text(dump_config(config))

    def read_state(self) -> dict:
        if self.state_file.is_file():
            return read_json(self.state_file)
        return {"completed": {}, "finished": False}

    def write_state(self, state: dict) -> None:
        write_json_atomic(self.state_file, state)

    def read_metrics(self) -> list[dict]:
        if not self.metrics_file.is_file():
            return []
        text = self.metrics_file.read_text()
        return [json.loads(line) for line in text.splitlines() if line.strip()]

    def append_metrics(self, row: dict) -> None:
        """Add one record to metrics.jsonl, in place of an earlier record of the same
        evaluation (its `iteration`), so that an evaluation redone after a crash never leaves
        two rows. The file is rewritten whole: object stores cannot append."""
        path = self.metrics_file
        lines = path.read_text().splitlines() if path.is_file() else []
        new, placed = json.dumps(row), False
        for i, line in enumerate(lines):
            if line.strip() and json.loads(line).get("iteration") == row.get("iteration"):
                lines[i], placed = ("" if placed else new), True
        lines = [line for line in lines if line.strip()] + ([] if placed else [new])
        path.write_text("".join(line + "\n" for line in lines))

    def metrics_row(self, iteration: int) -> dict | None:
        rows = [r for r in self.read_metrics() if r.get("iteration") == iteration]
        return rows[-1] if rows else None
