"""The orchestrator: drives pretrain -> (denoise -> refit -> evaluate) x K (Lu, Wu & Yu 2025,
Algorithm 1) as a named Ray actor, persisting its state in the run directory after every
stage, so that started again on the same run directory it continues from the first
unfinished stage (and a finished run returns at once). The files it writes are named by
`sfbd.rundir.RunDir`."""

from __future__ import annotations

import time

import ray

from sfbd.data.store import read_manifest
from sfbd.plan import Stage, plan
from sfbd.progress import duration, run_left, stage_seconds
from sfbd.rundir import RunDir
from sfbd.runfiles import checkpoint_complete, is_complete
from sfbd.stages.refit import TrainJob, TrainSet
from sfbd.storage import Location, Where
from sfbd.telemetry import RunMetrics

# Share of the pretrained model's samples that copy a clean item above which the log warns.
MEMORIZED_WARNING = 0.1


def quiet_ray_data_progress(interactive: bool) -> None:
    """Ray Data's progress bars only in a terminal. In a log (`ray job logs`, a file, a Tune
    trial) bars become carriage-return updates, and Ray Data's plain-text fallback is a block
    of lines per dataset every 10 s; the stages' own one-line progress stands in for both.
    Ray Data's notes about which progress display it chose are left out either way."""
    import logging

    from ray.data import DataContext

    DataContext.get_current().enable_progress_bars = interactive
    logging.getLogger("ray.data._internal.progress").setLevel(logging.ERROR)


class Orchestrator:
    """Runs the SFBD loop for one run directory. Create it as a Ray actor (see `start`)."""

    def __init__(self, run_dir: str, data_dir: str, interactive: bool = False):
        quiet_ray_data_progress(interactive)
        self.run = RunDir(run_dir)
        self.data_dir = Location.of(data_dir)
        self.config = self.run.read_config()
        self.item_shape = tuple(read_manifest(self.data_dir)["item_shape"])
        self.state = self.run.read_state()
        self.metrics = RunMetrics(self.run.name)
        self.events = None  # the orchestrator's TensorBoard event file, opened when first used

    def _log(self, msg: str) -> None:
        print(f"[sfbd {time.strftime('%H:%M:%S')}] {msg}", flush=True)

    def _output_exists(self, stage: Stage) -> bool:
        k = stage.iteration
        if stage.trains:
            return checkpoint_complete(self.run.checkpoint(k))
        if stage.kind == "denoise":
            return is_complete(self.run.denoised(k))
        return self.run.metrics_row(k) is not None

    def _done(self, stage: Stage | str) -> dict:
        return self.state["completed"][str(stage)]

    # -- stages -------------------------------------------------------------------------------

    def _train(self, stage: Stage) -> dict:
        from sfbd.diffusion.training import stage_train_config
        from sfbd.stages.refit import run_train

        c, k = self.config, stage.iteration
        if k == 0 and c.train.pretrain_kimg == 0:
            return self._adopt_init()
        w = c.train.clean_weight
        # The events' step: images trained in the run before this stage (refits continue the
        # pretraining's curve).
        before = 0 if k == 0 else c.train.pretrain_kimg + (k - 1) * c.train.refit_kimg
        # Pretraining fits the clean set; refit k fits clean + denoised E_k by clean_weight,
        # the denoised set alone at 0 (Algorithm 1, line 4).
        sets = []
        if k == 0 or w != 0:
            sets.append(TrainSet(path=str(self.data_dir / "clean"), weight=w if k else None))
        if k > 0 and w != 1:
            sets.append(
                TrainSet(path=str(self.run.denoised(k)), weight=None if w is None else 1 - w)
            )
        job = TrainJob(
            stage=stage.key,
            train=stage_train_config(c.train, k),
            network=c.network,
            sets=sets,
            item_shape=self.item_shape,
            kimg=c.train.pretrain_kimg if k == 0 else c.train.refit_kimg,
            seed=c.seed,
            storage=str(self.run.train),
            init_checkpoint=str(self.run.checkpoint(k - 1)) if k > 0 else c.train.init,
            init_state=self._carried_state(k),
            metric_tags={"run": self.run.name, "stage": stage.key},
            tensorboard=str(self.run.tensorboard_train),
            images_before=round(before * 1000),
        )
        return run_train(job, self.run.checkpoint(k), log=self._log, iteration=k)

    def _carried_state(self, k: int) -> str | None:
        """`train.refit_start: continue`: refit k continues the train state of the stage
        before it (pretraining for k = 1)."""
        if k == 0 or self.config.train.refit_start != "continue":
            return None
        before = Stage("pretrain", 0) if k == 1 else Stage("refit", k - 1)
        return str(self.run.train_storage(before))

    def _adopt_init(self) -> dict:
        """Iteration 0 is `train.init` as it is (`train.pretrain_kimg: 0`): its bytes, checked
        against their digest, become `checkpoints/iter_000.pt`."""
        from sfbd.runfiles import read_checkpoint, save_checkpoint

        t0 = time.time()
        init = self.config.train.init
        if self.config.train.refit_start == "continue":  # refit 1 continues init's train state
            self._adopt_init_state(init)
        save_checkpoint(self.run.checkpoint(0), read_checkpoint(init))
        self._log(f"pretrain: none; iteration 0 is train.init = {init}")
        return {
            "stage": "pretrain",
            "kimg": 0.0,
            "loss": None,
            "init": init,
            "seconds": time.time() - t0,
        }

    def _adopt_init_state(self, init: str) -> None:
        """The train state behind `train.init` (checked before the run started), copied to
        where this run's pretraining would have left its own."""
        from sfbd.stages.refit import STATE_FILE, init_train_storage, latest_state_folder

        folder = latest_state_folder(init_train_storage(init))
        target = self.run.train_storage(Stage("pretrain", 0)) / folder.name / STATE_FILE
        target.write_bytes((folder / STATE_FILE).read_bytes())

    def _denoise(self, stage: Stage) -> dict:
        from sfbd.stages.denoise import run_denoise

        k = stage.iteration
        r = run_denoise(
            self.data_dir,
            self.run.checkpoint(k - 1),
            self.run.denoised(k),
            self.config.denoise,
            self.config.seed,
            k,
            log=self._log,
            metric_tags={"run": self.run.name},
        )
        self.metrics.denoised(r.images_per_s)
        return {
            "count": r.count,
            "seconds": r.seconds,
            "images_per_s": r.images_per_s,
            "evaluations_per_s": r.evaluations_per_s,
            "stats": r.stats,
        }

    def _evaluate(self, stage: Stage) -> dict:
        from sfbd.stages.evaluate import evaluate_on_ray
        from sfbd.viz import save_metric_plot

        k = stage.iteration
        record = evaluate_on_ray(
            self.run,
            self.run.grid_prefix(k),
            self.run.checkpoint(k),
            self.data_dir,
            self.config.eval,
            self.run.denoised(k) if k > 0 else None,
            name=stage.key,
            log=self._log,
            previous_denoised_dir=self.run.denoised(k - 1) if k > 1 else None,
        )
        row = {"iteration": k, **record}
        if k == 0:
            pretrain = self._done("pretrain")
            row["train_loss"] = pretrain["loss"]
            row["seconds"] = {"pretrain": pretrain["seconds"]}
        else:
            denoise, refit = self._done(Stage("denoise", k)), self._done(Stage("refit", k))
            row["train_loss"] = refit["loss"]
            row["seconds"] = {"denoise": denoise["seconds"], "refit": refit["seconds"]}
            row["denoised"] = {"count": denoise["count"], **denoise["stats"]}
        self.run.append_metrics(row)
        self._write_events(row)
        metric = row["metric"]
        self.metrics.evaluated(metric, row[metric])
        for series in ("noisy_distance", "denoised_distance"):  # more series on the dashboard
            if series in row:
                self.metrics.evaluated(series, row[series])
        save_metric_plot(self.run.read_metrics(), metric, self.run.metrics_plot)
        self._log(f"evaluate {k:03d}: {metric} = {row[metric]:.4f}")
        copies = row.get("memorization", {}).get("clean", {}).get("fraction_copies", 0.0)
        if k == 0 and copies > MEMORIZED_WARNING:
            self._log(
                f"warning: {copies:.0%} of the pretrained model's samples copy a clean item "
                f"(eval.memorization_threshold); a memorising initial model makes the backward "
                f"pass snap noisy items onto the clean set, which SFBD cannot undo: pretrain "
                f"shorter or with augmentation"
            )
        return {"metric": metric, metric: row[metric]}

    def _write_events(self, row: dict) -> None:
        """A metrics.jsonl row and its pictures as TensorBoard events (step = iteration)."""
        from sfbd.tensorboard_events import EventLog

        if self.events is None:
            self.events = EventLog(self.run.tensorboard_eval, "orchestrator")
        k = row["iteration"]
        self.events.scalars({n: v for n, v in row.items() if n != "iteration"}, k, "eval")
        for what in ("samples", "denoised", "closest", "points"):
            self.events.image_file(f"grids/{what}", self.run.grid(self.run.grid_prefix(k), what), k)
        self.events.flush()

    def _run_stage(self, stage: Stage) -> dict:
        if stage.trains:
            return self._train(stage)
        if stage.kind == "denoise":
            return self._denoise(stage)
        return self._evaluate(stage)

    # -- the loop -----------------------------------------------------------------------------

    def run(self) -> dict:
        """Run every unfinished stage in order; return the state and the metrics."""
        stages = plan(self.config.iterations)
        t_run = time.time()

        def where(i: int, now: Stage | None = None) -> str:
            """This run's elapsed time and the estimate for `now` and the stages after i."""
            done = self.state["completed"]
            left = [s.kind for s in stages[i + 1 :] if s.key not in done]
            left += [now.kind] if now is not None else []
            estimate = run_left(stage_seconds(done), left)
            return f"run {duration(time.time() - t_run)} elapsed, {estimate}"

        for i, stage in enumerate(stages):
            if not (stage.key in self.state["completed"] and self._output_exists(stage)):
                self._run_or_recover(i, stage, stages, where)
            if stage.kind == "evaluate":
                self._keep_best()
                if self._stop_early(stage.iteration):
                    break
        self.metrics.finished(len(stages))
        if self.events is not None:
            self.events.close()
            self.events = None
        if not self.state.get("finished"):
            self.state["finished"] = True
            self.run.write_state(self.state)
        else:
            self._log(f"run {self.run} already finished; nothing to do")
        return self.summary()

    def _run_or_recover(self, i: int, stage: Stage, stages: list[Stage], where) -> None:
        """Run stage i (or keep an evaluation record a crash left unsaved) and save the state."""
        if stage.kind == "evaluate" and self._output_exists(stage):
            # The record was appended but the state not saved: keep the record.
            row = self.run.metrics_row(stage.iteration)
            self.state["completed"][stage.key] = {
                "metric": row["metric"],
                row["metric"]: row[row["metric"]],
                "seconds": 0.0,
                "recovered": True,
            }
        else:
            self._log(f"stage {i + 1}/{len(stages)}: {stage}; {where(i, stage)}")
            self.state["current"] = stage.key
            self.run.write_state(self.state)
            self.metrics.stage_started(stage, i)
            t0 = time.time()
            result = self._run_stage(stage)
            t1 = time.time()
            self.state["completed"][stage.key] = {
                **result,
                "seconds": result.get("seconds", t1 - t0),
                "wall_seconds": t1 - t0,
                "started": t0,  # Unix times: when concurrent runs overlapped (sweeps)
                "finished": t1,
            }
            self.state["current"] = None
            self._log(
                f"stage {i + 1}/{len(stages)}: {stage} done in {duration(t1 - t0)}; {where(i)}"
            )
        self.run.write_state(self.state)

    def _stop_early(self, k: int) -> bool:
        """`iterations: auto`: whether the rule of `sfbd.stopping` ends the loop after k."""
        from sfbd.stopping import stop_reason

        stop = self.config.stop
        if not stop.auto or k == 0:
            return False
        by_iteration = {row["iteration"]: row for row in self.run.read_metrics()}  # one read
        distances = [by_iteration.get(i, {}).get("noisy_distance") for i in range(k + 1)]
        if any(d is None for d in distances):
            self._log("warning: iterations: auto, but a metrics row lacks noisy_distance")
            return False
        reason = stop_reason(distances, stop.patience, stop.margin)
        if reason is None:
            return False
        if self.state.get("stopped_early", {}).get("iteration") != k:
            self.state["stopped_early"] = {"iteration": k, "reason": reason}
            self.run.write_state(self.state)
            self._log(f"stopping after iteration {k} of at most {self.config.iterations}: {reason}")
        return True

    def _keep_best(self) -> None:
        """`checkpoints/best.pt`: a copy of the iteration with the lowest `noisy_distance` (no
        clean originals needed), recorded as `state["best"]`; idempotent, so a resumed run
        repairs a copy that a crash left out."""
        from sfbd.runfiles import checkpoint_complete, read_checkpoint, save_checkpoint
        from sfbd.stopping import best_row

        row = best_row(self.run.read_metrics())
        if row is None:
            return
        k = row["iteration"]
        best = {"iteration": k, "noisy_distance": row["noisy_distance"]}
        if self.state.get("best") == best and checkpoint_complete(self.run.best_checkpoint):
            return
        save_checkpoint(self.run.best_checkpoint, read_checkpoint(self.run.checkpoint(k)))
        if self.state.get("best", {}).get("iteration") != k:
            self._log(f"best so far by noisy_distance: iteration {k} -> {self.run.best_checkpoint}")
        self.state["best"] = best
        self.run.write_state(self.state)

    def summary(self) -> dict:
        best = self.state.get("best")
        return {
            "run_dir": str(self.run),
            "state": self.state,
            "metrics": self.run.read_metrics(),
            "best": best and {**best, "checkpoint": str(self.run.best_checkpoint)},
        }


def start(run_dir: Where, data_dir: Where):
    """The orchestrator actor for a run directory: named, reserving no CPU, and never inside
    the caller's placement group (a Tune trial's), so its stages get the cluster's resources.
    Ray Data draws progress bars only when this process writes to a terminal."""
    import sys

    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

    name = f"sfbd-orchestrator:{RunDir(run_dir)}"
    actor_cls = ray.remote(num_cpus=0, max_restarts=0)(Orchestrator)
    return actor_cls.options(
        name=name,
        namespace="sfbd",
        scheduling_strategy=PlacementGroupSchedulingStrategy(placement_group=None),
    ).remote(str(run_dir), str(data_dir), sys.stdout.isatty())
