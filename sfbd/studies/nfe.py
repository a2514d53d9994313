"""Distance of the denoised set against the number of backward levels, ODE vs SDE
(`sfbd nfe-study`).

What is measured, for one checkpoint and the first `limit` noisy observations y of a
prepared data directory (the `noisy` split, at noise level tau from its manifest):

- for every (mode, steps): SFBD's backward pass `backward_denoise(D, y, tau, steps,
  stochastic=mode == "sde")` (Lu, Wu & Yu 2025, Algorithm 1), run here in plain PyTorch in
  batches (the denoise stage runs the same call inside Ray Data), with the SDE's noise for
  item `id` drawn from the stage's own per-item seed `sample_seed(seed, iteration, id)`;
- `evaluations`: denoiser calls per image, counted by `CountingDenoiser`, next to
  `network_evaluations(steps)` (2 steps - 1: Heun's corrector is skipped on the last step to
  sigma = 0, for the ODE and the SDE alike);
- `distance`: sliced Wasserstein-2 (`sfbd.metrics.distances.SlicedW2`, the numbers of
  `sliced_wasserstein`: 256 directions, 1000 quantiles, the same directions for every row,
  the reference's quantiles computed once) of the denoised set to a reference: for the 2-D
  toy, fresh true samples (`swd_true`); for images, pixel space, the held-out test split of
  the source (`swd_test`) or the prepared clean split (`swd_clean`);
- `rms_to_converged` (ODE rows): root mean square, over items and coordinates, of the
  difference to the ODE solution of the same y with `converged_steps` levels: the
  discretisation error of the path itself, free of the sampling noise of the distance;
- `ms_per_image`: wall time of the backward pass (all batches) per image;
- context rows: `noisy` (the distance of y itself, no evaluations), the converged rows
  (`converged_steps` levels for each mode), and `floor`: the distance of as many true
  samples as denoised items to the same reference (the toy: fresh samples; images: the last
  items of the source's training split), the value a perfect denoiser would still show.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime

import numpy as np
import torch

from sfbd.diffusion.samplers import (
    CountingDenoiser,
    Denoiser,
    backward_denoise,
    network_evaluations,
)
from sfbd.metrics.distances import SlicedW2

MODES = ("ode", "sde")


@dataclass
class Row:
    """One line of the study: a backward pass of `mode` with `steps` noise levels."""

    mode: str  # "ode", "sde" or "noisy" (the observations themselves)
    steps: int
    evaluations: float  # counted denoiser evaluations per image
    expected_evaluations: int  # network_evaluations(steps); 0 for the noisy row
    distance: float  # sliced Wasserstein-2 to the reference set
    rms_to_converged: float | None  # ODE rows: RMS difference to the converged ODE solution
    ms_per_image: float  # wall time of the backward pass per image
    converged: bool = False  # the reference solution (converged_steps levels)


@dataclass
class Config:
    """How the backward passes are run and the distances taken."""

    tau: float
    steps: Sequence[int]
    modes: Sequence[str] = MODES
    converged_steps: int = 128  # 0: no converged rows, no rms_to_converged
    converged_modes: Sequence[str] | None = None  # modes with a converged row; None: all
    sigma_min: float = 0.002
    batch_size: int = 512
    seed: int = 0  # the SDE's per-item seeds: sample_seed(seed, iteration, id)
    iteration: int = 1  # the denoise iteration whose seeds are used (checkpoint's + 1)


def item_generators(ids: np.ndarray, seed: int, iteration: int) -> list[torch.Generator]:
    """One generator per item, seeded as the denoise stage seeds the SDE for that item."""
    from sfbd.stages.denoise import sample_seed

    return [torch.Generator().manual_seed(sample_seed(seed, iteration, int(i))) for i in ids]


def denoise_set(
    denoiser: Denoiser,
    y: torch.Tensor,
    ids: np.ndarray,
    steps: int,
    stochastic: bool,
    config: Config,
) -> tuple[torch.Tensor, float, float]:
    """(denoised items, seconds, counted evaluations per image) of one backward pass over y."""
    counter = CountingDenoiser(denoiser)
    parts = []
    t0 = time.perf_counter()
    for start in range(0, len(y), config.batch_size):
        stop = min(start + config.batch_size, len(y))
        gens = (
            item_generators(ids[start:stop], config.seed, config.iteration) if stochastic else None
        )
        parts.append(
            backward_denoise(
                counter,
                y[start:stop],
                config.tau,
                steps,
                stochastic=stochastic,
                generator=gens,
                sigma_min=config.sigma_min,
            )
        )
    seconds = time.perf_counter() - t0
    return torch.cat(parts), seconds, counter.evaluations / len(y)


def rms(a: torch.Tensor, b: torch.Tensor) -> float:
    """Root mean square of a - b over items and coordinates."""
    return float(((a.double() - b.double()) ** 2).mean().sqrt())


def measure(
    denoiser: Denoiser,
    y: torch.Tensor,
    ids: np.ndarray,
    steps: int,
    mode: str,
    distance: SlicedW2,
    config: Config,
    converged_ode: torch.Tensor | None,
    converged: bool = False,
) -> tuple[Row, torch.Tensor]:
    """One row: backward pass of `mode` with `steps` levels, its cost and its distances."""
    x, seconds, evals = denoise_set(denoiser, y, ids, steps, mode == "sde", config)
    row = Row(
        mode=mode,
        steps=steps,
        evaluations=evals,
        expected_evaluations=network_evaluations(steps),
        distance=distance(x),
        rms_to_converged=(
            rms(x, converged_ode) if mode == "ode" and converged_ode is not None else None
        ),
        ms_per_image=1000 * seconds / len(y),
        converged=converged,
    )
    return row, x


def run_study(
    denoiser: Denoiser,
    y: torch.Tensor,
    ids: np.ndarray,
    distance: SlicedW2,
    config: Config,
    log: Callable[[str], None] = print,
) -> list[Row]:
    """Every (mode, steps) of `config`, after the noisy row and the converged rows.

    Rows come in this order: `noisy`; for each of `converged_modes` the converged row (when
    `converged_steps` > 0); then one row per (mode, steps), modes outer, steps ascending.
    """
    converged_modes = config.modes if config.converged_modes is None else config.converged_modes
    for mode in [*config.modes, *converged_modes]:
        if mode not in MODES:
            raise ValueError(f"modes: unknown {mode!r}; allowed: {', '.join(MODES)}")
    if len(y) != len(ids):
        raise ValueError(f"{len(y)} observations but {len(ids)} ids")
    rows = [Row("noisy", 0, 0.0, 0, distance(y), None, 0.0)]
    log(format_row(rows[0]))
    converged_ode = None
    if config.converged_steps > 0:
        for mode in converged_modes:
            row, x = measure(
                denoiser, y, ids, config.converged_steps, mode, distance, config, None, True
            )
            if mode == "ode":
                converged_ode, row.rms_to_converged = x, 0.0
            rows.append(row)
            log(format_row(row))
    for mode in config.modes:
        for steps in sorted(config.steps):
            row, _ = measure(denoiser, y, ids, steps, mode, distance, config, converged_ode)
            rows.append(row)
            log(format_row(row))
    return rows


# ---------------------------------------------------------------------------------------------
# Presentation


HEADER = f"{'mode':>5} {'steps':>5} {'NFE':>5} {'distance':>9} {'rms_to_conv':>11} {'ms/image':>9}"


def format_row(row: Row) -> str:
    """One table line; converged rows are marked with `*`."""
    rms_text = "-" if row.rms_to_converged is None else f"{row.rms_to_converged:.5f}"
    mark = "*" if row.converged else " "
    return (
        f"{row.mode:>5} {row.steps:>4}{mark} {row.evaluations:>5.0f} {row.distance:>9.5f} "
        f"{rms_text:>11} {row.ms_per_image:>9.3f}"
    )


def format_table(rows: Sequence[Row], floor: float | None, metric: str) -> str:
    """The rows as a fixed-width table, the floor of the distance below them."""
    lines = [f"distance: {metric}; NFE: network evaluations per image; * converged", HEADER]
    lines += [format_row(r) for r in rows]
    if floor is not None:
        lines.append(f"floor (true samples, same count): {floor:.5f}")
    return "\n".join(lines)


def markdown_table(rows: Sequence[Row], floor: float | None, metric: str) -> str:
    """The rows as a Markdown table (for the docs)."""
    lines = [
        f"| mode | levels | NFE / image | {metric} | RMS to converged ODE | ms / image |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        rms_text = "–" if r.rms_to_converged is None else f"{r.rms_to_converged:.4f}"
        steps = f"{r.steps} (converged)" if r.converged else str(r.steps)
        lines.append(
            f"| {r.mode} | {steps} | {r.evaluations:.0f} | {r.distance:.4f} | {rms_text} | "
            f"{r.ms_per_image:.2f} |"
        )
    if floor is not None:
        lines.append(f"| true samples (floor) | | | {floor:.4f} | | |")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# Data, reference and checkpoint


def load_observations(data_dir: str, limit: int) -> tuple[dict, np.ndarray, np.ndarray]:
    """(manifest, ids, y): the first `limit` noisy observations of a prepared directory."""
    from sfbd.data.store import read_manifest, read_split

    manifest = read_manifest(data_dir)
    ids, y = read_split(data_dir, "noisy")
    return manifest, ids[:limit], y[:limit]


def reference_sets(
    data_dir: str, manifest: dict, reference: str, count: int, seed: int
) -> tuple[str, np.ndarray, np.ndarray | None]:
    """(metric name, reference set, floor set of `count` true items, or None).

    Toy: `max(count, 20000)` fresh true samples, and `count` further ones for the floor.
    Images: the held-out test split (`test`) or the prepared clean split (`clean`); the floor
    set is the last `count` items of the source's training split (test reference only).
    """
    from sfbd.config import EvalConfig
    from sfbd.data.sources import load_source, toy2d_sample
    from sfbd.stages.evaluate import reference_items

    if manifest["source"] == "toy2d":
        rng = np.random.default_rng([seed, 7])
        return "swd_true", toy2d_sample(max(count, 20000), rng), toy2d_sample(count, rng)
    ref = reference_items(data_dir, EvalConfig(reference=reference))
    floor = None
    if reference == "test":
        root = manifest.get("config", {}).get("root")
        floor = load_source(manifest["source"], root=root, train=True).items[-count:]
    return f"swd_{reference}", ref, floor


def nfe_study(
    checkpoint: str,
    data_dir: str,
    config: Config,
    limit: int = 2000,
    reference: str = "test",
    projections: int = 256,
    log: Callable[[str], None] = print,
) -> dict:
    """The whole study for a checkpoint and prepared data: rows logged as they are measured,
    then the table; returns the JSON record. `config.tau` and `config.iteration` are
    replaced by the data's noise level and the iteration after the checkpoint's."""
    from sfbd.runfiles import load_denoiser_at
    from sfbd.storage import Location

    for what, where in (("checkpoint", checkpoint), ("data", data_dir)):
        if not Location.of(where).exists():
            raise FileNotFoundError(f"{what}: {where} does not exist")
    if limit < 1 or config.batch_size < 1 or config.converged_steps < 0:
        raise ValueError("--limit and --batch-size must be >= 1, --converged-steps >= 0")
    if not config.steps or min(config.steps) < 1:
        raise ValueError(f"--steps: {list(config.steps)}; need levels >= 1")
    manifest, ids, y = load_observations(data_dir, limit)
    denoiser, net_cfg, payload = load_denoiser_at(checkpoint)
    denoiser.eval()
    config = replace(
        config,
        steps=sorted(set(config.steps)),
        tau=float(manifest["tau"]),
        # The checkpoint of iteration k feeds the denoise stage of iteration k + 1.
        iteration=int(payload.get("iteration") or 0) + 1,
    )
    # The reference (and the toy's true samples) are fixed: the seed changes the SDE noise only.
    metric, ref, floor_set = reference_sets(data_dir, manifest, reference, len(y), 0)
    distance = SlicedW2(ref, projections, seed=0)
    floor = None if floor_set is None else distance(floor_set)
    log(
        f"nfe study: {checkpoint}, {len(y)} noisy items of {data_dir} ({manifest['source']}, "
        f"tau={config.tau}), reference {metric} ({len(ref)} items), "
        f"{torch.get_num_threads()} thread(s)"
    )
    log(HEADER)
    rows = run_study(denoiser, torch.from_numpy(y), ids, distance, config, log=log)
    log("")
    log(format_table(rows, floor, metric))
    return {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "checkpoint": str(checkpoint),
        "network": net_cfg.preset,
        "data": str(data_dir),
        "source": manifest["source"],
        "tau": config.tau,
        "items": len(y),
        "metric": metric,
        "reference": reference,
        "reference_items": len(ref),
        "projections": projections,
        "floor": floor,
        "threads": torch.get_num_threads(),
        "config": asdict(config),
        "rows": [asdict(r) for r in rows],
        "markdown": markdown_table(rows, floor, metric),
    }
