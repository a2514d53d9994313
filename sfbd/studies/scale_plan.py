"""The scale plan (`sfbd benchmark --plan`): hours of each SFBD stage and of a whole run for
given noisy-set sizes and GPU counts, from per-GPU rates. Pure arithmetic, no torch, no Ray:
`Workload`, `Rates` and `Cluster` in, `PlanRow`s and a text table out; `sfbd.studies.scale_inputs`
builds the inputs (counted FLOPs, measured or recorded rates).

The model, stage by stage (FLOPs are `FlopCounterMode` counts: matrix products, convolutions,
attention):
- denoise, per iteration: every kept noisy item (the holdout is not denoised) costs `denoise_nfe`
  network evaluations; the work splits over the GPUs with no loss (independent items, one
  actor per GPU). It reads the noisy set and writes the denoised set (float32 each unless
  `data.noisy_dtype` / `denoise.out_dtype` say float16).
- refit, per iteration: `refit_kimg` thousand images at `train_flops_per_image` (forward and
  backward); DDP over N > 1 GPUs runs at `Cluster.ddp_efficiency` of N x one GPU. Every image
  drawn is read from storage (streaming ingestion), clean ones as uint8, denoised as float32,
  mixed by `clean_weight` (None: by set size).
- pretrain: as refit, `pretrain_kimg` on the clean set (uint8).
- evaluate, after pretraining and after every iteration: `eval_samples` generated at `eval_nfe`
  evaluations each, split over the GPUs with no loss; reads and writes nothing of size.
A stage takes max(compute, storage): reading and writing overlap the compute, and the bound is
whichever is longer. A whole run is pretrain + (K + 1) evaluate + K (denoise + refit).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

GB = 1e9  # storage bandwidths and volumes in decimal gigabytes


@dataclass(frozen=True)
class Rates:
    """Achieved throughput of one GPU in TFLOP/s of counted FLOPs, with where each came from."""

    denoise_tflops: float  # network evaluations without gradients (denoise and sampling)
    train_tflops: float  # training steps (forward and backward)
    denoise_source: str = ""
    train_source: str = ""

    def validate(self) -> None:
        for key in ("denoise_tflops", "train_tflops"):
            value = getattr(self, key)
            if not (value > 0 and math.isfinite(value)):
                raise ValueError(f"--plan-{key.replace('_', '-')}: {value}; must be > 0")


@dataclass(frozen=True)
class Workload:
    """What one run does: the network's counted costs and the config's schedule."""

    name: str  # e.g. "cifar10@32"
    network: str  # network preset
    channels: int
    resolution: int
    parameters: int
    flops_per_evaluation: float  # one image through the denoiser, forward
    train_flops_per_image: float  # one image through a training step, forward and backward
    denoise_steps: int
    denoise_nfe: int  # network evaluations per denoised item
    eval_steps: int
    eval_nfe: int  # network evaluations per generated sample
    eval_samples: int  # samples per evaluation (eval.num_samples x eval.seeds)
    iterations: int
    pretrain_kimg: float
    refit_kimg: float
    batch_size: int  # global training batch
    clean_fraction: float
    holdout_fraction: float = 0.0
    clean_weight: float | None = None
    clean_bytes_per_value: int = 1  # uint8 clean items
    noisy_bytes_per_value: int = 4  # data.noisy_dtype: float32 (4) or float16 (2)
    denoised_bytes_per_value: int = 4  # denoise.out_dtype: float32 (4) or float16 (2)

    @property
    def values_per_item(self) -> int:
        return self.channels * self.resolution**2

    def clean_items(self, noisy: float) -> float:
        """Clean items that go with `noisy` noisy ones at the config's clean fraction."""
        return noisy * self.clean_fraction / (1 - self.clean_fraction)

    def denoised_items(self, noisy: float) -> float:
        """Noisy items that are denoised and trained on (the holdout is neither)."""
        return noisy * (1 - self.holdout_fraction)

    def refit_bytes_per_image(self) -> float:
        """Mean bytes read per image a refit draws: clean uint8 and denoised items, mixed by
        `clean_weight` (None: by set size, which does not depend on the size itself)."""
        clean, denoised = self.clean_items(1.0), self.denoised_items(1.0)
        w = self.clean_weight if self.clean_weight is not None else clean / (clean + denoised)
        per_value = w * self.clean_bytes_per_value + (1 - w) * self.denoised_bytes_per_value
        return per_value * self.values_per_item


@dataclass(frozen=True)
class Cluster:
    """N GPUs, how well DDP scales over them, and the storage they share."""

    gpus: int
    ddp_efficiency: float = 0.9  # DDP images/s over N x one GPU's, for N > 1
    storage_gbps: float = 10.0  # aggregate storage bandwidth, GB/s (1e9 bytes/s)

    def validate(self) -> None:
        if self.gpus < 1:
            raise ValueError(f"--plan-gpus: {self.gpus}; must be >= 1")
        if not 0 < self.ddp_efficiency <= 1:
            raise ValueError(f"--plan-efficiency: {self.ddp_efficiency}; must lie in (0, 1]")
        if not self.storage_gbps > 0:
            raise ValueError(f"--plan-storage-gbps: {self.storage_gbps}; must be > 0")

    @property
    def train_speedup(self) -> float:
        """Training images/s over one GPU's."""
        return self.gpus * (self.ddp_efficiency if self.gpus > 1 else 1.0)


@dataclass(frozen=True)
class StageTime:
    """One stage's compute and storage time; it takes the longer of the two."""

    compute_s: float
    storage_s: float = 0.0
    bytes: float = 0.0  # read + written

    @property
    def seconds(self) -> float:
        return max(self.compute_s, self.storage_s)

    @property
    def hours(self) -> float:
        return self.seconds / 3600

    @property
    def bound(self) -> str:
        return "storage" if self.storage_s > self.compute_s else "compute"


def _stage(flops: float, tflops: float, speedup: float, nbytes: float, c: Cluster) -> StageTime:
    return StageTime(flops / (tflops * 1e12 * speedup), nbytes / (c.storage_gbps * GB), nbytes)


def denoise_time(w: Workload, noisy: float, c: Cluster, r: Rates) -> StageTime:
    """One denoise pass over the kept noisy items: read noisy, write denoised."""
    items = w.denoised_items(noisy)
    flops = items * w.denoise_nfe * w.flops_per_evaluation
    nbytes = items * w.values_per_item * (w.noisy_bytes_per_value + w.denoised_bytes_per_value)
    return _stage(flops, r.denoise_tflops, c.gpus, nbytes, c)


def refit_time(w: Workload, noisy: float, c: Cluster, r: Rates) -> StageTime:
    """One refit of `refit_kimg`, every drawn image read from storage."""
    images = w.refit_kimg * 1000
    nbytes = images * w.refit_bytes_per_image()
    return _stage(images * w.train_flops_per_image, r.train_tflops, c.train_speedup, nbytes, c)


def pretrain_time(w: Workload, c: Cluster, r: Rates) -> StageTime:
    """Pretraining on the clean set (uint8), every drawn image read from storage."""
    images = w.pretrain_kimg * 1000
    nbytes = images * w.values_per_item * w.clean_bytes_per_value
    return _stage(images * w.train_flops_per_image, r.train_tflops, c.train_speedup, nbytes, c)


def evaluate_time(w: Workload, c: Cluster, r: Rates) -> StageTime:
    """One evaluation's sampling (feature extraction not counted)."""
    flops = w.eval_samples * w.eval_nfe * w.flops_per_evaluation
    return _stage(flops, r.denoise_tflops, c.gpus, 0.0, c)


@dataclass(frozen=True)
class PlanRow:
    """One workload at one noisy-set size on one cluster."""

    workload: str
    noisy: int
    gpus: int
    batch_per_gpu: float
    iterations: int
    denoise: StageTime  # per iteration
    refit: StageTime  # per iteration
    evaluate: StageTime  # per evaluation
    pretrain: StageTime

    @property
    def run_hours(self) -> float:
        k = self.iterations
        per_iteration = self.denoise.hours + self.refit.hours
        return self.pretrain.hours + (k + 1) * self.evaluate.hours + k * per_iteration

    @property
    def bytes_per_iteration(self) -> float:
        return self.denoise.bytes + self.refit.bytes

    def to_dict(self) -> dict:
        stages = ("denoise", "refit", "evaluate", "pretrain")
        return {
            "workload": self.workload,
            "noisy": self.noisy,
            "gpus": self.gpus,
            "batch_per_gpu": self.batch_per_gpu,
            "iterations": self.iterations,
            **{
                name: {
                    "hours": getattr(self, name).hours,
                    "compute_s": getattr(self, name).compute_s,
                    "storage_s": getattr(self, name).storage_s,
                    "bytes": getattr(self, name).bytes,
                    "bound": getattr(self, name).bound,
                }
                for name in stages
            },
            "run_hours": self.run_hours,
            "bytes_per_iteration": self.bytes_per_iteration,
        }


def plan_row(w: Workload, noisy: int, c: Cluster, r: Rates) -> PlanRow:
    """The hours of every stage of `w` with `noisy` noisy items on cluster `c`."""
    if noisy < 1:
        raise ValueError(f"--plan-sizes: {noisy}; must be >= 1")
    c.validate()
    r.validate()
    return PlanRow(
        workload=w.name,
        noisy=noisy,
        gpus=c.gpus,
        batch_per_gpu=w.batch_size / c.gpus,
        iterations=w.iterations,
        denoise=denoise_time(w, noisy, c, r),
        refit=refit_time(w, noisy, c, r),
        evaluate=evaluate_time(w, c, r),
        pretrain=pretrain_time(w, c, r),
    )


def storage_bound_beyond(w: Workload, c: Cluster, r: Rates) -> dict[str, float]:
    """GPU count (N > 1) beyond which each stage waits on storage: compute time falls as 1/N,
    storage time does not, and both grow alike with the size, so the crossing does not
    depend on it. Evaluation moves no data and is never storage-bound."""
    bandwidth = c.storage_gbps * GB
    refit_bytes = w.refit_bytes_per_image()
    item_bytes = w.values_per_item
    eff = c.ddp_efficiency
    train = r.train_tflops * 1e12
    return {
        "denoise": w.denoise_nfe
        * w.flops_per_evaluation
        * bandwidth
        / (
            r.denoise_tflops
            * 1e12
            * item_bytes
            * (w.noisy_bytes_per_value + w.denoised_bytes_per_value)
        ),
        "refit": w.train_flops_per_image * bandwidth / (train * eff * refit_bytes),
        "pretrain": w.train_flops_per_image
        * bandwidth
        / (train * eff * item_bytes * w.clean_bytes_per_value),
    }


def plan_rows(
    workloads: list[Workload],
    sizes: list[int],
    gpus: list[int],
    rates: Rates,
    ddp_efficiency: float = 0.9,
    storage_gbps: float = 10.0,
) -> list[PlanRow]:
    """Every workload x size x GPU count, in that order."""
    return [
        plan_row(w, n, Cluster(g, ddp_efficiency, storage_gbps), rates)
        for w in workloads
        for n in sizes
        for g in gpus
    ]


# ---------------------------------------------------------------------------------------------
# Output


def short_count(n: float) -> str:
    """50000 -> 50k, 1000000 -> 1M, 1234 -> 1234."""
    for suffix, unit in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if n >= unit and n % unit == 0:
            return f"{int(n // unit)}{suffix}"
    return f"{n:g}"


def fmt_hours(h: float) -> str:
    """Three significant figures without exponents; '<0.001' below that."""
    if h < 0.001:
        return "<0.001"
    if h >= 100:
        return f"{h:,.0f}"
    return f"{h:.{max(0, 2 - math.floor(math.log10(h)))}f}"


def _cell(stage: StageTime) -> str:
    return fmt_hours(stage.hours) + ("*" if stage.bound == "storage" else "")


def format_workload(w: Workload, r: Rates, c: Cluster) -> list[str]:
    """What a workload costs per GPU, and when storage bounds it."""
    evals_per_s = r.denoise_tflops * 1e12 / w.flops_per_evaluation
    train_per_s = r.train_tflops * 1e12 / w.train_flops_per_image
    beyond = storage_bound_beyond(w, c, r)
    beyond_text = ", ".join(f"{k} {v:,.0f}" for k, v in beyond.items())
    return [
        f"  {w.name}: {w.network} {w.channels}x{w.resolution}x{w.resolution}, "
        f"{w.parameters / 1e6:.1f}M parameters; {w.flops_per_evaluation / 1e9:.2f} GFLOP per "
        f"evaluation, {w.train_flops_per_image / 1e9:.2f} GFLOP per train image",
        f"    per GPU: {evals_per_s:,.0f} evaluations/s, {train_per_s:,.0f} train images/s",
        f"    schedule: {w.iterations} iterations; denoise {w.denoise_nfe} NFE per image "
        f"({w.denoise_steps} levels); refit {w.refit_kimg:,.0f} kimg; pretrain "
        f"{w.pretrain_kimg:,.0f} kimg; batch {w.batch_size}; evaluate {w.eval_samples:,} "
        f"samples x {w.eval_nfe} NFE; clean {w.clean_fraction:.0%} of all, holdout "
        f"{w.holdout_fraction:.0%} of noisy",
        f"    storage-bound beyond (GPUs, any size): {beyond_text}",
    ]


def format_plan(
    rows: list[PlanRow],
    workloads: list[Workload],
    rates: Rates,
    ddp_efficiency: float,
    storage_gbps: float,
) -> str:
    """The assumptions, each workload's per-GPU costs, and the table of hours."""
    c = Cluster(1, ddp_efficiency, storage_gbps)
    lines = [
        "scale plan: estimated hours per stage and per run",
        f"rates per GPU: denoise and sampling {rates.denoise_tflops:.1f} TFLOP/s "
        f"[{rates.denoise_source}]",
        f"               training {rates.train_tflops:.1f} TFLOP/s [{rates.train_source}]",
        f"scaling to N GPUs: denoise and sampling N x one GPU (independent items); pretrain "
        f"and refit (DDP) N x {ddp_efficiency:.2f} x one GPU, the config's global batch "
        f"split over N",
        f"storage: {storage_gbps:g} GB/s aggregate; clean uint8, noisy and denoised as each "
        f"config stores them (float32 by default, float16: 2 bytes); "
        f"denoise reads noisy and writes denoised, training reads every image it draws; "
        f"a stage takes max(compute, storage)",
        "not counted: evaluation feature extraction (Inception), checkpoints, data "
        "preparation, start-up",
        "",
        "workloads:",
    ]
    for w in workloads:
        lines += format_workload(w, rates, c)
    header = (
        f"  {'workload':<14}{'noisy':>6}{'GPUs':>6}{'batch/GPU':>10}{'denoise/it':>11}"
        f"{'refit/it':>10}{'evaluate':>10}{'pretrain':>10}{'run':>9}{'GB/it':>9}"
    )
    lines += ["", "hours (* storage-bound; GB/it: read + written per iteration)", header]
    for row in rows:
        lines.append(
            f"  {row.workload:<14}{short_count(row.noisy):>6}{row.gpus:>6}"
            f"{row.batch_per_gpu:>10.3g}{_cell(row.denoise):>11}{_cell(row.refit):>10}"
            f"{_cell(row.evaluate):>10}{_cell(row.pretrain):>10}{fmt_hours(row.run_hours):>9}"
            f"{row.bytes_per_iteration / GB:>9,.0f}"
        )
    small = sorted({r.gpus for r in rows if r.batch_per_gpu < 32})
    if small:
        lines.append(
            f"  note: on {', '.join(map(str, small))} GPUs the global batch leaves fewer than "
            f"32 images per GPU; the per-GPU training rate was not measured at such batches "
            f"and will not hold (raise train.batch_size or refit on fewer GPUs)"
        )
    return "\n".join(lines)
