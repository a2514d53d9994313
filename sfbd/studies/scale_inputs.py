"""Inputs of the scale plan (`sfbd benchmark --plan`, arithmetic in `sfbd.studies.scale_plan`):
workloads from run configs with their FLOPs counted on the configured network, per-GPU rates
(measured by the benchmark, the recorded H200 anchors, or flags), and the `--plan-*` values
parsed and checked before any work."""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, fields
from importlib import resources
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

from sfbd.config import (
    SFBDConfig,
    auto_iterations,
    from_dict,
    parse_yaml,
    preset_names,
    renamed_keys,
)
from sfbd.diffusion.augment import AUGMENT_DIM
from sfbd.diffusion.networks import MLPShape, NetworkConfig, build_denoiser, count_parameters
from sfbd.diffusion.samplers import network_evaluations
from sfbd.studies.scale_plan import Cluster, Rates, Workload, format_plan, plan_rows

# Measured on an H200 by this project's device sessions (docs/scale.md): a 53M-parameter
# DDPM++-sized UNet at 3x32x32 costing 40.8 GFLOP per forward.
ANCHOR_GFLOP = 40.8
ANCHOR_EVALUATIONS_PER_S = 9500.0  # torch.compile + bf16 + channels_last, plain loop, batch 512
ANCHOR_TRAIN_IMAGES_PER_S = 1250.0  # eager bf16, batch 256: 1.1k-1.4k measured, the midpoint
ANCHOR_TRAIN_FLOPS_FACTOR = 3.0  # forward + backward over forward (3.00 counted for DDPM++)

DEFAULT_SIZES = (50_000, 1_000_000, 100_000_000)
DEFAULT_GPUS = (8, 64, 512)
DEFAULT_CONFIGS = ("cifar10@32", "celeba64@64")
RATE_SOURCES = ("measured", "h200")
DTYPE_BYTES = {"float32": 4, "float16": 2}  # data.noisy_dtype, denoise.out_dtype
_SUFFIXES = {"": 1, "k": 10**3, "m": 10**6, "g": 10**9}


# ---------------------------------------------------------------------------------------------
# FLOPs


@dataclass(frozen=True)
class NetworkCost:
    """A network's size and its FLOPs per image (`FlopCounterMode` on meta tensors: matrix
    products, convolutions and attention, as `sfbd benchmark` counts them)."""

    parameters: int
    forward_flops: float  # one network evaluation
    train_flops: float  # one training step: forward, then backward to every weight


def network_cost(net: NetworkConfig, batch_size: int = 2) -> NetworkCost:
    """Count `net`'s parameters, forward and training FLOPs per image; no memory, no compute."""
    with torch.device("meta"):
        denoiser = build_denoiser(net)
        x = torch.empty(batch_size, *_item_shape(net))
        sigma = torch.ones(batch_size)
        extra = {}
        if net.augment_dim:
            extra["augment_labels"] = torch.zeros(batch_size, net.augment_dim)
    forward = FlopCounterMode(display=False)
    with forward, torch.no_grad():
        denoiser(x, sigma, **extra)
    train = FlopCounterMode(display=False)
    with train:
        denoiser(x, sigma, **extra).float().square().mean().backward()
    return NetworkCost(
        parameters=count_parameters(denoiser),
        forward_flops=forward.get_total_flops() / batch_size,
        train_flops=train.get_total_flops() / batch_size,
    )


def _item_shape(net: NetworkConfig) -> tuple[int, ...]:
    if isinstance(net.shape(), MLPShape):
        return (net.channels,)
    return (net.channels, net.resolution, net.resolution)


# ---------------------------------------------------------------------------------------------
# Workloads


def load_plan_config(name_or_path: str) -> SFBDConfig:
    """A preset or YAML file read as `sfbd run` reads it, but without checking paths of data,
    references or feature networks: a plan reads none of them, and they may live on the
    cluster only."""
    path = Path(name_or_path)
    if name_or_path in preset_names():
        text = resources.files("sfbd.presets").joinpath(f"{name_or_path}.yaml").read_text()
    elif path.suffix in (".yaml", ".yml") and path.is_file():
        text = path.read_text()
    else:
        raise ValueError(
            f"--plan-configs: {name_or_path!r} is neither a preset "
            f"({', '.join(preset_names())}) nor an existing .yaml file"
        )
    data = auto_iterations(renamed_keys(parse_yaml(text, name_or_path), note=lambda _: None))
    config = from_dict(SFBDConfig, data)
    if config.train.augment > 0 and config.network.augment_dim == 0:
        config.network.augment_dim = AUGMENT_DIM
    try:
        config.validate()
    except OSError:
        pass  # a missing data folder or reference file: not needed to plan
    return config


def parse_config_spec(spec: str) -> tuple[str, int | None, int | None]:
    """'NAME[@[CHANNELSx]PIXELS]' -> (name, channels or None, pixels or None)."""
    m = re.fullmatch(r"(.+?)(?:@(?:(\d+)x)?(\d+))?", spec.strip())
    if not m or not m.group(1):
        raise ValueError(f"--plan-configs: {spec!r}; expected NAME[@PIXELS] or NAME@CxPIXELS")
    channels = int(m.group(2)) if m.group(2) else None
    pixels = int(m.group(3)) if m.group(3) else None
    return m.group(1), channels, pixels


def workload_from_config(spec: str) -> Workload:
    """The `Workload` of a config spec ('cifar10@32'), its FLOPs counted on its network."""
    name, channels, pixels = parse_config_spec(spec)
    config = load_plan_config(name)
    net = config.network
    if isinstance(net.shape(), MLPShape):
        raise ValueError(
            f"--plan-configs: {spec!r} has a vector network (mlp); plans are for images"
        )
    net.channels = channels or net.channels
    net.resolution = pixels or net.resolution
    try:
        net.validate()
    except ValueError as exc:
        raise ValueError(f"--plan-configs: {spec}: {exc}") from None
    cost = network_cost(net)
    return Workload(
        name=f"{name}@{net.resolution}" if channels is None else f"{name}@{channels}x{pixels}",
        network=net.preset,
        channels=net.channels,
        resolution=net.resolution,
        parameters=cost.parameters,
        flops_per_evaluation=cost.forward_flops,
        train_flops_per_image=cost.train_flops,
        denoise_steps=config.denoise.steps,
        denoise_nfe=network_evaluations(config.denoise.steps),
        eval_steps=config.eval.steps,
        eval_nfe=network_evaluations(config.eval.steps),
        eval_samples=config.eval.num_samples * config.eval.seeds,
        iterations=config.iterations,
        pretrain_kimg=config.train.pretrain_kimg,
        refit_kimg=config.train.refit_kimg,
        batch_size=config.train.batch_size,
        clean_fraction=config.data.clean_fraction,
        holdout_fraction=config.data.holdout_fraction,
        clean_weight=config.train.clean_weight,
        noisy_bytes_per_value=DTYPE_BYTES[config.data.noisy_dtype],
        denoised_bytes_per_value=DTYPE_BYTES[config.denoise.out_dtype],
    )


# ---------------------------------------------------------------------------------------------
# Rates


def anchor_rates() -> Rates:
    """The recorded H200 rates as TFLOP/s of the anchor network's FLOPs."""
    denoise = ANCHOR_EVALUATIONS_PER_S * ANCHOR_GFLOP / 1e3
    train = ANCHOR_TRAIN_IMAGES_PER_S * ANCHOR_TRAIN_FLOPS_FACTOR * ANCHOR_GFLOP / 1e3
    return Rates(
        denoise_tflops=denoise,
        train_tflops=train,
        denoise_source=f"H200 anchor, not measured here: {ANCHOR_EVALUATIONS_PER_S:,.0f} "
        f"evaluations/s x {ANCHOR_GFLOP} GFLOP, compiled bf16 plain loop, batch 512",
        train_source=f"H200 anchor, not measured here: {ANCHOR_TRAIN_IMAGES_PER_S:,.0f} "
        f"images/s (1.1k-1.4k measured) x {ANCHOR_TRAIN_FLOPS_FACTOR:g} x {ANCHOR_GFLOP} GFLOP, "
        f"eager bf16, batch 256",
    )


def benchmark_network(result: dict) -> NetworkConfig:
    """The network a benchmark result measured (its JSON `network` entry)."""
    names = {f.name for f in fields(NetworkConfig)}
    return NetworkConfig(**{k: v for k, v in result["network"].items() if k in names})


def measured_rates(result: dict) -> Rates:
    """Rates from a benchmark result: the Ray Data stage's achieved TFLOP/s, and Ray Train's
    images/s times the counted training FLOPs per image of the measured network."""
    dev = result["device"]
    device = f"{dev['type']} {dev['name']}"
    ray_row = result["denoise"]["ray"]
    train_images = result["train"]["ray"]["images_per_s"]
    train_flops = network_cost(benchmark_network(result)).train_flops
    net = f"{result['preset']} {_shape_text(result)}"
    return Rates(
        denoise_tflops=ray_row["tflops"],
        train_tflops=train_images * train_flops / 1e12,
        denoise_source=f"measured on {device}: Ray Data stage, "
        f"{ray_row['evaluations_per_s']:,.0f} evaluations/s x "
        f"{result['flops']['per_image_evaluation'] / 1e9:.4g} GFLOP ({net})",
        train_source=f"measured on {device}: Ray Train, {train_images:,.1f} images/s x "
        f"{train_flops / 1e9:.4g} GFLOP ({net})",
    )


def _shape_text(result: dict) -> str:
    s = result["settings"]
    if result["preset"] == "mlp":
        return f"vectors of {s['channels']}"
    return f"{s['channels']}x{s['resolution']}x{s['resolution']}"


# ---------------------------------------------------------------------------------------------
# Options


def parse_count(text: str, flag: str) -> int:
    """'50k' -> 50000, '1M' -> 1000000, '2500' -> 2500; > 0 or a one-line error."""
    m = re.fullmatch(r"\s*(-?\d+(?:\.\d+)?)\s*([kKmMgG]?)\s*", text)
    if not m:
        raise ValueError(f"{flag}: {text!r} is not a count (e.g. 50000, 50k, 1M, 1G)")
    value = float(m.group(1)) * _SUFFIXES[m.group(2).lower()]
    if value < 1 or value != int(value):
        raise ValueError(f"{flag}: {text!r}; must be a whole number >= 1")
    return int(value)


def parse_counts(text: str, flag: str) -> tuple[int, ...]:
    items = [x for x in text.split(",") if x.strip()]
    if not items:
        raise ValueError(f"{flag}: empty; give a comma-separated list")
    return tuple(parse_count(x, flag) for x in items)


@dataclass
class PlanOptions:
    """The `--plan-*` flags."""

    sizes: tuple[int, ...] = DEFAULT_SIZES
    gpus: tuple[int, ...] = DEFAULT_GPUS
    configs: tuple[str, ...] = DEFAULT_CONFIGS
    rates: str = "measured"  # or "h200"
    denoise_tflops: float | None = None  # per GPU; overrides `rates` for denoise and sampling
    train_tflops: float | None = None  # per GPU; overrides `rates` for training
    efficiency: float = 0.9
    storage_gbps: float = 10.0

    def validate(self) -> None:
        """One-line errors naming the flag; cheap (no FLOP counting, no Ray)."""
        if self.rates not in RATE_SOURCES:
            raise ValueError(f"--plan-rates: {self.rates!r}; allowed: {', '.join(RATE_SOURCES)}")
        for key in ("denoise_tflops", "train_tflops"):
            value = getattr(self, key)
            if value is not None and not value > 0:
                raise ValueError(f"--plan-{key.replace('_', '-')}: {value}; must be > 0")
        for n in self.sizes:
            if n < 1:
                raise ValueError(f"--plan-sizes: {n}; must be >= 1")
        Cluster(1, self.efficiency, self.storage_gbps).validate()
        for g in self.gpus:
            Cluster(g, self.efficiency, self.storage_gbps).validate()
        if not self.configs:
            raise ValueError("--plan-configs: empty; e.g. cifar10@32,celeba64@64")
        for spec in self.configs:
            parse_config_spec(spec)

    @property
    def needs_measurement(self) -> bool:
        """Whether some rate comes from this benchmark's measurement."""
        return self.rates == "measured" and None in (self.denoise_tflops, self.train_tflops)

    def resolve_rates(self, result: dict | None) -> Rates:
        """The rates to plan with: measured (from `result`) or anchors, then the flags."""
        base = measured_rates(result) if self.needs_measurement else anchor_rates()
        denoise, train = base.denoise_tflops, base.train_tflops
        d_src, t_src = base.denoise_source, base.train_source
        if self.denoise_tflops is not None:
            denoise, d_src = self.denoise_tflops, "--plan-denoise-tflops"
        if self.train_tflops is not None:
            train, t_src = self.train_tflops, "--plan-train-tflops"
        return Rates(denoise, train, d_src, t_src)


def plan_workloads(options: PlanOptions) -> list[Workload]:
    """Every `--plan-configs` entry as a `Workload` (config loaded, FLOPs counted)."""
    return [workload_from_config(spec) for spec in options.configs]


def make_plan(
    options: PlanOptions, workloads: list[Workload], result: dict | None = None
) -> tuple[str, dict]:
    """The plan's text and its JSON form, from the benchmark `result` where rates are
    measured (None otherwise)."""
    rates = options.resolve_rates(result)
    rows = plan_rows(
        workloads,
        list(options.sizes),
        list(options.gpus),
        rates,
        options.efficiency,
        options.storage_gbps,
    )
    text = format_plan(rows, workloads, rates, options.efficiency, options.storage_gbps)
    data = {
        "rates": asdict(rates),
        "ddp_efficiency": options.efficiency,
        "storage_gbps": options.storage_gbps,
        "workloads": [asdict(w) for w in workloads],
        "rows": [row.to_dict() for row in rows],
    }
    return text, data
