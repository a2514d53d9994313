"""EDM training, without Ray: the train configuration, the training state (model, EMA, Adam,
images seen) with its save and restore, the reproducible batch draw, and one training step
(Karras et al. 2022, `training/training_loop.py`; the loss is Eq. 2 with Sec. 5's
preconditioning). Ray Train's worker (`sfbd.stages.refit`) only wires these to a cluster."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, replace

import numpy as np
import torch

from sfbd.diffusion.augment import AugmentPipe
from sfbd.diffusion.ema import EMA, ema_beta
from sfbd.diffusion.loss import EDMLoss
from sfbd.diffusion.networks import EDMPrecond, NetworkConfig, build_denoiser


@dataclass
class TrainConfig:
    """Pretraining and refits. Durations and EMA in thousands of images (kimg)."""

    batch_size: int = 128  # global batch, split across workers
    lr: float = 1e-3
    warmup_kimg: float = 1.0
    ema_halflife_kimg: float = 0.5
    ema_rampup_ratio: float | None = 0.05
    # Refits restart their image count, so the ramp-up caps their EMA half-life anew (as the
    # authors' code, which starts a new EDM run per iteration); false: the whole half-life.
    refit_ema_rampup: bool = True
    # How a refit starts (docs/math.md): "ema", the previous stage's EMA weights with a fresh
    # Adam, warm-up and image count (the authors' code); "continue", the previous stage's
    # whole train state (raw weights, Adam's moments, the EMA) and its image count carried on,
    # so no new warm-up or EMA ramp-up: the refit is more training of the same run.
    refit_start: str = "ema"
    refit_lr: float | None = None  # the refits' learning rate; None: lr
    pretrain_kimg: float = 20.0
    refit_kimg: float = 10.0
    # A checkpoint of sfbd (a run's checkpoints/iter_KKK.pt, a baseline's .pt) that
    # pretraining starts from, as a refit starts from the previous EMA (EDM's --transfer);
    # with pretrain_kimg 0 it is iteration 0 as it is: variants share one pretraining.
    init: str | None = None
    checkpoint_kimg: float = 5.0  # Ray Train checkpoint interval (resume granularity)
    log_kimg: float = 2.0
    clean_weight: float | None = None  # share of clean items in refit batches; None: by set size
    num_workers: int = 1  # DDP workers; 0: Ray Train's local mode (in the orchestrator)
    use_gpu: bool = False
    bf16: bool = True  # bf16 autocast of the forward/backward pass on GPUs (no effect on CPUs)
    cpus_per_worker: float = 1.0
    threads: int = 0  # torch threads per worker; 0: Ray's default (OMP_NUM_THREADS)
    max_failures: int = 3
    grad_clip: float = 0.0  # max global gradient norm per step; 0: no clipping (EDM)
    # Probability of each geometric augmentation per image (sfbd.diffusion.augment); 0: none.
    augment: float = 0.0
    P_mean: float = -1.2
    P_std: float = 1.2
    # How workers hold the train sets (sfbd.stages.ingest): memory (each loads them whole onto
    # its device), stream (Ray Data feeds them from their Parquet files), auto (memory when
    # they fit ingest_budget_gb, as float32, else stream).
    ingest: str = "auto"
    ingest_budget_gb: float = 2.0  # per worker; also bounds the stream's buffers


INGEST_MODES = ("auto", "memory", "stream")
REFIT_STARTS = ("ema", "continue")


def stage_train_config(train: TrainConfig, iteration: int) -> TrainConfig:
    """The train settings of pretraining (iteration 0) or refit `iteration`: a refit at
    `train.refit_lr` when set, and without the EMA ramp-up when `train.refit_ema_rampup` is
    false (Algorithm 1's denoiser update fine-tunes the previous EMA weights, which the ramp-up
    would let the first steps overwrite)."""
    if iteration == 0:
        return train
    if train.refit_lr is not None:
        train = replace(train, lr=train.refit_lr)
    if not train.refit_ema_rampup:
        train = replace(train, ema_rampup_ratio=None)
    return train


def check_refit_start(train: TrainConfig) -> None:
    """train.refit_start and train.refit_lr, with one-line errors naming the key."""
    if train.refit_start not in REFIT_STARTS:
        raise ValueError(
            f"config: train.refit_start = {train.refit_start!r}; allowed: {', '.join(REFIT_STARTS)}"
        )
    if train.refit_lr is not None and not train.refit_lr > 0:
        raise ValueError(f"config: train.refit_lr = {train.refit_lr!r}; must be > 0, or null (lr)")


def check_ingest(train: TrainConfig) -> None:
    """train.ingest and train.ingest_budget_gb, with one-line errors naming the key."""
    if train.ingest not in INGEST_MODES:
        raise ValueError(
            f"config: train.ingest = {train.ingest!r}; allowed: {', '.join(INGEST_MODES)}"
        )
    if not train.ingest_budget_gb > 0:
        raise ValueError(
            f"config: train.ingest_budget_gb = {train.ingest_budget_gb!r}; must be > 0"
        )


def train_loss(train: TrainConfig, network: NetworkConfig) -> EDMLoss:
    """The EDM loss of a train stage, with the augmentation pipe when `train.augment` > 0
    (none at 0, so that the step's random stream is that of a run without augmentation)."""
    pipe = AugmentPipe(train.augment) if train.augment > 0 else None
    return EDMLoss(train.P_mean, train.P_std, network.sigma_data, augment_pipe=pipe)


def step_seed(seed: int, stage: str, rank: int, step: int) -> int:
    """A 63-bit seed that depends on (seed, stage, rank, step) alone."""
    digest = hashlib.blake2b(f"{seed}/{stage}/{rank}/{step}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & ((1 << 63) - 1)


class TrainState:
    """What a training run carries from step to step and across restarts."""

    def __init__(
        self,
        network: NetworkConfig,
        train: TrainConfig,
        seed: int,
        stage: str,
        init: EDMPrecond | None = None,
    ):
        # The same initial weights on every rank and in every run with this seed.
        torch.manual_seed(step_seed(seed, stage + "/init", 0, 0))
        self.model = build_denoiser(network)
        if init is not None:
            self.model.load_state_dict(init.state_dict())
        self.ema = EMA(self.model)
        self.optimizer = torch.optim.Adam(
            self.model.parameters(), lr=train.lr, betas=(0.9, 0.999), eps=1e-8
        )
        self.images_seen = 0  # by this stage
        self.images_before = 0  # by the stages whose state this one continues
        self.loss = float("nan")

    def to(self, device: torch.device) -> TrainState:
        self.model.to(device)
        self.ema.model.to(device)
        return self

    def state_dict(self) -> dict:
        return {
            "model": self.model.state_dict(),
            "ema": self.ema.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "images_seen": self.images_seen,
            "images_before": self.images_before,
            "loss": self.loss,
        }

    def load_state_dict(self, state: dict) -> None:
        """Restore after `to(device)`: Adam moves its state to where the parameters are."""
        self.model.load_state_dict(state["model"])
        self.ema.model.load_state_dict(state["ema"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.images_seen = int(state["images_seen"])
        self.images_before = int(state.get("images_before", 0))
        self.loss = float(state.get("loss", float("nan")))

    def continue_from(self, state: dict) -> None:
        """Start a stage from the end of another one (`train.refit_start: continue`): its
        weights, EMA and Adam's moments, with its images counted as trained before."""
        self.load_state_dict(state)
        self.images_before += self.images_seen
        self.images_seen = 0

    @property
    def images_total(self) -> int:
        """Images of the whole run of train states: what warm-up and EMA ramp-up count."""
        return self.images_before + self.images_seen


def step_rng(seed: int, stage: str, rank: int, step: int) -> np.random.Generator:
    """The generator of one rank's draws at a step, from (seed, stage, rank, step); also
    seeds the step's EDM noise (torch's global generator)."""
    torch.manual_seed(step_seed(seed, stage + "/noise", rank, step))
    return np.random.default_rng(step_seed(seed, stage, rank, step))


def draw_batch(
    sets: list[torch.Tensor],
    weights: np.ndarray,
    size: int,
    seed: int,
    stage: str,
    rank: int,
    step: int,
) -> torch.Tensor:
    """One rank's batch of a step: items drawn from the sets by `weights`, reproducibly from
    (seed, stage, rank, step); also seeds the step's EDM noise."""
    rng = step_rng(seed, stage, rank, step)
    which = rng.choice(len(sets), size=size, p=weights)
    device = sets[0].device
    parts = [
        sets[k][torch.from_numpy(rng.integers(0, len(sets[k]), int((which == k).sum()))).to(device)]
        for k in range(len(sets))
        if (which == k).any()
    ]
    return torch.cat(parts)


def mix_counts(weights: np.ndarray, size: int, seed: int, stage: str, step: int) -> np.ndarray:
    """How many of a step's `size` items come from each set, drawn by `weights` from (seed,
    stage, step) alone: every rank draws the same counts, so that the ranks' streams of a set
    end their passes at the same step (Ray Data starts a split's new pass on all at once)."""
    rng = np.random.default_rng(step_seed(seed, stage + "/mix", 0, step))
    return np.bincount(rng.choice(len(weights), size=size, p=weights), minlength=len(weights))


def train_step(
    state: TrainState,
    model: torch.nn.Module,
    loss_fn: EDMLoss,
    x: torch.Tensor,
    train: TrainConfig,
    bf16: bool,
) -> float:
    """One EDM training step on `x`: warm-up learning rate, loss, backward, gradient clean-up
    and clipping, Adam, EMA. `model` is what runs the forward pass (`state.model`, or its DDP
    wrapper). Advances `state.images_seen` by the global batch; returns the loss."""
    warm = min(state.images_total / max(train.warmup_kimg * 1000, 1e-8), 1.0)
    for group in state.optimizer.param_groups:
        group["lr"] = train.lr * max(warm, 1e-3)
    state.optimizer.zero_grad(set_to_none=True)
    with torch.autocast(x.device.type, torch.bfloat16, enabled=bf16):
        loss = loss_fn(model, x).mean()
    loss.backward()
    for p in state.model.parameters():
        if p.grad is not None:
            torch.nan_to_num(p.grad, nan=0, posinf=1e5, neginf=-1e5, out=p.grad)
    if train.grad_clip > 0:
        torch.nn.utils.clip_grad_norm_(state.model.parameters(), train.grad_clip)
    state.optimizer.step()
    state.images_seen += train.batch_size
    beta = ema_beta(
        train.batch_size, train.ema_halflife_kimg * 1000, train.ema_rampup_ratio, state.images_total
    )
    state.ema.update(state.model, beta)
    return loss.item()


def set_weights(sizes: list[int], weights: list[float | None]) -> np.ndarray:
    """Draw probabilities of the train sets: a set's weight, or its size where unset."""
    w = np.array(
        [size if weight is None else weight for size, weight in zip(sizes, weights, strict=True)],
        dtype=np.float64,
    )
    return w / w.sum()


def train_on_sets(
    state: TrainState,
    sets: list[np.ndarray],
    kimg: float,
    train: TrainConfig,
    network: NetworkConfig,
    seed: int,
    stage: str,
) -> None:
    """`kimg` more images of EDM training of `state` in this process, on `sets` mixed by size,
    drawn as the train stage draws them (rank 0 of one): the stage's loop without Ray, for
    tests and studies that need many small trainings."""
    loss_fn = train_loss(train, network)
    tensors = [torch.from_numpy(s) for s in sets]
    weights = set_weights([len(s) for s in sets], [None] * len(sets))
    end = state.images_seen + kimg * 1000
    while state.images_seen < end:
        step = state.images_seen // train.batch_size
        x = draw_batch(tensors, weights, train.batch_size, seed, stage, 0, step)
        train_step(state, state.model, loss_fn, x, train, False)
