"""Prepare a data set once: load, split into clean/noisy, write shards and the manifest."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from sfbd.data.sources import check_dataset_spec, load_source
from sfbd.data.split import check_split_args, observe, split_indices
from sfbd.data.store import MANIFEST, read_manifest, write_manifest, write_shards
from sfbd.storage import Location, Where

DATA_FORMAT = "sfbd-data-v1"


@dataclass
class DataConfig:
    """What `sfbd prepare` takes, and the run config's `data` section (Lu, Wu & Yu 2025,
    Sec. 3: a clean fraction of the source is kept clean, the rest observed as
    y = x + tau * eps)."""

    dataset: str = "fashion-mnist"
    clean_fraction: float = 0.04
    tau: float = 0.59  # observation noise, pixels in [-1, 1] (EDM's sigma is the diffusion level)
    seed: int = 0
    root: str | None = None  # where torchvision data sets live or are downloaded to
    limit: int | None = None  # keep only the first `limit` items of the source
    num: int = 20000  # items of the synthetic toy2d set
    shard_size: int = 8192

    def validate(self) -> None:
        check_split_args(self.clean_fraction, self.tau)
        check_dataset_spec(self.dataset)
        if self.shard_size < 1:
            raise ValueError(f"shard_size: {self.shard_size}; must be >= 1")
        if self.limit is not None and self.limit < 2:
            raise ValueError(f"limit: {self.limit}; must be >= 2 (one clean, one noisy item)")
        if self.num < 2:
            raise ValueError(f"num: {self.num}; must be >= 2")

    def identity(self) -> dict:
        """The fields that determine the prepared content."""
        return {k: v for k, v in asdict(self).items() if k not in ("root", "shard_size")}


def _same_identity(recorded: dict | None, config: DataConfig) -> bool:
    """Data prepared before the rename recorded the noise level as `sigma`."""
    if recorded is None:
        return False
    recorded = dict(recorded)
    if "sigma" in recorded and "tau" not in recorded:
        recorded["tau"] = recorded.pop("sigma")
    recorded.pop("out", None)
    return recorded == config.identity()


def prepare(config: DataConfig, out: Where, log=print) -> Location:
    """Write the prepared directory `out` (a path or URI); a complete identical one is kept
    as is. The manifest is written last: a folder without one is not prepared data."""
    config.validate()
    out = Location.of(out)
    if (out / MANIFEST).is_file():
        if _same_identity(read_manifest(out).get("config"), config):
            log(f"data: {out} already prepared with these settings; nothing to do")
            return out
        raise FileExistsError(
            f"out: {out} holds data prepared with other settings; choose another --out"
        )
    if out.children():
        raise FileExistsError(f"out: {out} exists, is not empty and has no {MANIFEST}")
    out.parent.check_writable("out")

    src = load_source(
        config.dataset, root=config.root, limit=config.limit, num=config.num, seed=config.seed
    )
    clean_ids, noisy_ids = split_indices(len(src.items), config.clean_fraction, config.seed)
    log(
        f"data: {src.name}: {len(src.items)} items of shape {src.item_shape}; "
        f"{len(clean_ids)} clean, {len(noisy_ids)} noisy at tau={config.tau}"
    )

    # Locally the folder is filled under a temporary name and renamed into place.
    tmp = out.with_suffix_name(".tmp") if out.local is not None else out
    if tmp is not out:
        tmp.remove()
    try:
        clean = write_shards(tmp / "clean", clean_ids, src.items[clean_ids], config.shard_size)
        noisy_y = observe(src.items[noisy_ids], noisy_ids, config.tau, config.seed)
        noisy = write_shards(tmp / "noisy", noisy_ids, noisy_y, config.shard_size)
        manifest = {
            "format": DATA_FORMAT,
            "source": src.name,
            "kind": src.kind,
            "item_shape": list(src.item_shape),
            "num_items": len(src.items),
            "tau": config.tau,
            "seed": config.seed,
            "clean_fraction": config.clean_fraction,
            "splits": {
                "clean": {"count": len(clean_ids), "shards": clean},
                "noisy": {"count": len(noisy_ids), "shards": noisy},
            },
            "config": config.identity(),
        }
        write_manifest(tmp, manifest)
        if tmp is not out:
            out.remove()  # empty, checked above
            tmp.move_to(out)
    finally:
        if tmp is not out:
            tmp.remove()
    log(f"data: wrote {out} ({len(clean)} clean and {len(noisy)} noisy shards)")
    return out
