"""The comparison rows of the paper's experiments, trained with the same train stage:

- `noisy`: a model trained directly on the noisy observations as if they were clean;
- `all-clean`: a model trained on every original item, the clean set and the originals of the
  noisy part. Those originals are never written anywhere by the pipeline, so this baseline
  hands the train workers a source spec (`sfbd.stages.refit.load_set`) and they read the data
  set straight from where it lives (the toy is regenerated from its seed).

Each trains for the whole SFBD budget (pretrain_kimg + iterations * refit_kimg) and is
evaluated like an iteration; results land in `<run>/baselines/<kind>.json`.
"""

from __future__ import annotations

from pathlib import Path

import ray

from sfbd.config import SFBDConfig
from sfbd.data.sources import load_source
from sfbd.data.store import read_manifest
from sfbd.runfiles import Where, checkpoint_complete, read_json, write_json_atomic
from sfbd.storage import Location

KINDS = ("noisy", "all-clean")


def all_clean_spec(data_dir: Where, config: SFBDConfig) -> dict:
    """The train-set spec of every original item behind prepared data: its source, read
    again (never copied into the run). Checked here, before any training, against the
    manifest's item count and shape."""
    manifest = read_manifest(data_dir)
    made = manifest.get("config") or {}
    source = made.get("dataset", manifest["source"])
    kind, _, path = source.partition(":")
    if kind in ("npz", "folder") and path:  # workers may run in another directory
        source = f"{kind}:{Path(path).resolve()}"
    spec = {
        "source": source,
        "root": config.data.root,  # not part of the manifest: where this cluster keeps it
        "limit": made.get("limit"),
        "num": made.get("num", config.data.num),
        "seed": made.get("seed", manifest["seed"]),
        "count": manifest["num_items"],
        "weight": None,
    }
    try:
        src = load_source(
            spec["source"],
            root=spec["root"],
            limit=spec["limit"],
            num=spec["num"],
            seed=spec["seed"],
        )
    except (ValueError, OSError) as exc:
        raise ValueError(f"baseline: all-clean needs the original data set: {exc}") from exc
    if len(src.items) != spec["count"] or list(src.item_shape) != manifest["item_shape"]:
        raise ValueError(
            f"baseline: all-clean: {spec['source']} now holds {len(src.items)} items of shape "
            f"{list(src.item_shape)}, the prepared data {data_dir} was made from "
            f"{spec['count']} of shape {manifest['item_shape']}"
        )
    return spec


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
    shape = tuple(read_manifest(data_dir)["item_shape"])
    kimg = config.train.pretrain_kimg + config.iterations * config.train.refit_kimg
    ckpt = run_dir / "baselines" / f"{kind}.pt"
    if not checkpoint_complete(ckpt):
        if kind == "noisy":
            train_set = {"path": str(data_dir / "noisy"), "weight": None}
        else:
            train_set = all_clean_spec(data_dir, config)
        summary = run_train(
            f"baseline_{kind}",
            ckpt,
            run_dir / "train",
            config.train,
            config.network,
            [train_set],
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
    if summary.get("set_sizes"):
        row["train_items"] = int(sum(summary["set_sizes"]))
    write_json_atomic(result_path, row)
    return row
