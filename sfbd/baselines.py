"""The comparison rows of the paper's experiments, trained with the same train stage:

- `noisy`: a model trained directly on the noisy observations as if they were clean;
- `all-clean`: a model trained on every original item (the synthetic toy only: for real data
  this would need the clean originals of the noisy part, which the pipeline never writes).

Each trains for the whole SFBD budget (pretrain_kimg + iterations * refit_kimg) and is
evaluated like an iteration; results land in `<run>/baselines/<kind>.json`.
"""

from __future__ import annotations

import ray

from sfbd.config import SFBDConfig
from sfbd.data.sources import load_source
from sfbd.data.store import read_manifest, write_shards
from sfbd.runfiles import (
    Where,
    checkpoint_complete,
    is_complete,
    publish_dir,
    read_json,
    stage_dir,
    write_json_atomic,
)
from sfbd.storage import Location

KINDS = ("noisy", "all-clean")


def _all_clean_set(run_dir: Location, data_dir: Where, config: SFBDConfig) -> Location:
    manifest = read_manifest(data_dir)
    if manifest["source"] != "toy2d":
        raise ValueError("baseline: all-clean is available for the synthetic toy2d only")
    out = run_dir / "baselines" / "all_clean_data"
    if not is_complete(out):
        src = load_source("toy2d", num=config.data.num, seed=config.data.seed)
        tmp = stage_dir(out)
        import numpy as np

        write_shards(tmp, np.arange(len(src.items)), src.items, 1 << 20)
        publish_dir(tmp, out, {"count": len(src.items)})
    return out


def run_baseline(kind: str, run_dir: Where, data_dir: Where, config: SFBDConfig) -> dict:
    """Train and evaluate one baseline; a completed one is read back, not redone."""
    from sfbd.stages.evaluate import compute_metrics, generate_with_ray
    from sfbd.stages.refit import run_train

    if kind not in KINDS:
        raise ValueError(f"baseline: unknown kind {kind!r}; allowed: {', '.join(KINDS)}")
    run_dir, data_dir = Location.of(run_dir), Location.of(data_dir)
    result_path = run_dir / "baselines" / f"{kind}.json"
    if result_path.is_file():
        return read_json(result_path)
    path = data_dir / "noisy" if kind == "noisy" else _all_clean_set(run_dir, data_dir, config)
    shape = tuple(read_manifest(data_dir)["item_shape"])
    kimg = config.train.pretrain_kimg + config.iterations * config.train.refit_kimg
    ckpt = run_dir / "baselines" / f"{kind}.pt"
    if not checkpoint_complete(ckpt):
        summary = run_train(
            f"baseline_{kind}",
            ckpt,
            run_dir / "train",
            config.train,
            config.network,
            [{"path": str(path), "weight": None}],
            shape,
            kimg,
            config.seed,
        )
    else:
        summary = {"kimg": kimg}
    samples = generate_with_ray(ckpt, config.eval)
    gpus = 1 if ray.cluster_resources().get("GPU", 0) >= 1 else 0
    task = ray.remote(compute_metrics).options(num_cpus=1, num_gpus=gpus)
    record = ray.get(
        task.remote(
            str(run_dir / "grids"),
            f"baseline_{kind}",
            str(data_dir),
            samples,
            config.eval,
            None,
            str(run_dir / "cache"),
        )
    )
    row = {"baseline": kind, "kimg": kimg, "train_loss": summary.get("loss"), **record}
    write_json_atomic(result_path, row)
    return row
