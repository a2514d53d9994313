"""The train stage (Ray Train): pretraining on the clean set and SFBD's refits.

One `TorchTrainer` loop serves both. It trains the EDM loss with Adam, learning-rate warm-up
and an EMA, for a fixed number of images (kimg), so every stage ends by itself. A refit
starts from the previous iteration's EMA weights. Checkpoints go through
`ray.train.report(checkpoint=...)` every `checkpoint_kimg`; a lost worker resumes from the
last one (`FailureConfig`), and a restarted driver resumes from it too, since Ray Train V2
restores a run started again with the same name and storage path. The workers hold the sets
whole in memory or are fed them by Ray Data (`train.ingest`, `sfbd.stages.ingest`).

`train.num_workers = 0` is Ray Train's local mode: the loop runs in the calling process (the
orchestrator), with no controller or worker actors to start (about 15 s per stage on a small
machine). Ray Train keeps nothing of a local run, so its checkpoints are written to the same
storage folder here, and a restarted driver resumes from them as in the distributed mode; a
failure in the loop fails the stage (no `FailureConfig` retries).
"""

from __future__ import annotations

import io
import re
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import ray.train
import ray.train.torch
import torch
from ray.train import Checkpoint, CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
from ray.train.torch import TorchTrainer

from sfbd.data.store import table_items
from sfbd.diffusion.networks import NetworkConfig, build_denoiser
from sfbd.diffusion.training import (
    TrainConfig,
    TrainState,
    draw_batch,
    set_weights,
    train_loss,
    train_step,
)
from sfbd.runfiles import Where, load_denoiser_at, parquet_files, read_parquet, save_denoiser_at
from sfbd.safeload import torch_load
from sfbd.stages.ingest import (
    IngestPlan,
    check_stream_room,
    open_feeds,
    plan_ingest,
    stream_batch,
    stream_datasets,
)
from sfbd.storage import Location

STATE_FILE = "train_state.pt"


def load_items(directory: str, item_shape: tuple[int, ...]) -> np.ndarray:
    """Every item in a folder of (id, x) Parquet files, ordered by id; the files are checked
    against the digests recorded when they were written."""
    ids, x = table_items(read_parquet(parquet_files(directory)), item_shape)
    return x[np.argsort(ids)]


@dataclass
class TrainSet:
    """One set a train stage draws from, with its share of the batches (None: by its size).

    Either `path`, a folder of (id, x) Parquet files the pipeline wrote (the clean split, a
    denoised set, the noisy split), or `source`, a data set read straight from where it lives
    (`load_source` arguments: spec, root, limit, num, seed; train split) with `count`, the
    number of items the prepared data was made from. The second serves the all-clean baseline,
    which trains on the originals of the noisy part too: the pipeline never writes those
    anywhere, so the worker holds them in its memory only.
    """

    path: str | None = None
    source: dict | None = None
    count: int | None = None
    weight: float | None = None

    def __str__(self) -> str:
        return self.path or f"source {self.source['spec']}"

    def load(self, item_shape: tuple[int, ...]) -> np.ndarray:
        if self.path is not None:
            return load_items(self.path, item_shape)
        from sfbd.data.sources import load_source

        src = load_source(train=True, **self.source)
        if src.item_shape != tuple(item_shape) or self.count not in (None, len(src.items)):
            raise ValueError(
                f"data: {self.source['spec']} now holds {len(src.items)} items of shape "
                f"{src.item_shape}; the prepared data was made from {self.count} of "
                f"shape {tuple(item_shape)}"
            )
        return src.items


@dataclass
class TrainJob:
    """Everything one train stage (pretraining, a refit, a baseline) needs."""

    stage: str  # the Ray Train run's name, e.g. pretrain, refit_002, baseline_noisy
    train: TrainConfig
    network: NetworkConfig
    sets: list[TrainSet]
    item_shape: tuple[int, ...]
    kimg: float
    seed: int
    storage: str  # Ray Train's storage path; this stage's checkpoints go to <storage>/<stage>
    init_checkpoint: str | None = None  # EMA weights to start from (a refit: the previous ones)
    # A stage's train storage folder whose newest train state this one continues (weights,
    # Adam, EMA, image count: `train.refit_start: continue`); it takes over init_checkpoint.
    init_state: str | None = None
    metric_tags: dict | None = None  # tags of the live kimg metric; None: no metric
    tensorboard: str | None = None  # the run's TensorBoard folder (rank 0 writes); None: none
    images_before: int = 0  # images the run trained before this stage: the events' step offset


def latest_state(stage_dir: Where) -> dict | None:
    """The newest readable train state among a stage's reported checkpoints, if any.

    Ray Train V2 restores a run started again under the same name, but only from what its
    controller had recorded; reading the checkpoint folders themselves also covers a driver
    killed between a checkpoint's upload and that record. Unreadable (partly written)
    checkpoints are skipped.
    """
    found = _newest_state(stage_dir)
    return None if found is None else found[1]


def latest_state_folder(stage_dir: Where | None) -> Location | None:
    """The checkpoint folder of `latest_state`."""
    found = None if stage_dir is None else _newest_state(stage_dir)
    return None if found is None else found[0]


def _newest_state(stage_dir: Where) -> tuple[Location, dict] | None:
    where = Location.of(stage_dir)
    if not where.is_dir():
        return None
    folders = [d for d in where.children() if d.name.startswith("checkpoint_") and d.is_dir()]
    for d in reversed(folders):
        try:
            data = (d / STATE_FILE).read_bytes()
            state = torch_load(data, f"train state: {d / STATE_FILE} is not an sfbd train state")
            return d, state
        except Exception:
            continue
    return None


def init_train_storage(init: str) -> Location | None:
    """Where the run that wrote checkpoint `init` (`RUN/checkpoints/iter_KKK.pt`) keeps the
    train state behind it (`RUN/train/pretrain` or `RUN/train/refit_KKK`), if it is one."""
    where = Location.of(init)
    match = re.fullmatch(r"iter_(\d+)\.pt", where.name)
    if match is None or where.parent.name != "checkpoints":
        return None
    k = int(match.group(1))
    return where.parent.parent / "train" / ("pretrain" if k == 0 else f"refit_{k:03d}")


def restore_point(job: TrainJob) -> dict | None:
    """The newer of what Ray Train recorded (a worker restarted by FailureConfig) and the
    stage's own storage folder (a restarted driver; or a checkpoint uploaded just before the
    worker died, which the controller had not recorded yet)."""
    candidates = [latest_state(Location.of(job.storage) / job.stage)]
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as d:
            path = Path(d) / STATE_FILE
            candidates.append(torch_load(path, f"train state: {path} is not an sfbd train state"))
    candidates = [c for c in candidates if c is not None]
    return max(candidates, key=lambda c: c["images_seen"]) if candidates else None


class Reporter:
    """Progress lines (rate, time left), the live kimg metric and TensorBoard scalars every
    `log_kimg` from rank 0, and `ray.train.report` every `checkpoint_kimg` and at the end
    (every rank reports; rank 0 attaches the checkpoint)."""

    def __init__(self, job: TrainJob, rank: int, state: TrainState, resumed_from: int | None):
        self.job, self.rank, self.resumed_from = job, rank, resumed_from
        self.losses: list[float] = []
        self.set_sizes: list[int] = []
        self.t_last, self.images_last = time.time(), state.images_seen
        self.t_first, self.images_first = 0.0, state.images_seen  # when the first step ends
        self.progress = None
        if rank == 0 and job.metric_tags:
            from sfbd.telemetry import kimg_trained

            self.progress = kimg_trained()
        self.events = None  # opened at the first progress line (rank 0, with job.tensorboard)

    def crossed(self, images: int, every_kimg: float) -> bool:
        every = int(every_kimg * 1000)
        return images // every > (images - self.job.train.batch_size) // every

    def step(self, loss: float, state: TrainState) -> None:
        self.losses.append(loss)
        if len(self.losses) == 1:
            self.t_first, self.images_first = time.time(), state.images_seen
        total, done = self.job.kimg * 1000, state.images_seen >= self.job.kimg * 1000
        state.loss = float(np.mean(self.losses[-50:]))
        if self.rank == 0 and (self.crossed(state.images_seen, self.job.train.log_kimg) or done):
            self.log_line(state, total)
        if self.crossed(state.images_seen, self.job.train.checkpoint_kimg) or done:
            self.report(state)
        if done and self.events is not None:
            self.events.close()
            self.events = None

    def log_line(self, state: TrainState, total: float) -> None:
        """The progress line, the live metric and the TensorBoard scalars."""
        from sfbd.progress import duration, time_left

        now = time.time()
        rate = (state.images_seen - self.images_last) / max(now - self.t_last, 1e-9)
        # Time left at the rate since the first step ended (the first one includes start-up).
        left = time_left(
            state.images_seen - self.images_first, total - self.images_first, now - self.t_first
        )
        print(
            f"{self.job.stage}: {state.images_seen / 1000:.1f}/{total / 1000:.1f} kimg "
            f"({100 * state.images_seen / total:.0f}%), loss {state.loss:.4f}, "
            f"{rate:.0f} images/s, {duration(left)} left",
            flush=True,
        )
        self.t_last, self.images_last = now, state.images_seen
        if self.progress is not None:
            self.progress.set(state.images_seen / 1000, tags=self.job.metric_tags)
        if self.job.tensorboard:
            if self.events is None:
                from sfbd.tensorboard_events import EventLog

                self.events = EventLog(self.job.tensorboard, self.job.stage)
            step = self.job.images_before + state.images_seen
            self.events.scalar("train/loss", state.loss, step)
            self.events.scalar("train/images_per_s", rate, step)
            self.events.flush()

    def report(self, state: TrainState) -> None:
        metrics = {
            "kimg": state.images_seen / 1000,
            "loss": state.loss,
            "images_seen": state.images_seen,
            "set_sizes": self.set_sizes,
        }
        if self.resumed_from is not None:  # this worker group restarted from a checkpoint
            metrics["resumed_from_kimg"] = self.resumed_from / 1000
        if len(self.losses) > 1:  # training rate after the first step (read by the benchmark)
            seconds = time.time() - self.t_first
            metrics["images_per_s"] = (state.images_seen - self.images_first) / seconds
        if self.rank != 0:
            ray.train.report(metrics)
            return
        if self.job.train.num_workers == 0:
            ray.train.report(metrics, checkpoint=save_local_checkpoint(self.job, state))
            return
        with tempfile.TemporaryDirectory() as d:
            torch.save(state.state_dict(), Path(d) / STATE_FILE)
            ray.train.report(metrics, checkpoint=Checkpoint.from_directory(d))


def save_local_checkpoint(job: TrainJob, state: TrainState, keep: int = 2) -> Checkpoint:
    """Local mode: write the train state where Ray Train would have put it
    (`<storage>/<stage>/checkpoint_<images>/`), keeping the newest `keep`."""
    stage_dir = Location.of(job.storage) / job.stage
    folder = stage_dir / f"checkpoint_{state.images_seen:012d}"
    buffer = io.BytesIO()
    torch.save(state.state_dict(), buffer)
    (folder / STATE_FILE).write_bytes(buffer.getvalue())
    older = [
        d
        for d in stage_dir.children()
        if d.name.startswith("checkpoint_") and d.name != folder.name
    ]
    for d in older[: max(len(older) - (keep - 1), 0)]:
        d.remove()
    return Checkpoint(folder.path, filesystem=folder.fs)


def train_loop_per_worker(config: dict) -> None:
    """Ray Train worker: EDM training of `config["job"]` (a `TrainJob`) for `job.kimg`."""
    job: TrainJob = config["job"]
    train = job.train
    if train.threads > 0:
        torch.set_num_threads(train.threads)
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    device = ray.train.torch.get_device()

    resume = restore_point(job)
    carried = init = None
    if resume is None and job.init_state:
        carried = latest_state(Location.of(job.init_state))
        if carried is None:
            raise RuntimeError(f"{job.stage}: no train state to continue in {job.init_state}")
    elif resume is None and job.init_checkpoint:
        init = load_denoiser_at(job.init_checkpoint)[0]
    state = TrainState(job.network, train, job.seed, job.stage, init).to(device)
    if resume is not None:
        state.load_state_dict(resume)
        if rank == 0:
            kimg = state.images_seen / 1000
            print(f"{job.stage}: resumed from its checkpoint at {kimg:.1f} kimg", flush=True)
    elif carried is not None:
        state.continue_from(carried)
    model = ray.train.torch.prepare_model(state.model) if world > 1 else state.model

    plan: IngestPlan | None = config.get("ingest")  # None: memory (the benchmark's jobs)
    size = train.batch_size // world
    if plan is None or plan.mode == "memory":
        items = [s.load(job.item_shape) for s in job.sets]
        sizes = [len(x) for x in items]
        sets = [torch.from_numpy(x).to(device) for x in items]
        feeds = []

        def draw(weights: np.ndarray, step: int) -> torch.Tensor:
            return draw_batch(sets, weights, size, job.seed, job.stage, rank, step)
    else:
        # A resumed stage continues with other draws than those before its checkpoint.
        start = state.images_seen // train.batch_size
        feeds = open_feeds(
            job.sets, plan, job.item_shape, device, job.seed, job.stage, rank, start_step=start
        )
        sizes = [f.size for f in feeds]

        def draw(weights: np.ndarray, step: int) -> torch.Tensor:
            return stream_batch(feeds, weights, size, job.seed, job.stage, rank, step)

    weights = set_weights(sizes, [s.weight for s in job.sets])
    loss_fn = train_loss(train, job.network)
    bf16 = train.bf16 and device.type == "cuda"  # autocast; weights and Adam stay float32
    reporter = Reporter(job, rank, state, resume["images_seen"] if resume else None)
    reporter.set_sizes = sizes

    try:
        while state.images_seen < job.kimg * 1000:
            x = draw(weights, state.images_seen // train.batch_size)
            reporter.step(train_step(state, model, loss_fn, x, train, bf16), state)
    finally:
        for feed in feeds:
            feed.close()
    if not reporter.losses:  # resumed from a state that had already finished: report it again
        reporter.report(state)


def run_train(job: TrainJob, out_path: Where, log=print, **extra) -> dict:
    """Run one train stage to completion and write its EMA denoiser (with `extra` in the
    checkpoint) to `out_path`."""
    plan, why = plan_ingest(job.sets, job.train, job.item_shape)
    workers = job.train.num_workers
    where = f"with {workers} worker(s)" if workers else "in local mode"
    log(f"{job.stage}: {job.kimg} kimg on {[str(s) for s in job.sets]} {where}")
    log(f"{job.stage}: {why}")
    storage = Location.of(job.storage)
    t0 = time.time()
    datasets = None
    if plan.mode == "stream":
        import ray

        if ray.is_initialized():
            chosen = "as configured" if job.train.ingest == "stream" else "chosen by auto"
            check_stream_room(job.train, ray.cluster_resources().get("CPU", 0), chosen)
        # A restarted driver: the files come in another order than before the checkpoint.
        done = latest_state(storage / job.stage)
        start = done["images_seen"] // job.train.batch_size if done else 0
        datasets = stream_datasets(job.sets, plan, job.item_shape, job.seed, job.stage, start)
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config={"job": job, "ingest": plan},
        datasets=datasets,
        scaling_config=ScalingConfig(
            num_workers=job.train.num_workers,
            use_gpu=job.train.use_gpu,
            resources_per_worker={
                "CPU": job.train.cpus_per_worker,
                **({"GPU": 1} if job.train.use_gpu else {}),
            },
        ),
        run_config=RunConfig(
            name=job.stage,
            storage_path=storage.path,
            storage_filesystem=None if storage.local is not None else storage.fs,
            failure_config=FailureConfig(max_failures=job.train.max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=2),
        ),
    )
    result = trainer.fit()
    if result.checkpoint is None:
        raise RuntimeError(f"{job.stage}: training finished without a checkpoint")
    with result.checkpoint.as_directory() as d:
        path = Path(d) / STATE_FILE
        state = torch_load(path, f"train state: {path} is not an sfbd train state")
    if state["images_seen"] < job.kimg * 1000:
        raise RuntimeError(
            f"{job.stage}: last checkpoint has {state['images_seen']} images, "
            f"expected {job.kimg * 1000:.0f}"
        )
    denoiser = build_denoiser(job.network)
    denoiser.load_state_dict(state["ema"])
    seconds = time.time() - t0
    summary = {
        "stage": job.stage,
        "kimg": job.kimg,
        "seconds": seconds,
        "images_per_s": job.kimg * 1000 / seconds,
        "loss": result.metrics.get("loss"),
        "resumed_from_kimg": result.metrics.get("resumed_from_kimg"),
        "set_sizes": result.metrics.get("set_sizes"),
        "loop_images_per_s": result.metrics.get("images_per_s"),  # after the first step
    }
    save_denoiser_at(out_path, denoiser, job.network, stage=job.stage, **extra)
    log(f"{job.stage}: done in {seconds:.1f}s, final loss {summary['loss']:.4f}")
    return summary
