"""The orchestrator: drives pretrain -> (denoise -> refit -> evaluate) x K (Lu, Wu & Yu 2025,
Algorithm 1) as a named Ray actor, persisting its state in the run directory after every
stage, so that started again on the same run directory it continues from the first
unfinished stage (and a finished run returns at once).

Run directory:

    config.yaml                resolved configuration
    state.json                 completed stages with their timings and summaries
    data/                      prepared data (when no --data was given)
    checkpoints/iter_000.pt    EMA denoiser after pretraining; iter_{k:03d}.pt after iteration k
    denoised/iter_{k:03d}/     denoised noisy set of iteration k (Parquet, id + x) + _COMPLETE.json
    grids/                     iter_{k:03d}_samples.png, _denoised.png (toy: _points.png)
    metrics.jsonl              one JSON object per evaluation; metrics.png: metric per iteration
    train/                     Ray Train storage: per stage its checkpoints (resume points)
"""

from __future__ import annotations

import json
import time

import ray
import yaml

from sfbd.config import SFBDConfig, from_dict
from sfbd.data.store import read_manifest
from sfbd.runfiles import Where, checkpoint_complete, is_complete, read_json, write_json_atomic
from sfbd.storage import Location
from sfbd.telemetry import RunMetrics

STATE = "state.json"
CONFIG = "config.yaml"
METRICS = "metrics.jsonl"


def stage_names(iterations: int) -> list[str]:
    names = ["pretrain", "evaluate_000"]
    for k in range(1, iterations + 1):
        names += [f"denoise_{k:03d}", f"refit_{k:03d}", f"evaluate_{k:03d}"]
    return names


def read_state(run_dir: Where) -> dict:
    path = Location.of(run_dir) / STATE
    if path.is_file():
        return read_json(path)
    return {"completed": {}, "finished": False}


def read_metrics(run_dir: Where) -> list[dict]:
    path = Location.of(run_dir) / METRICS
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def append_metrics(run_dir: Where, row: dict) -> None:
    """Add one record to metrics.jsonl (rewritten whole: object stores cannot append)."""
    path = Location.of(run_dir) / METRICS
    text = path.read_text() if path.is_file() else ""
    path.write_text(text + json.dumps(row) + "\n")


class Orchestrator:
    """Runs the SFBD loop for one run directory. Create it as a Ray actor (see `start`)."""

    def __init__(self, run_dir: str, data_dir: str):
        self.run_dir = Location.of(run_dir)
        self.data_dir = Location.of(data_dir)
        raw = yaml.safe_load((self.run_dir / CONFIG).read_text())
        self.config: SFBDConfig = from_dict(SFBDConfig, raw)
        self.item_shape = tuple(read_manifest(self.data_dir)["item_shape"])
        self.state = read_state(self.run_dir)
        self.metrics = RunMetrics(self.run_dir.name)

    # -- helpers ------------------------------------------------------------------------------

    def _log(self, msg: str) -> None:
        print(f"[sfbd {time.strftime('%H:%M:%S')}] {msg}", flush=True)

    def ckpt(self, k: int) -> Location:
        return self.run_dir / "checkpoints" / f"iter_{k:03d}.pt"

    def denoised(self, k: int) -> Location:
        return self.run_dir / "denoised" / f"iter_{k:03d}"

    def _output_exists(self, name: str) -> bool:
        kind, _, num = name.partition("_")
        if kind == "pretrain":
            return checkpoint_complete(self.ckpt(0))
        k = int(num)
        if kind == "denoise":
            return is_complete(self.denoised(k))
        if kind == "refit":
            return checkpoint_complete(self.ckpt(k))
        return any(r.get("iteration") == k for r in read_metrics(self.run_dir))

    def _save_state(self) -> None:
        write_json_atomic(self.run_dir / STATE, self.state)

    # -- stages -------------------------------------------------------------------------------

    def _train(self, stage: str, k: int) -> dict:
        from sfbd.stages.refit import run_train

        c = self.config
        sets = [{"path": str(self.data_dir / "clean"), "weight": c.train.clean_weight}]
        tags = {"run": self.run_dir.name, "stage": stage}
        if k > 0:
            other = None if c.train.clean_weight is None else 1 - c.train.clean_weight
            sets.append({"path": str(self.denoised(k)), "weight": other})
        if k > 0 and c.train.clean_weight == 1:
            sets = sets[:1]
        kimg = c.train.pretrain_kimg if k == 0 else c.train.refit_kimg
        return run_train(
            stage,
            self.ckpt(k),
            self.run_dir / "train",
            c.train,
            c.network,
            sets,
            self.item_shape,
            kimg,
            c.seed,
            init_checkpoint=self.ckpt(k - 1) if k > 0 else None,
            extra={"iteration": k},
            log=self._log,
            metric_tags=tags,
        )

    def _denoise(self, k: int) -> dict:
        from sfbd.stages.denoise import run_denoise

        r = run_denoise(
            self.data_dir,
            self.ckpt(k - 1),
            self.denoised(k),
            self.config.denoise,
            self.config.seed,
            k,
            log=self._log,
            metric_tags={"run": self.run_dir.name},
        )
        self.metrics.denoised(r.images_per_s)
        return {
            "count": r.count,
            "seconds": r.seconds,
            "images_per_s": r.images_per_s,
            "evaluations_per_s": r.evaluations_per_s,
            "stats": r.stats,
        }

    def _evaluate(self, k: int) -> dict:
        from sfbd.stages.evaluate import compute_metrics, generate_with_ray
        from sfbd.viz import save_metric_plot

        c = self.config.eval
        samples = generate_with_ray(self.ckpt(k), c, name=f"generate_{k:03d}")
        gpus = 1 if ray.cluster_resources().get("GPU", 0) >= 1 else 0
        task = ray.remote(compute_metrics).options(
            num_cpus=1, num_gpus=gpus, name=f"evaluate_{k:03d}"
        )
        record = ray.get(
            task.remote(
                str(self.run_dir / "grids"),
                f"iter_{k:03d}",
                str(self.data_dir),
                samples,
                c,
                str(self.denoised(k)) if k > 0 else None,
                str(self.run_dir / "cache"),
            )
        )
        done = self.state["completed"]
        row = {"iteration": k, **record}
        if k == 0:
            row["train_loss"] = done["pretrain"]["loss"]
            row["seconds"] = {"pretrain": done["pretrain"]["seconds"]}
        else:
            row["train_loss"] = done[f"refit_{k:03d}"]["loss"]
            row["seconds"] = {
                "denoise": done[f"denoise_{k:03d}"]["seconds"],
                "refit": done[f"refit_{k:03d}"]["seconds"],
            }
            row["denoised"] = {
                "count": done[f"denoise_{k:03d}"]["count"],
                **done[f"denoise_{k:03d}"]["stats"],
            }
        append_metrics(self.run_dir, row)
        metric = row["metric"]
        self.metrics.evaluated(metric, row[metric])
        save_metric_plot(read_metrics(self.run_dir), metric, self.run_dir / "metrics.png")
        self._log(f"evaluate {k:03d}: {metric} = {row[metric]:.4f}")
        return {"metric": metric, metric: row[metric]}

    def _run_stage(self, name: str) -> dict:
        kind, _, num = name.partition("_")
        if kind == "pretrain":
            return self._train("pretrain", 0)
        k = int(num)
        if kind == "denoise":
            return self._denoise(k)
        if kind == "refit":
            return self._train(name, k)
        return self._evaluate(k)

    # -- the loop -----------------------------------------------------------------------------

    def run(self) -> dict:
        """Run every unfinished stage in order; return the state and the metrics."""
        names = stage_names(self.config.iterations)
        for i, name in enumerate(names):
            if not (name in self.state["completed"] and self._output_exists(name)):
                if name.startswith("evaluate") and self._output_exists(name):
                    # The record was appended but the state not saved: keep the record.
                    row = self._metrics_row(name)
                    self.state["completed"][name] = {
                        "metric": row["metric"],
                        row["metric"]: row[row["metric"]],
                        "seconds": 0.0,
                        "recovered": True,
                    }
                else:
                    self._log(f"stage {i + 1}/{len(names)}: {name}")
                    self.state["current"] = name
                    self._save_state()
                    self.metrics.stage_started(name, i, len(names))
                    t0 = time.time()
                    result = self._run_stage(name)
                    self.state["completed"][name] = {
                        **result,
                        "seconds": result.get("seconds", time.time() - t0),
                        "wall_seconds": time.time() - t0,
                    }
                    self.state["current"] = None
                self._save_state()
        self.metrics.finished(len(names))
        if not self.state.get("finished"):
            self.state["finished"] = True
            self._save_state()
        else:
            self._log(f"run {self.run_dir} already finished; nothing to do")
        return self.summary()

    def _metrics_row(self, name: str) -> dict:
        k = int(name.partition("_")[2])
        return [r for r in read_metrics(self.run_dir) if r["iteration"] == k][-1]

    def summary(self) -> dict:
        return {
            "run_dir": str(self.run_dir),
            "state": self.state,
            "metrics": read_metrics(self.run_dir),
        }


def start(run_dir: Where, data_dir: Where):
    """The orchestrator actor for a run directory: named, reserving no CPU, and never inside
    the caller's placement group (a Tune trial's), so its stages get the cluster's resources."""
    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

    name = f"sfbd-orchestrator:{Location.of(run_dir)}"
    actor_cls = ray.remote(num_cpus=0, max_restarts=0)(Orchestrator)
    return actor_cls.options(
        name=name,
        namespace="sfbd",
        scheduling_strategy=PlacementGroupSchedulingStrategy(placement_group=None),
    ).remote(str(run_dir), str(data_dir))
