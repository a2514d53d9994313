"""Benchmark the Ray stages against plain PyTorch loops on one device (`sfbd benchmark`).

The device is the one Ray hands out: one GPU when the cluster has GPUs (bf16 autocast in the
denoise pass, as the stage does), else CPUs. Every timed process, Ray's or plain, gets the
same allotment (`cpus` CPUs, torch threads set to `threads`, one GPU where there are GPUs);
the plain loops run as Ray tasks only so that they land on such a process.

(a) Backward denoising. N noisy observations y = x + tau * eps are written as Parquet with
the project's store, and a denoiser of the preset (fresh weights) as a checkpoint.
- Ray Data: the stage itself, `run_denoise` (shards read by fractional-CPU Ray Data tasks ->
  map_batches(DenoiseBatch, ActorPoolStrategy of one actor) -> write_parquet -> id check ->
  publish), given as its `batch_class` a subclass of `DenoiseBatch` that only records when
  each call starts and ends and how many network evaluations it made (the same `__init__`
  and `__call__` run).
- Plain: the same Parquet rows read into memory beforehand, the same checkpoint file loaded
  onto the device, `backward_denoise` called under the same autocast on batches of the same
  size, each result copied back to host memory (optionally with `torch.compile`).
- Warm-up, excluded the same way from both: the end time of every batch is recorded, and the
  rate is the images of batches 2..n over the time from the end of batch 1 to the end of
  batch n. Ray start-up, process and actor start-up, checkpoint loading, the first CUDA
  calls and compilation, and the whole first batch fall outside that window; everything the
  Ray pipeline does for batches 2..n (batching, Arrow conversion, scheduling, writing, waits
  for input) falls inside it; on both paths the shards are read before the first batch. The
  stage's wall time including its start-up is reported beside it, and `busy`, the share of
  the window spent inside the calls (for Ray, the rest is time the actor waited between
  batches). Network evaluations are counted
  by `CountingDenoiser` (the Heun ODE with n levels makes 2n - 1 per image).
(b) Training. Ray Train: a `TorchTrainer` with one worker running the project's
  `train_loop_per_worker` for T steps; its rate is the loop's reported `images_per_s`
  (images after its first step over the time since that step ended). Plain: the same
  training step (`sfbd.diffusion.training`: batch drawn on the device, EDM loss, backward,
  gradient clean-up, Adam with warm-up, EMA update, loss read back) timed with the same
  first-step exclusion, under the same bf16 autocast as the refit stage on GPUs.
(c) FLOPs. `FlopCounterMode` counts one forward of the denoiser at the batch size on meta
  tensors (matrix products, convolutions and attention; element-wise work is not counted);
  divided by the batch size it is the cost of one image-evaluation. Achieved TFLOP/s = that
  cost x timed evaluations / timed seconds, compared with the GPU's bf16 dense peak from a
  small table of datasheet figures (CPUs and unlisted GPUs: peak unknown).

With `compile` the plain loop is timed both eagerly and compiled, and the stage runs compiled
(`denoise.compile`); the Ray ratio compares the compiled stage with the compiled loop, and the
"compiled DDPM++ >= 40% of bf16 peak" target is judged on the compiled plain row.
"""

from __future__ import annotations

import dataclasses
import math
import platform
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import ray
import torch
from ray.actor import ActorHandle
from torch.utils.flop_counter import FlopCounterMode

from sfbd.config import DenoiseConfig
from sfbd.data.prepare import DATA_FORMAT
from sfbd.data.split import observe
from sfbd.data.store import read_manifest, read_split, write_manifest, write_shards
from sfbd.diffusion.networks import PRESETS, NetworkConfig, build_denoiser, count_parameters
from sfbd.diffusion.samplers import CountingDenoiser, backward_denoise, network_evaluations
from sfbd.diffusion.training import (
    TrainConfig,
    TrainState,
    draw_batch,
    set_weights,
    train_loss,
    train_step,
)
from sfbd.runfiles import load_denoiser_at, save_denoiser_at
from sfbd.stages.denoise import DenoiseBatch, run_denoise
from sfbd.stages.evaluate import item_shape
from sfbd.stages.refit import TrainJob, TrainSet, train_loop_per_worker
from sfbd.storage import Location

TARGETS = {"ray_data_ratio": 0.95, "ray_train_ratio": 0.95, "compiled_ddpmpp_peak": 0.40}

# bf16 dense (no sparsity) tensor-core peaks from vendor datasheets, TFLOP/s, matched as
# substrings of torch.cuda.get_device_name(); more specific names first.
BF16_PEAK_TFLOPS: tuple[tuple[str, float], ...] = (
    ("H200 NVL", 835.0),
    ("H200", 989.0),  # SXM; also GH200
    ("H100 NVL", 835.0),
    ("H100 PCIe", 756.0),
    ("H100", 989.0),  # SXM ("H100 80GB HBM3")
    ("B200", 2250.0),
    ("A100", 312.0),
    ("L40S", 362.0),
    ("L40", 181.0),
    ("L4", 121.0),
    ("A10", 125.0),
    ("RTX 4090", 165.0),
)


# ---------------------------------------------------------------------------------------------
# Timing


@dataclass
class Call:
    """One timed unit of work: a denoise batch or a train step (wall-clock seconds)."""

    start: float
    end: float
    images: int
    evaluations: int = 0


def steady_state(calls: list[Call]) -> dict:
    """Rates after warm-up: work of calls 2..n over the time from the end of call 1 to the end
    of call n. Totals cover all calls."""
    if len(calls) < 2:
        raise ValueError(f"need at least 2 batches or steps to exclude the first, got {len(calls)}")
    calls = sorted(calls, key=lambda c: c.end)
    first, rest = calls[0], calls[1:]
    seconds = calls[-1].end - first.end
    timed_images = sum(c.images for c in rest)
    timed_evaluations = sum(c.evaluations for c in rest)
    return {
        "images": sum(c.images for c in calls),
        "evaluations": sum(c.evaluations for c in calls),
        "batches": len(calls),
        "warmup_seconds": first.end - first.start,
        "timed_images": timed_images,
        "timed_evaluations": timed_evaluations,
        "seconds": seconds,
        # Share of the window spent inside the timed calls; the rest is time between them.
        "busy_fraction": sum(c.end - c.start for c in rest) / seconds,
        "images_per_s": timed_images / seconds,
        "evaluations_per_s": timed_evaluations / seconds,
    }


@ray.remote(num_cpus=0)
class CallLog:
    """Collects the `Call` records the Ray Data actor sends (as dicts)."""

    def __init__(self):
        self.calls: list[dict] = []

    def add(self, call: dict) -> None:
        self.calls.append(call)

    def get(self) -> list[dict]:
        return list(self.calls)


def timed_denoise_class(log: ActorHandle) -> type[DenoiseBatch]:
    """`DenoiseBatch` with each call's start, end, rows and evaluations sent to the
    `CallLog` actor `log`: the `batch_class` of the timed `run_denoise`."""

    class TimedDenoiseBatch(DenoiseBatch):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.denoiser = CountingDenoiser(self.denoiser)

        def __call__(self, batch):
            start, before = time.time(), self.denoiser.evaluations
            out = super().__call__(batch)
            call = Call(start, time.time(), out.num_rows, self.denoiser.evaluations - before)
            log.add.remote(dataclasses.asdict(call))
            return out

    return TimedDenoiseBatch


def collect_calls(log: ActorHandle, images: int, timeout: float = 30.0) -> list[Call]:
    """The calls `log` received, once they account for `images` rows (sends are async)."""
    deadline = time.time() + timeout
    while True:
        calls = [Call(**c) for c in ray.get(log.get.remote())]
        if sum(c.images for c in calls) >= images or time.time() > deadline:
            return calls
        time.sleep(0.2)


# ---------------------------------------------------------------------------------------------
# FLOPs and peaks


def count_forward_flops(module: Callable, *inputs: torch.Tensor) -> int:
    """FLOPs of one forward call as `FlopCounterMode` counts them (2 per multiply-add of
    matrix products, convolutions and attention)."""
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        module(*inputs)
    return int(counter.get_total_flops())


def denoiser_flops(net: NetworkConfig, batch_size: int) -> int:
    """FLOPs of one denoiser forward (preconditioning included) at `batch_size`, counted on
    meta tensors: no memory, no compute, any device."""
    with torch.device("meta"):
        denoiser = build_denoiser(net)
        x = torch.empty(batch_size, *item_shape(net))
        sigma = torch.ones(batch_size)
    return count_forward_flops(denoiser, x, sigma)


def bf16_peak_tflops(device_name: str) -> float | None:
    """The datasheet bf16 dense peak of a GPU by name; None when not in the table."""
    for key, peak in BF16_PEAK_TFLOPS:
        if key.lower() in device_name.lower():
            return peak
    return None


# ---------------------------------------------------------------------------------------------
# Plain loops (Ray tasks only for placement: same CPUs, threads and GPU as the stages get)


def _device(threads: int) -> torch.device:
    if threads > 0:
        torch.set_num_threads(threads)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def device_info(device: torch.device) -> dict:
    """Name and kind of the device this process computes on."""
    if device.type == "cuda":
        return {"type": "cuda", "name": torch.cuda.get_device_name(device)}
    name = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"type": "cpu", "name": name, "threads": torch.get_num_threads()}


def plain_denoise(
    data_dir: str, checkpoint: str, steps: int, batch_size: int, compile: bool, threads: int
) -> dict:
    """Denoise every noisy item in batches with a plain loop; returns the timed calls."""
    device = _device(threads)
    denoiser, _, _ = load_denoiser_at(checkpoint, map_location=device)
    tau = float(read_manifest(data_dir)["tau"])
    _, y = read_split(data_dir, "noisy")
    net = torch.compile(denoiser) if compile else denoiser
    sigma_min = DenoiseConfig().sigma_min
    autocast = dict(device_type=device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")

    def run(batch: np.ndarray, fn) -> np.ndarray:
        y_t = torch.from_numpy(batch).to(device)
        with torch.autocast(**autocast):
            x = backward_denoise(fn, y_t, tau, steps, sigma_min=sigma_min)
        return x.float().cpu().numpy()

    prewarm = 0.0
    if compile and len(y) % batch_size:  # compile the short last batch's shape untimed too
        t0 = time.time()
        run(y[: len(y) % batch_size], net)
        prewarm = time.time() - t0
    counter = CountingDenoiser(net)
    calls = []
    for start in range(0, len(y), batch_size):
        t0, before = time.time(), counter.evaluations
        out = run(y[start : start + batch_size], counter)
        calls.append(Call(t0, time.time(), len(out), counter.evaluations - before))
    return {
        "calls": [dataclasses.asdict(c) for c in calls],
        "device": device_info(device),
        "prewarm_seconds": prewarm,
    }


def plain_train(job: TrainJob, steps: int) -> dict:
    """`steps` steps of `train_loop_per_worker`'s body (one rank), without Ray Train: the
    same state, batch draw and `train_step`."""
    train = job.train
    device = _device(train.threads)
    state = TrainState(job.network, train, job.seed, job.stage).to(device)
    items = [s.load(job.item_shape) for s in job.sets]
    weights = set_weights([len(x) for x in items], [s.weight for s in job.sets])
    sets = [torch.from_numpy(x).to(device) for x in items]
    loss_fn = train_loss(train, job.network)
    bf16 = train.bf16 and device.type == "cuda"
    calls, losses = [], []
    for step in range(steps):
        t0 = time.time()
        x = draw_batch(sets, weights, train.batch_size, job.seed, job.stage, 0, step)
        losses.append(train_step(state, state.model, loss_fn, x, train, bf16))
        calls.append(Call(t0, time.time(), train.batch_size))
    return {"calls": [dataclasses.asdict(c) for c in calls], "loss": float(np.mean(losses))}


# ---------------------------------------------------------------------------------------------
# The benchmark


@dataclass
class Settings:
    """Sizes and the allotment of every timed process (see `resolve_settings`)."""

    preset: str
    resolution: int
    channels: int
    num_images: int
    batch_size: int
    steps: int
    train_steps: int
    train_batch_size: int
    cpus: float
    threads: int
    compile: bool
    use_gpu: bool
    tau: float = 0.59

    def network(self) -> NetworkConfig:
        return NetworkConfig(preset=self.preset, channels=self.channels, resolution=self.resolution)

    def resources(self) -> dict:
        """What every timed process gets (the plain tasks; the stages are given the same)."""
        return {"num_cpus": self.cpus, "num_gpus": 1 if self.use_gpu else 0}


def resolve_settings(
    use_gpu: bool,
    *,
    preset: str | None = None,
    resolution: int | None = None,
    channels: int | None = None,
    num_images: int | None = None,
    batch_size: int | None = None,
    steps: int = 8,
    train_steps: int | None = None,
    train_batch_size: int | None = None,
    cpus: float = 1.0,
    threads: int = 0,
    compile: bool = False,
    tau: float = 0.59,
) -> Settings:
    """Fill the device-dependent defaults (None or 0: the default of a CPU or a GPU run);
    raise ValueError, naming the option, on values that cannot work."""
    preset = preset or ("ddpmpp-cifar10" if use_gpu else "tiny")
    if preset not in PRESETS:
        raise ValueError(f"--preset: unknown {preset!r}; allowed: {', '.join(PRESETS)}")
    default_res = 64 if preset == "ncsnpp-celeba64" else (32 if use_gpu else 16)
    default_ch = 2 if preset == "mlp" else (3 if use_gpu else 1)
    s = Settings(
        preset=preset,
        resolution=resolution or default_res,
        channels=channels or default_ch,
        num_images=num_images or (4096 if use_gpu else 512),
        batch_size=batch_size or (256 if use_gpu else 64),
        steps=steps,
        train_steps=train_steps or (50 if use_gpu else 20),
        train_batch_size=train_batch_size or (128 if use_gpu else 64),
        cpus=cpus,
        threads=threads or max(1, int(cpus)),
        compile=compile,
        use_gpu=use_gpu,
        tau=tau,
    )
    for key in ("num_images", "batch_size", "steps", "train_steps", "train_batch_size"):
        if getattr(s, key) < 1:
            raise ValueError(f"--{key.replace('_', '-')}: {getattr(s, key)}; must be >= 1")
    if s.num_images < 2 * s.batch_size:
        raise ValueError(
            f"--num-images: {s.num_images} < 2 x --batch-size {s.batch_size}; the first batch "
            f"is warm-up, so at least two are needed"
        )
    if s.train_steps < 2:
        raise ValueError("--train-steps: the first step is warm-up, so at least 2 are needed")
    if s.tau <= 0 or s.cpus <= 0:
        raise ValueError("--tau and --cpus must be > 0")
    s.network().validate()
    return s


def write_inputs(s: Settings, work: Path) -> tuple[Path, Path]:
    """The noisy Parquet set (project store layout) and a fresh-weights checkpoint."""
    net = s.network()
    shape = item_shape(net)
    rng = np.random.default_rng(0)
    ids = np.arange(s.num_images, dtype=np.int64)
    x = np.clip(rng.normal(0.0, 0.5, (s.num_images, *shape)), -1, 1).astype(np.float32)
    y = observe(x, ids, s.tau, seed=0)
    data = work / "data"
    shards = write_shards(data / "noisy", ids, y, shard_size=8192)
    write_manifest(
        data,
        {
            "format": DATA_FORMAT,
            "source": "benchmark",
            "kind": "vector" if net.preset == "mlp" else "image",
            "item_shape": list(shape),
            "num_items": s.num_images,
            "tau": s.tau,
            "seed": 0,
            "splits": {
                "clean": {"count": 0, "shards": []},
                "noisy": {"count": s.num_images, "shards": shards},
            },
        },
    )
    torch.manual_seed(0)
    checkpoint = work / "checkpoint.pt"
    save_denoiser_at(checkpoint, build_denoiser(net), net, stage="benchmark")
    return data, checkpoint


def bench_denoise_ray(s: Settings, data: Path, checkpoint: Path, work: Path) -> dict:
    """The denoise stage (`run_denoise`) with one actor; steady-state rates from its calls."""
    log = CallLog.remote()
    config = DenoiseConfig(
        steps=s.steps,
        batch_size=s.batch_size,
        num_actors=1,
        cpus_per_actor=s.cpus,
        gpus_per_actor=1.0,
        threads=s.threads,
        compile=s.compile,
    )
    result = run_denoise(
        data, checkpoint, work / "denoised", config, 0, 1, batch_class=timed_denoise_class(log)
    )
    calls = collect_calls(log, result.count)
    ray.kill(log)
    row = steady_state(calls)
    row.update(
        stage_count=result.count,  # ids the stage itself checked: each input exactly once
        stage_seconds=result.seconds,  # wall time including actor start-up and warm-up
        stage_images_per_s=result.images_per_s,
    )
    return row


def bench_denoise_plain(s: Settings, data: Path, checkpoint: Path, compile: bool) -> dict:
    task = ray.remote(max_calls=1)(plain_denoise).options(**s.resources())
    out = ray.get(
        task.remote(str(data), str(checkpoint), s.steps, s.batch_size, compile, s.threads)
    )
    row = steady_state([Call(**c) for c in out["calls"]])
    row.update(device=out["device"], compile_prewarm_seconds=out["prewarm_seconds"])
    return row


def train_job(s: Settings, data: Path, work: Path) -> TrainJob:
    """The train stage of the benchmark: one worker, T steps on the noisy set, one report."""
    kimg = s.train_steps * s.train_batch_size / 1000
    train = TrainConfig(
        batch_size=s.train_batch_size,
        checkpoint_kimg=2 * kimg,  # no checkpoint before the end
        num_workers=1,
        use_gpu=s.use_gpu,
        cpus_per_worker=s.cpus,
        threads=s.threads,
        max_failures=0,
    )
    return TrainJob(
        stage="benchmark",
        train=train,
        network=s.network(),
        sets=[TrainSet(path=str(data / "noisy"))],
        item_shape=item_shape(s.network()),
        kimg=kimg,
        seed=0,
        storage=str(work / "train"),
    )


def bench_train_ray(s: Settings, job: TrainJob) -> dict:
    """Ray Train with the project's loop; the rate is the loop's own `images_per_s`."""
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    # A kept --work-dir holds the previous benchmark's checkpoints: start afresh, not resumed.
    (Location.of(job.storage) / job.stage).remove()
    resources = {"CPU": s.cpus, **({"GPU": 1} if s.use_gpu else {})}
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config={"job": job},
        scaling_config=ScalingConfig(
            num_workers=1, use_gpu=s.use_gpu, resources_per_worker=resources
        ),
        run_config=RunConfig(
            name=job.stage,
            storage_path=job.storage,
            failure_config=FailureConfig(max_failures=0),
            checkpoint_config=CheckpointConfig(num_to_keep=1),
        ),
    )
    t0 = time.time()
    result = trainer.fit()
    wall = time.time() - t0
    m = result.metrics or {}
    if "images_per_s" not in m:
        raise RuntimeError(f"train: the loop reported no images_per_s (metrics: {m})")
    images = int(m["images_seen"])
    return {
        "steps": images // s.train_batch_size,
        "images": images,
        "timed_images": images - s.train_batch_size,
        "images_per_s": float(m["images_per_s"]),
        "loss": float(m["loss"]),
        "wall_seconds": wall,  # trainer.fit() including worker start-up
    }


def bench_train_plain(s: Settings, job: TrainJob) -> dict:
    task = ray.remote(max_calls=1)(plain_train).options(**s.resources())
    out = ray.get(task.remote(job, s.train_steps))
    st = steady_state([Call(**c) for c in out["calls"]])
    return {
        "steps": st["batches"],
        "images": st["images"],
        "timed_images": st["timed_images"],
        "images_per_s": st["images_per_s"],
        "loss": out["loss"],
        "seconds": st["seconds"],
    }


def add_flops(row: dict, flops_per_eval: float, peak: float | None) -> None:
    """Achieved TFLOP/s of a denoise row, and its share of the bf16 peak where known."""
    row["tflops"] = flops_per_eval * row["timed_evaluations"] / row["seconds"] / 1e12
    row["fraction_of_peak"] = row["tflops"] / peak if peak else None


def judge(value: float | None, target: float, why_not: str | None = None) -> dict:
    """A target's verdict: pass, miss, or not measured (with the reason)."""
    if value is None or why_not:
        return {"target": target, "value": value, "status": "not measured", "note": why_not}
    return {"target": target, "value": value, "status": "pass" if value >= target else "miss"}


def targets(s: Settings, result: dict) -> dict:
    """The three targets (`TARGETS`) judged on a result."""
    d, t = result["denoise"], result["train"]
    compiled = d.get("plain_compiled")
    why = None
    if s.preset != "ddpmpp-cifar10":
        why = "needs --preset ddpmpp-cifar10"
    elif not s.compile:
        why = "needs --compile"
    elif result["device"]["peak_bf16_tflops"] is None:
        why = "bf16 peak of this device unknown"
    return {
        "ray_data_ratio": judge(d["ratio_ray_over_plain"], TARGETS["ray_data_ratio"]),
        "ray_train_ratio": judge(t["ratio_ray_over_plain"], TARGETS["ray_train_ratio"]),
        "compiled_ddpmpp_peak": judge(
            compiled["fraction_of_peak"] if compiled else None, TARGETS["compiled_ddpmpp_peak"], why
        ),
    }


def run_benchmark(s: Settings, work: Path, log: Callable[[str], None] = print) -> dict:
    """All measurements, on the connected Ray cluster, with inputs and outputs in `work`;
    the result dict that is written as JSON."""
    net = s.network()
    nfe = network_evaluations(s.steps)
    data, checkpoint = write_inputs(s, work)
    flops_fwd = denoiser_flops(net, s.batch_size)
    flops_eval = flops_fwd / s.batch_size

    log(f"[benchmark] plain denoise: {s.num_images} images, batch {s.batch_size}, {nfe} NFE")
    denoise = {"plain": bench_denoise_plain(s, data, checkpoint, compile=False)}
    if s.compile:
        log("[benchmark] plain denoise, compiled")
        denoise["plain_compiled"] = bench_denoise_plain(s, data, checkpoint, compile=True)
    log("[benchmark] Ray Data denoise stage")
    denoise["ray"] = bench_denoise_ray(s, data, checkpoint, work)
    device = dict(denoise["plain"].pop("device"))
    device["peak_bf16_tflops"] = bf16_peak_tflops(device["name"]) if s.use_gpu else None
    for row in ("plain", "plain_compiled", "ray"):
        if row in denoise:
            add_flops(denoise[row], flops_eval, device["peak_bf16_tflops"])
    denoise["plain_compiled"] = denoise.get("plain_compiled")
    # Like against like: with compile the stage runs compiled too.
    baseline = denoise["plain_compiled"] if s.compile else denoise["plain"]
    denoise["ratio_ray_over_plain"] = denoise["ray"]["images_per_s"] / baseline["images_per_s"]

    job = train_job(s, data, work)
    log(f"[benchmark] plain train: {s.train_steps} steps of {s.train_batch_size}")
    train = {"plain": bench_train_plain(s, job)}
    log("[benchmark] Ray Train")
    train["ray"] = bench_train_ray(s, job)
    train["ratio_ray_over_plain"] = train["ray"]["images_per_s"] / train["plain"]["images_per_s"]

    parameters = count_parameters(build_denoiser(net))
    result = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "device": device,
        "versions": {
            "torch": torch.__version__,
            "ray": ray.__version__,
            "python": platform.python_version(),
        },
        "preset": s.preset,
        "parameters": parameters,
        "network": {**dataclasses.asdict(net), "parameters": parameters},
        "settings": dataclasses.asdict(s),
        "batch_size": s.batch_size,
        "nfe_per_image": nfe,
        "flops": {
            "per_forward": flops_fwd,
            "forward_batch_size": s.batch_size,
            "per_image_evaluation": flops_eval,
            "per_image": flops_eval * nfe,
            "counted": "matrix products, convolutions, attention (FlopCounterMode, meta tensors)",
        },
        "denoise": denoise,
        "train": train,
        "notes": [
            "with --compile the Ray stage runs compiled (denoise.compile) and the ratio "
            "compares it with the compiled plain loop",
            "rates exclude the first batch / step (see sfbd.studies.benchmark)",
            "bf16 autocast on CUDA for denoising and training, as the stages do",
        ],
    }
    result["targets"] = targets(s, result)
    return result


# ---------------------------------------------------------------------------------------------
# Output


def _fmt(v, spec: str = ".1f") -> str:
    if v is None:
        return "-"
    if isinstance(v, float) and not math.isfinite(v):
        return str(v)
    return format(v, spec)


def format_table(r: dict) -> str:
    """The result as a readable text table."""
    s, dev = r["settings"], r["device"]
    peak = dev["peak_bf16_tflops"]
    item = f"{s['channels']} x {s['resolution']} px"
    if s["preset"] == "mlp":
        item = f"vectors of {s['channels']}"
    lines = [
        f"sfbd benchmark {r['date']}  torch {r['versions']['torch']}  ray {r['versions']['ray']}",
        f"device: {dev['type']} {dev['name']}"
        + (f" ({dev['threads']} threads)" if "threads" in dev else "")
        + f"; bf16 dense peak: {f'{peak:.0f} TFLOP/s' if peak else 'unknown'}",
        f"network: {r['preset']}, {r['network']['parameters']:,} parameters, "
        f"{item}; {r['flops']['per_image_evaluation'] / 1e6:.2f} "
        f"MFLOP per image-evaluation",
        "",
        f"denoise: {s['num_images']} images, batch {s['batch_size']}, {s['steps']} levels "
        f"({r['nfe_per_image']} NFE per image), first batch excluded",
        f"  {'path':<16}{'images':>8}{'timed':>8}{'seconds':>9}{'images/s':>10}{'evals/s':>11}"
        f"{'TFLOP/s':>10}{'% peak':>8}{'busy':>6}",
    ]
    names = {"plain": "plain loop", "plain_compiled": "plain, compiled", "ray": "Ray Data stage"}
    for key, name in names.items():
        row = r["denoise"].get(key)
        if not row:
            continue
        frac = row["fraction_of_peak"]
        lines.append(
            f"  {name:<16}{row['images']:>8}{row['timed_images']:>8}{row['seconds']:>9.2f}"
            f"{row['images_per_s']:>10.1f}{row['evaluations_per_s']:>11.0f}"
            f"{row['tflops']:>10.4f}{_fmt(frac * 100 if frac else None):>8}"
            f"{row['busy_fraction'] * 100:>5.0f}%"
        )
    ray_row = r["denoise"]["ray"]
    lines += [
        f"  ratio Ray/plain: {r['denoise']['ratio_ray_over_plain']:.3f}   (stage wall time "
        f"with start-up: {ray_row['stage_seconds']:.1f} s, "
        f"{ray_row['stage_images_per_s']:.1f} images/s)",
        "",
        f"train: {s['train_steps']} steps of {s['train_batch_size']} images, first step excluded",
        f"  {'path':<16}{'images':>8}{'timed':>8}{'images/s':>10}",
    ]
    for key, name in (("plain", "plain loop"), ("ray", "Ray Train")):
        row = r["train"][key]
        lines.append(
            f"  {name:<16}{row['images']:>8}{row['timed_images']:>8}{row['images_per_s']:>10.1f}"
        )
    lines += [f"  ratio Ray/plain: {r['train']['ratio_ray_over_plain']:.3f}", "", "targets:"]
    for name, t in r["targets"].items():
        value = _fmt(t["value"], ".3f")
        note = f" ({t['note']})" if t.get("note") else ""
        lines.append(f"  {name:<22} >= {t['target']:<5} {value:>7}  {t['status']}{note}")
    return "\n".join(lines)
