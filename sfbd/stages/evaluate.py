"""The evaluate stage: samples from the current EMA denoiser, a distance, and pictures.

Metric (until FID arrives): the sliced Wasserstein-2 distance of generated samples to a
reference set: fresh true samples for the 2-D toy (`swd_true`); otherwise, in pixel space,
the clean set (`swd_clean`), the data set's held-out test split (`swd_test`) or a given
`.npz` (`swd_npz`), as `eval.reference` says.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import torch

from sfbd.config import EvalConfig
from sfbd.data.sources import load_source, toy2d_sample
from sfbd.data.store import read_manifest, read_split, shard_paths, table_items
from sfbd.diffusion.networks import load_denoiser
from sfbd.diffusion.samplers import generate
from sfbd.metrics.distances import sliced_wasserstein
from sfbd.stages.denoise import read_denoised
from sfbd.viz import save_grid, save_pairs, save_scatter


def generate_samples(
    checkpoint: Path, num: int, steps: int, seed: int, batch_size: int = 500
) -> np.ndarray:
    """`num` samples from a checkpoint's denoiser; sample i depends on (seed, i) alone."""
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    denoiser, net_cfg, _ = load_denoiser(checkpoint, map_location=device)
    shape = (
        (net_cfg.channels,)
        if net_cfg.preset == "mlp"
        else (net_cfg.channels, net_cfg.resolution, net_cfg.resolution)
    )
    out = []
    for start in range(0, num, batch_size):
        ids = range(start, min(start + batch_size, num))
        gens = [torch.Generator(device).manual_seed(seed * 1_000_003 + i) for i in ids]
        with torch.autocast(device.type, torch.bfloat16, enabled=device.type == "cuda"):
            x = generate(denoiser, (len(ids), *shape), steps=steps, generator=gens, device=device)
        out.append(
            x.float().clamp(-1, 1).cpu().numpy() if len(shape) == 3 else x.float().cpu().numpy()
        )
    return np.concatenate(out)


def reference_items(data_dir: Path, config: EvalConfig) -> np.ndarray:
    """The reference set named by `config.reference` (see EvalConfig)."""
    if config.reference == "clean":
        return read_split(data_dir, "clean")[1]
    if config.reference == "test":
        source = read_manifest(data_dir)["source"]
        root = read_manifest(data_dir)["config"].get("root")
        return load_source(source, root=root, train=False).items
    return load_source(config.reference).items


def evaluate(
    grids: Path,
    name: str,
    data_dir: Path,
    checkpoint: Path,
    config: EvalConfig,
    denoised_dir: Path | None = None,
) -> dict:
    """Metrics of one checkpoint, plus its sample grid `grids/<name>_samples.png` (and the
    noisy/denoised pairs `<name>_denoised.png` when a denoised set is given)."""
    manifest = read_manifest(data_dir)
    shape = tuple(manifest["item_shape"])
    samples = generate_samples(
        checkpoint, config.num_samples, config.steps, config.seed, config.batch_size
    )
    record: dict = {}
    if manifest["source"] == "toy2d":
        rng = np.random.default_rng([config.seed, 7])
        reference = toy2d_sample(max(config.num_samples, 5000), rng)
        record["metric"] = "swd_true"
    else:
        reference = reference_items(data_dir, config)
        record["metric"] = f"swd_{config.reference.partition(':')[0]}"
    record[record["metric"]] = sliced_wasserstein(
        samples, reference, config.projections, seed=config.seed
    )
    record["samples_mean"] = float(samples.mean())
    record["samples_std"] = float(samples.std())

    if len(shape) == 1:
        panels = {"true": reference, "generated": samples}
        if denoised_dir is not None:
            noisy = read_split(data_dir, "noisy")[1]
            panels = {"noisy": noisy, "denoised": read_denoised(denoised_dir, shape)[1], **panels}
        if shape[0] == 2:
            save_scatter(panels, grids / f"{name}_points.png")
    else:
        n = config.grid
        if n:
            save_grid(samples[: n * n], grids / f"{name}_samples.png", columns=n)
            if denoised_dir is not None:
                first = pq.read_table(shard_paths(data_dir, "noisy")[0]).slice(0, n * 2)
                ids, noisy = table_items(first, shape)
                d_ids, den = read_denoised(denoised_dir, shape)
                den = den[np.searchsorted(d_ids, ids)]
                save_pairs(noisy, den, grids / f"{name}_denoised.png", columns=n)
    return record
