"""Distance of the denoised set against the number of backward steps, ODE vs SDE.

    python jobs/nfe_study.py --checkpoint RUN/checkpoints/iter_001.pt --data RUN/data \\
        --steps 1,2,4,8,16,32 --modes ode,sde --limit 2000 --out nfe.json

What is measured, for one checkpoint and the first `--limit` noisy observations y of a
prepared data directory (the `noisy` split, at noise level tau from its manifest):

- for every (mode, steps): SFBD's backward pass `backward_denoise(D, y, tau, steps,
  stochastic=mode == "sde")`, run here in plain PyTorch on the CPU in batches (the denoise
  stage runs the same call inside Ray Data), with the SDE's noise for item `id` drawn from
  the stage's own per-item seed `sample_seed(seed, iteration, id)`;
- `evaluations`: denoiser calls per image, counted by wrapping the denoiser (each call on a
  batch of B images counts B), next to `network_evaluations(steps)` (2 steps - 1: Heun's
  corrector is skipped on the last step to sigma = 0, for the ODE and the SDE alike);
- `distance`: sliced Wasserstein-2, the number `sfbd.metrics.distances.sliced_wasserstein`
  gives (256 directions, 1000 quantiles; the same directions for every row, the reference's
  quantiles computed once, by sorting) of the denoised set to a reference: for the 2-D toy, fresh
  true samples (`swd_true`); for images, pixel space, the held-out test split of the source
  (`swd_test`) or the prepared clean split (`swd_clean`);
- `rms_to_converged` (ODE rows): root mean square, over items and coordinates, of the
  difference to the ODE solution of the same y with `--converged-steps` levels: the
  discretisation error of the path itself, free of the sampling noise of the distance;
- `ms_per_image`: wall time of the backward pass (all batches) per image, with the torch
  threads given by `--threads`;
- context rows: `noisy` (the distance of y itself, no evaluations), the converged rows
  (`--converged-steps` levels for each mode), and `floor`: the distance of as many true
  samples as denoised items to the same reference (the toy: fresh samples; images: the last
  items of the source's training split), the value a perfect denoiser would still show.

Prints a table and writes all of it as JSON (`--out`).
"""

import argparse
import json
import math
import os
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path

import _path  # noqa: F401  (keeps jobs/ from shadowing the sfbd package)
import numpy as np
import torch

from sfbd.diffusion.samplers import Denoiser, backward_denoise, network_evaluations

MODES = ("ode", "sde")


# ---------------------------------------------------------------------------------------------
# The measurement itself (any denoiser callable)


class CountingDenoiser:
    """Wraps a denoiser `D(x, sigma)` and counts image-evaluations: a call on B images adds B."""

    def __init__(self, denoiser: Denoiser):
        self.denoiser = denoiser
        self.images = 0

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        self.images += x.shape[0]
        return self.denoiser(x, sigma)


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
    converged: bool = False  # the reference solution (--converged-steps levels)


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
    return torch.cat(parts), seconds, counter.images / len(y)


def _quantiles(values: np.ndarray, levels: np.ndarray) -> np.ndarray:
    """Column quantiles at `levels`, linearly interpolated (NumPy's default method), by one
    sort: the same numbers as `np.quantile(values, levels, axis=0)`, without its partitions."""
    ordered = np.sort(values, axis=0)
    pos = levels * (len(ordered) - 1)
    lo = np.floor(pos).astype(np.int64)
    hi = np.minimum(lo + 1, len(ordered) - 1)
    frac = (pos - lo)[:, None]
    return ordered[lo] * (1 - frac) + ordered[hi] * frac


class SlicedW2:
    """`sliced_wasserstein(items, reference, projections, seed, quantiles)` to one fixed
    reference: the same directions for every set measured, the reference's projected
    quantiles computed once."""

    def __init__(
        self, reference: np.ndarray, projections: int = 256, seed: int = 0, quantiles: int = 1000
    ):
        ref = np.asarray(reference, dtype=np.float64).reshape(len(reference), -1)
        rng = np.random.default_rng(seed)  # the directions sliced_wasserstein draws
        self.dirs = rng.standard_normal((ref.shape[1], projections))
        self.dirs /= np.linalg.norm(self.dirs, axis=0, keepdims=True)
        self.levels = (np.arange(quantiles) + 0.5) / quantiles
        self.reference_quantiles = _quantiles(ref @ self.dirs, self.levels)
        self.count = len(ref)

    def __call__(self, items: torch.Tensor | np.ndarray) -> float:
        if isinstance(items, torch.Tensor):
            items = items.detach().cpu().numpy()
        flat = np.asarray(items, dtype=np.float64).reshape(len(items), -1)
        if flat.shape[1] != self.dirs.shape[0]:
            raise ValueError(
                f"distance: items of {flat.shape[1]} values, reference of {self.dirs.shape[0]}"
            )
        q = _quantiles(flat @ self.dirs, self.levels)
        return float(np.sqrt(((q - self.reference_quantiles) ** 2).mean()))


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
    """The rows as a Markdown table (for the README)."""
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


def int_list(text: str) -> list[int]:
    """`1,2,4` -> [1, 2, 4]; every value >= 1."""
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"not a list of integers: {text!r}") from exc
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"need integers >= 1: {text!r}")
    return sorted(set(values))


def mode_list(text: str) -> list[str]:
    """`ode,sde` -> ["ode", "sde"]."""
    modes = [m.strip() for m in text.split(",") if m.strip()]
    bad = [m for m in modes if m not in MODES]
    if not modes or bad:
        raise argparse.ArgumentTypeError(f"modes: {text!r}; allowed: {', '.join(MODES)}")
    return modes


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", required=True, help="an sfbd checkpoint (iter_k.pt)")
    p.add_argument("--data", required=True, help="a prepared data directory (manifest.json)")
    p.add_argument("--steps", type=int_list, default=int_list("1,2,4,8,16,32"))
    p.add_argument("--modes", type=mode_list, default=list(MODES))
    p.add_argument("--limit", type=int, default=2000, help="noisy items denoised")
    p.add_argument("--converged-steps", type=int, default=128, help="0: no converged rows")
    p.add_argument(
        "--converged-modes", type=mode_list, default=None, help="default: those of --modes"
    )
    p.add_argument("--reference", choices=("test", "clean"), default="test", help="images only")
    p.add_argument("--batch-size", type=int, default=512)
    p.add_argument("--sigma-min", type=float, default=0.002)
    p.add_argument("--seed", type=int, default=0, help="the SDE's seeds (as the run's seed)")
    p.add_argument("--projections", type=int, default=256)
    p.add_argument("--threads", type=int, default=1, help="torch threads")
    p.add_argument("--out", default=None, help="JSON file for the results")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    a = parse_args(argv)
    if a.limit < 1 or a.batch_size < 1 or a.converged_steps < 0 or a.threads < 1:
        print(
            "error: --limit, --batch-size, --threads >= 1; --converged-steps >= 0", file=sys.stderr
        )
        return 2
    for what, path in (("checkpoint", a.checkpoint), ("data", a.data)):
        if not Path(path).exists():
            print(f"error: {what}: {path} does not exist", file=sys.stderr)
            return 2
    torch.set_num_threads(a.threads)
    from sfbd.runfiles import load_denoiser_at

    try:
        manifest, ids, y = load_observations(a.data, a.limit)
        denoiser, net_cfg, payload = load_denoiser_at(a.checkpoint)
    except (FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    denoiser.eval()
    # The reference (and the toy's true samples) are fixed: --seed changes the SDE noise only.
    metric, reference, floor_set = reference_sets(a.data, manifest, a.reference, len(y), 0)
    config = Config(
        tau=float(manifest["tau"]),
        steps=a.steps,
        modes=a.modes,
        converged_steps=a.converged_steps,
        converged_modes=a.converged_modes,
        sigma_min=a.sigma_min,
        batch_size=a.batch_size,
        seed=a.seed,
        # The checkpoint of iteration k feeds the denoise stage of iteration k + 1.
        iteration=int(payload.get("iteration") or 0) + 1,
    )
    distance = SlicedW2(reference, a.projections, seed=0)
    floor = None if floor_set is None else distance(floor_set)
    print(
        f"nfe study: {a.checkpoint}, {len(y)} noisy items of {a.data} ({manifest['source']}, "
        f"tau={config.tau}), reference {metric} ({len(reference)} items), "
        f"{a.threads} thread(s)"
    )
    print(HEADER)
    rows = run_study(denoiser, torch.from_numpy(y), ids, distance, config)
    print()
    print(format_table(rows, floor, metric))
    if a.out:
        record = {
            "date": datetime.now(UTC).isoformat(timespec="seconds"),
            "argv": list(argv if argv is not None else sys.argv[1:]),
            "checkpoint": str(a.checkpoint),
            "network": net_cfg.preset,
            "data": str(a.data),
            "source": manifest["source"],
            "tau": config.tau,
            "items": len(y),
            "metric": metric,
            "reference_items": len(reference),
            "projections": a.projections,
            "floor": floor,
            "threads": a.threads,
            "config": asdict(config),
            "rows": [asdict(r) for r in rows],
            "markdown": markdown_table(rows, floor, metric),
        }
        out = Path(a.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_name(out.name + ".tmp")
        tmp.write_text(json.dumps(record, indent=2, default=_json_default) + "\n")
        os.replace(tmp, out)
        print(f"wrote {out}")
    return 0


def _json_default(obj):
    if isinstance(obj, (np.integer, np.floating)):
        return obj.item()
    if isinstance(obj, float) and math.isnan(obj):
        return None
    return list(obj) if isinstance(obj, (tuple, set)) else str(obj)


if __name__ == "__main__":
    sys.exit(main())
