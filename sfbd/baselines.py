"""The comparison rows of the paper's experiments, trained with the same train stage:

- `noisy`: a model trained directly on the noisy observations as if they were clean;
- `clean-only`: pretraining (the clean set alone) for the whole SFBD budget, so that SFBD's
  gain is not mistaken for the extra training its refits add;
- `all-clean`: a model trained on every original item, the clean set and the originals of the
  noisy part. Those originals are never written anywhere by the pipeline, so this baseline
  hands the train workers a source (`sfbd.stages.refit.TrainSet`) and they read the data
  set straight from where it lives (the toy is regenerated from its seed).

Each trains for the whole SFBD budget (pretrain_kimg + iterations done * refit_kimg) and is
evaluated like an iteration; results land in the run directory's `baselines/`.
"""

from __future__ import annotations

from pathlib import Path

from sfbd.config import BASELINE_KINDS, SFBDConfig
from sfbd.data.sources import load_source
from sfbd.data.store import read_manifest
from sfbd.rundir import RunDir
from sfbd.runfiles import checkpoint_complete, read_json, write_json_atomic
from sfbd.stages.refit import TrainSet
from sfbd.storage import Location, Where

KINDS = BASELINE_KINDS
SPLIT_OF = {"noisy": "noisy", "clean-only": "clean"}  # the kinds that train on a prepared split


def all_clean_set(data_dir: Where, config: SFBDConfig) -> TrainSet:
    """The train set of every original item behind prepared data: its source, read again
    (never copied into the run). Checked here, before any training, against the manifest's
    item count and shape."""
    manifest = read_manifest(data_dir)
    made = manifest.get("config") or {}
    spec = made.get("dataset", manifest["source"])
    kind, _, path = spec.partition(":")
    if kind in ("npz", "folder", "zip") and path and "://" not in path:
        spec = f"{kind}:{Path(path).resolve()}"  # workers may run in another directory
    source = {
        "spec": spec,
        "root": config.data.root,  # not part of the manifest: where this cluster keeps it
        "limit": made.get("limit"),
        "num": made.get("num", config.data.num),
        "seed": made.get("seed", manifest["seed"]),
        "resolution": made.get("resolution"),
    }
    try:
        src = load_source(**source)
    except (ValueError, OSError) as exc:
        raise ValueError(f"baseline: all-clean needs the original data set: {exc}") from exc
    count = manifest["num_items"]
    if len(src.items) != count or list(src.item_shape) != manifest["item_shape"]:
        raise ValueError(
            f"baseline: all-clean: {spec} now holds {len(src.items)} items of shape "
            f"{list(src.item_shape)}, the prepared data {data_dir} was made from "
            f"{count} of shape {manifest['item_shape']}"
        )
    return TrainSet(source=source, count=count)


def budget_kimg(run: RunDir, config: SFBDConfig) -> float:
    """The baselines' training budget: the SFBD run's, pretrain_kimg + its iterations x
    refit_kimg, with fewer iterations after an early stop (`iterations: auto`)."""
    done = run.read_state().get("stopped_early", {}).get("iteration", config.iterations)
    return config.train.pretrain_kimg + done * config.train.refit_kimg


def run_baseline(kind: str, run_dir: Where, data_dir: Where, config: SFBDConfig) -> dict:
    """Train and evaluate one baseline; a completed one is read back, not redone."""
    from sfbd.stages.evaluate import evaluate_on_ray
    from sfbd.stages.refit import TrainJob, run_train

    if kind not in KINDS:
        raise ValueError(f"baseline: unknown kind {kind!r}; allowed: {', '.join(KINDS)}")
    run, data_dir = RunDir(run_dir), Location.of(data_dir)
    result_path = run.baseline_result(kind)
    if result_path.is_file():
        return read_json(result_path)
    shape = tuple(read_manifest(data_dir)["item_shape"])
    kimg = budget_kimg(run, config)
    ckpt = run.baseline_checkpoint(kind)
    summary = {"kimg": kimg}
    if not checkpoint_complete(ckpt):
        if kind in SPLIT_OF:
            train_set = TrainSet(path=str(data_dir / SPLIT_OF[kind]))
        else:
            train_set = all_clean_set(data_dir, config)
        job = TrainJob(
            stage=f"baseline_{kind}",
            train=config.train,
            network=config.network,
            sets=[train_set],
            item_shape=shape,
            kimg=kimg,
            seed=config.seed,
            storage=str(run.train),
        )
        summary = run_train(job, ckpt)
    record = evaluate_on_ray(
        run, f"baseline_{kind}", ckpt, data_dir, config.eval, name=f"evaluate_baseline_{kind}"
    )
    row = {"baseline": kind, "kimg": kimg, "train_loss": summary.get("loss"), **record}
    if summary.get("set_sizes"):
        row["train_items"] = int(sum(summary["set_sizes"]))
    write_json_atomic(result_path, row)
    return row
