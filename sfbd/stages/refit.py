"""The train stage (Ray Train): pretraining on the clean set and SFBD's refits.

One `TorchTrainer` loop serves both. It trains the EDM loss with Adam, learning-rate warm-up
and an EMA, for a fixed number of images (kimg), so every stage ends by itself. A refit
starts from the previous iteration's EMA weights. Checkpoints go through
`ray.train.report(checkpoint=...)` every `checkpoint_kimg`; a lost worker resumes from the
last one (`FailureConfig`), and a restarted driver resumes from it too, since Ray Train V2
restores a run started again with the same name and storage path.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import tempfile
import time
from pathlib import Path

import numpy as np
import ray.train
import ray.train.torch
import torch
from ray.train import Checkpoint, CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
from ray.train.torch import TorchTrainer

from sfbd.config import TrainConfig
from sfbd.data.store import table_items
from sfbd.diffusion.ema import EMA, ema_beta
from sfbd.diffusion.loss import EDMLoss
from sfbd.diffusion.networks import NetworkConfig, build_denoiser
from sfbd.runfiles import Where, load_denoiser_at, parquet_files, read_parquet, save_denoiser_at
from sfbd.storage import Location

STATE_FILE = "train_state.pt"


def load_items(directory: str, item_shape: tuple[int, ...]) -> np.ndarray:
    """Every item in a folder of (id, x) Parquet files, ordered by id; the files are checked
    against the digests recorded when they were written."""
    ids, x = table_items(read_parquet(parquet_files(directory)), item_shape)
    return x[np.argsort(ids)]


def load_set(spec: dict, item_shape: tuple[int, ...]) -> np.ndarray:
    """The items of one train set, from either kind of spec:

    - `{"path": folder}`: a folder of (id, x) Parquet files the pipeline wrote (the clean split,
      a denoised set, the noisy split);
    - `{"source": dataset spec, "root", "limit", "num", "seed", "count"}`: the data set read
      straight from where it lives (`load_source`, train split). This serves the all-clean
      baseline, which trains on the originals of the noisy part as well: the pipeline never
      writes those anywhere, so the worker loads them into its memory only. `count`, when
      given, is the number of items the prepared data was made from, checked here.
    """
    if "path" in spec:
        return load_items(spec["path"], item_shape)
    from sfbd.data.sources import load_source

    src = load_source(
        spec["source"],
        root=spec.get("root"),
        train=True,
        limit=spec.get("limit"),
        num=spec.get("num", 20000),
        seed=spec.get("seed", 0),
    )
    if src.item_shape != tuple(item_shape) or spec.get("count", len(src.items)) != len(src.items):
        raise ValueError(
            f"data: {spec['source']} now holds {len(src.items)} items of shape "
            f"{src.item_shape}; the prepared data was made from {spec.get('count')} of "
            f"shape {tuple(item_shape)}"
        )
    return src.items


def latest_state(stage_dir: Where) -> dict | None:
    """The newest readable train state among a stage's reported checkpoints, if any.

    Ray Train V2 restores a run started again under the same name, but only from what its
    controller had recorded; reading the checkpoint folders themselves also covers a driver
    killed between a checkpoint's upload and that record. Unreadable (partly written)
    checkpoints are skipped.
    """
    folders = [
        d
        for d in Location.of(stage_dir).children()
        if d.name.startswith("checkpoint_") and d.is_dir()
    ]
    for d in reversed(folders):
        try:
            data = (d / STATE_FILE).read_bytes()
            return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
        except Exception:
            continue
    return None


def _step_seed(seed: int, stage: str, rank: int, step: int) -> int:
    digest = hashlib.blake2b(f"{seed}/{stage}/{rank}/{step}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & ((1 << 63) - 1)


def draw_batch(
    sets_t: list[torch.Tensor],
    weights: np.ndarray,
    size: int,
    seed: int,
    stage: str,
    rank: int,
    step: int,
) -> torch.Tensor:
    """One rank's batch of a step: items drawn from the sets by `weights`, reproducibly from
    (seed, stage, rank, step); also seeds the step's EDM noise."""
    rng = np.random.default_rng(_step_seed(seed, stage, rank, step))
    torch.manual_seed(_step_seed(seed, stage + "/noise", rank, step))
    which = rng.choice(len(sets_t), size=size, p=weights)
    device = sets_t[0].device
    parts = [
        sets_t[k][
            torch.from_numpy(rng.integers(0, len(sets_t[k]), int((which == k).sum()))).to(device)
        ]
        for k in range(len(sets_t))
        if (which == k).any()
    ]
    return torch.cat(parts)


def train_step(
    model, ddp_model, opt, ema, loss_fn, x, train: TrainConfig, images_seen: int, bf16: bool
) -> torch.Tensor:
    """One EDM training step: warm-up learning rate, loss, backward, gradient clean-up and
    clipping, Adam, EMA (EDM's training loop). Returns the loss."""
    warm = min(images_seen / max(train.warmup_kimg * 1000, 1e-8), 1.0)
    for group in opt.param_groups:
        group["lr"] = train.lr * max(warm, 1e-3)
    opt.zero_grad(set_to_none=True)
    with torch.autocast(x.device.type, torch.bfloat16, enabled=bf16):
        loss = loss_fn(ddp_model, x).mean()
    loss.backward()
    for p in model.parameters():
        if p.grad is not None:
            torch.nan_to_num(p.grad, nan=0, posinf=1e5, neginf=-1e5, out=p.grad)
    if train.grad_clip > 0:
        torch.nn.utils.clip_grad_norm_(model.parameters(), train.grad_clip)
    opt.step()
    seen = images_seen + train.batch_size
    ema.update(
        model,
        ema_beta(train.batch_size, train.ema_halflife_kimg * 1000, train.ema_rampup_ratio, seen),
    )
    return loss


def train_loop_per_worker(cfg: dict) -> None:
    """Ray Train worker function. `cfg`: train, network, sets, item_shape, kimg, stage, seed,
    init_checkpoint (EMA weights to start from, or None)."""
    train = TrainConfig(**cfg["train"])
    if train.threads > 0:
        torch.set_num_threads(train.threads)
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    device = ray.train.torch.get_device()
    net_cfg = NetworkConfig(**cfg["network"])
    # The same initial weights on every rank and in every run with this seed.
    torch.manual_seed(_step_seed(cfg["seed"], cfg["stage"] + "/init", 0, 0))
    model = build_denoiser(net_cfg)
    total_images = int(cfg["kimg"] * 1000)

    # Resume from the newer of what Ray Train recorded (a worker restarted by FailureConfig)
    # and the stage's own storage folder (a restarted driver; or a checkpoint uploaded just
    # before the worker died, which the controller had not recorded yet).
    candidates = [latest_state(cfg["storage"])]
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as d:
            candidates.append(
                torch.load(Path(d) / STATE_FILE, map_location="cpu", weights_only=True)
            )
    candidates = [c for c in candidates if c is not None]
    resume_state = max(candidates, key=lambda c: c["images_seen"]) if candidates else None
    if resume_state is not None:
        model.load_state_dict(resume_state["model"])
        if rank == 0:
            print(
                f"{cfg['stage']}: resumed from its checkpoint at "
                f"{resume_state['images_seen'] / 1000:.1f} kimg",
                flush=True,
            )
    elif cfg["init_checkpoint"]:
        init, _, _ = load_denoiser_at(cfg["init_checkpoint"])
        model.load_state_dict(init.state_dict())
    ema = EMA(model)
    if resume_state is not None:
        ema.model.load_state_dict(resume_state["ema"])
    model.to(device)
    ema.model.to(device)
    opt = torch.optim.Adam(model.parameters(), lr=train.lr, betas=(0.9, 0.999), eps=1e-8)
    if resume_state is not None:
        opt.load_state_dict(resume_state["optimizer"])
    images_seen = resume_state["images_seen"] if resume_state else 0
    ddp_model = ray.train.torch.prepare_model(model) if world > 1 else model

    sets = [load_set(s, tuple(cfg["item_shape"])) for s in cfg["sets"]]
    weights = np.array(
        [
            s["weight"] if s["weight"] is not None else len(x)
            for s, x in zip(cfg["sets"], sets, strict=True)
        ],
        dtype=np.float64,
    )
    weights /= weights.sum()
    sets_t = [torch.from_numpy(x).to(device) for x in sets]
    bf16 = train.bf16 and device.type == "cuda"  # autocast; weights and Adam stay float32
    loss_fn = EDMLoss(P_mean=train.P_mean, P_std=train.P_std, sigma_data=net_cfg.sigma_data)
    local_batch = train.batch_size // world
    ckpt_every = int(train.checkpoint_kimg * 1000)
    log_every = int(train.log_kimg * 1000)
    losses: list[float] = []
    t_last, images_last = time.time(), images_seen
    progress = None
    if rank == 0 and cfg.get("metric_tags"):
        from sfbd.telemetry import kimg_trained

        progress = kimg_trained()
    t_first, images_first = 0.0, images_seen  # set when this run's first step (warm-up) ends

    def report(loss_value: float) -> None:
        """Every rank reports; rank 0 attaches the checkpoint (model, EMA, optimizer)."""
        metrics = {
            "kimg": images_seen / 1000,
            "loss": loss_value,
            "images_seen": images_seen,
            "set_sizes": [len(x) for x in sets],
        }
        if resume_state is not None:  # this worker group restarted from a checkpoint
            metrics["resumed_from_kimg"] = resume_state["images_seen"] / 1000
        if len(losses) > 1:  # training rate after the first step (read by jobs/benchmark.py)
            metrics["images_per_s"] = (images_seen - images_first) / (time.time() - t_first)
        if rank != 0:
            ray.train.report(metrics)
            return
        state = {
            "model": model.state_dict(),
            "ema": ema.model.state_dict(),
            "optimizer": opt.state_dict(),
            "images_seen": images_seen,
            "loss": loss_value,
        }
        with tempfile.TemporaryDirectory() as d:
            torch.save(state, Path(d) / STATE_FILE)
            ray.train.report(metrics, checkpoint=Checkpoint.from_directory(d))

    while images_seen < total_images:
        step = images_seen // train.batch_size
        x = draw_batch(sets_t, weights, local_batch, cfg["seed"], cfg["stage"], rank, step)
        loss = train_step(model, ddp_model, opt, ema, loss_fn, x, train, images_seen, bf16)
        images_seen += train.batch_size
        losses.append(loss.item())
        if len(losses) == 1:
            t_first, images_first = time.time(), images_seen

        done = images_seen >= total_images
        if rank == 0 and (
            images_seen // log_every > (images_seen - train.batch_size) // log_every or done
        ):
            rate = (images_seen - images_last) / max(time.time() - t_last, 1e-9)
            print(
                f"{cfg['stage']}: {images_seen / 1000:.1f}/{total_images / 1000:.1f} kimg, "
                f"loss {np.mean(losses[-50:]):.4f}, {rate:.0f} images/s",
                flush=True,
            )
            t_last, images_last = time.time(), images_seen
            if progress is not None:
                progress.set(images_seen / 1000, tags=cfg["metric_tags"])
        crossed = images_seen // ckpt_every > (images_seen - train.batch_size) // ckpt_every
        if crossed or done:
            report(float(np.mean(losses[-50:])))
    if not losses:  # resumed from a state that had already finished: report it once more
        report(float(resume_state.get("loss", float("nan"))))


def run_train(
    stage: str,
    out_path: Where,
    storage: Where,
    train: TrainConfig,
    network: NetworkConfig,
    sets: list[dict],
    item_shape: tuple[int, ...],
    kimg: float,
    seed: int,
    init_checkpoint: Where | None = None,
    extra: dict | None = None,
    log=print,
    metric_tags: dict | None = None,
) -> dict:
    """Run one train stage to completion and write the EMA denoiser to `out_path`."""
    names = [s.get("path") or f"source {s['source']}" for s in sets]
    log(f"{stage}: {kimg} kimg on {names} with {train.num_workers} worker(s)")
    storage = Location.of(storage)
    t0 = time.time()
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config={
            "train": dataclasses.asdict(train),
            "network": dataclasses.asdict(network),
            "sets": sets,
            "item_shape": list(item_shape),
            "kimg": kimg,
            "stage": stage,
            "seed": seed,
            "init_checkpoint": str(init_checkpoint) if init_checkpoint else None,
            "storage": str(storage / stage),
            "metric_tags": metric_tags,
        },
        scaling_config=ScalingConfig(
            num_workers=train.num_workers,
            use_gpu=train.use_gpu,
            resources_per_worker={
                "CPU": train.cpus_per_worker,
                **({"GPU": 1} if train.use_gpu else {}),
            },
        ),
        run_config=RunConfig(
            name=stage,
            storage_path=storage.path,
            storage_filesystem=None if storage.local is not None else storage.fs,
            failure_config=FailureConfig(max_failures=train.max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=2),
        ),
    )
    result = trainer.fit()
    if result.checkpoint is None:
        raise RuntimeError(f"{stage}: training finished without a checkpoint")
    with result.checkpoint.as_directory() as d:
        state = torch.load(Path(d) / STATE_FILE, map_location="cpu", weights_only=True)
    if state["images_seen"] < kimg * 1000:
        raise RuntimeError(
            f"{stage}: last checkpoint has {state['images_seen']} images, "
            f"expected {kimg * 1000:.0f}"
        )
    denoiser = build_denoiser(network)
    denoiser.load_state_dict(state["ema"])
    seconds = time.time() - t0
    summary = {
        "stage": stage,
        "kimg": kimg,
        "seconds": seconds,
        "images_per_s": kimg * 1000 / seconds,
        "loss": result.metrics.get("loss"),
        "resumed_from_kimg": result.metrics.get("resumed_from_kimg"),
        "set_sizes": result.metrics.get("set_sizes"),
    }
    save_denoiser_at(out_path, denoiser, network, stage=stage, **(extra or {}))
    log(f"{stage}: done in {seconds:.1f}s, final loss {summary['loss']:.4f}")
    return summary
