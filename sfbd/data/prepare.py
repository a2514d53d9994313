"""Prepare a data set once: load, split into clean/noisy, write shards and the manifest."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from sfbd.data.images import image_files_kind
from sfbd.data.sources import (
    NUM_CLASSES,
    Source,
    check_classes,
    check_dataset_spec,
    load_source,
)
from sfbd.data.split import check_split_args, holdout_indices, observe, split_indices
from sfbd.data.store import (
    MANIFEST,
    auto_encoding,
    read_manifest,
    write_manifest,
    write_shards,
)
from sfbd.storage import Location, Where

DATA_FORMAT = "sfbd-data-v1"
NOISY_DTYPES = ("float32", "float16")


@dataclass
class DataConfig:
    """What `sfbd prepare` takes, and the run config's `data` section (Lu, Wu & Yu 2025,
    Sec. 3: a clean fraction of the source is kept clean, the rest observed as
    y = x + tau * eps; or the clean set drawn from a similar data set, `pretrain`)."""

    dataset: str = "fashion-mnist"
    clean_fraction: float = 0.04
    tau: float = 0.59  # observation noise, pixels in [-1, 1] (EDM's sigma is the diffusion level)
    seed: int = 0
    root: str | None = None  # where torchvision data sets live or are downloaded to
    limit: int | None = None  # keep only the first `limit` items of the source
    num: int = 20000  # items of the synthetic toy2d set
    shard_size: int = 8192
    # Share of the noisy observations held out (never denoised or trained on): the reference
    # of the label-free noisy_distance.
    holdout_fraction: float = 0.02
    # A similar data set whose items join the clean set (Sec. 5.2 of the paper: pretraining on
    # a related set); with it clean_fraction may be 0 (all of `dataset` observed noisy).
    pretrain: str | None = None
    pretrain_limit: int | None = None  # keep only the first items of `pretrain`
    # Keep only these labels of `pretrain` (before pretrain_limit): a pretraining set that
    # lacks some of the observed set's classes, e.g. clothes without shoes and bags.
    pretrain_classes: list[int] | None = None
    # Side of the square images of a folder: or zip: data set (each one's centre square is
    # scaled to it); None keeps the images' own size, which must then be one size.
    resolution: int | None = None
    # Storage of the noisy and holdout splits: float32, or float16 (half the bytes; the clean
    # split is stored as 8-bit pixel codes by itself when that is exact, else float32).
    noisy_dtype: str = "float32"

    def validate(self) -> None:
        check_split_args(
            self.clean_fraction, self.tau, self.holdout_fraction, self.pretrain is not None
        )
        check_dataset_spec(self.dataset)
        check_resolution(self.resolution, self.dataset)
        if self.pretrain is not None:
            try:
                check_dataset_spec(self.pretrain)
            except (ValueError, OSError) as exc:
                raise type(exc)(f"pretrain: {exc}") from None
            if self.pretrain_limit is not None and self.pretrain_limit < 1:
                raise ValueError(f"pretrain_limit: {self.pretrain_limit}; must be >= 1")
            try:
                check_classes(self.pretrain_classes, self.pretrain)
            except ValueError as exc:
                raise ValueError(f"pretrain_{exc}") from None
        if self.shard_size < 1:
            raise ValueError(f"shard_size: {self.shard_size}; must be >= 1")
        if self.limit is not None and self.limit < 2:
            raise ValueError(f"limit: {self.limit}; must be >= 2 (one clean, one noisy item)")
        if self.num < 2:
            raise ValueError(f"num: {self.num}; must be >= 2")
        if self.pretrain is None and self.pretrain_limit is not None:
            raise ValueError("pretrain_limit: set, but data.pretrain is not")
        if self.pretrain is None and self.pretrain_classes is not None:
            raise ValueError("pretrain_classes: set, but data.pretrain is not")
        if self.noisy_dtype not in NOISY_DTYPES:
            raise ValueError(
                f"noisy_dtype: {self.noisy_dtype!r}; allowed: {', '.join(NOISY_DTYPES)}"
            )

    def classes_pretraining_lacks(self) -> list[int] | None:
        """The labels no clean item has: those `pretrain_classes` leaves out when every item of
        `dataset` is observed noisy (None when the clean set is not restricted so)."""
        if self.pretrain_classes is None or self.clean_fraction != 0:
            return None
        return sorted(set(range(NUM_CLASSES)) - set(self.pretrain_classes))

    def identity(self) -> dict:
        """The fields that determine the prepared content."""
        return {k: v for k, v in asdict(self).items() if k not in ("root", "shard_size")}


# Keys added to DataConfig since data was first prepared, with the value older data means.
ADDED = {
    "holdout_fraction": 0.0,
    "pretrain": None,
    "pretrain_limit": None,
    "pretrain_classes": None,
    "noisy_dtype": "float32",
    "resolution": None,
}


def check_resolution(resolution, dataset: str) -> None:
    """`data.resolution`: None, or a whole number of pixels for an image folder or zip."""
    if resolution is None:
        return
    if isinstance(resolution, bool) or not isinstance(resolution, int) or resolution < 1:
        raise ValueError(
            f"resolution: {resolution!r}; must be a whole number of pixels >= 1, or null "
            f"(the images' own size)"
        )
    if image_files_kind(dataset) is None:
        raise ValueError(
            f"resolution: {resolution} applies to folder: and zip: image data sets; "
            f"dataset {dataset} keeps its own size (set null)"
        )


def _same_identity(recorded: dict | None, config: DataConfig) -> bool:
    """Data prepared before the rename recorded the noise level as `sigma`."""
    if recorded is None:
        return False
    recorded = {**ADDED, **recorded}
    if "sigma" in recorded and "tau" not in recorded:
        recorded["tau"] = recorded.pop("sigma")
    recorded.pop("out", None)
    return recorded == config.identity()


def load_pretrain(config: DataConfig, like: Source) -> Source:
    """The `pretrain` data set, checked against the observed one's kind and item shape."""
    src = load_source(
        config.pretrain,
        root=config.root,
        limit=config.pretrain_limit,
        classes=config.pretrain_classes,
        num=config.num,
        seed=config.seed + 1,  # a toy drawn apart from the observed one
        resolution=config.resolution if image_files_kind(config.pretrain) else None,
    )
    if src.item_shape != like.item_shape:
        raise ValueError(
            f"pretrain: {config.pretrain} holds items of shape {list(src.item_shape)}; "
            f"data.dataset {config.dataset} has {list(like.item_shape)}"
        )
    return src


def data_manifest(
    config: DataConfig,
    source: str,
    kind: str,
    item_shape: tuple[int, ...],
    num_items: int,
    splits: dict,
    extra: Source | None,
) -> dict:
    """The manifest of prepared data: the source (its name, kind, item shape and size), the
    settings, and `splits` (per split: count, shards, encoding). Written last, it marks the
    data complete."""
    return {
        "format": DATA_FORMAT,
        "source": source,
        "kind": kind,
        "item_shape": list(item_shape),
        "num_items": num_items,
        "tau": config.tau,
        "seed": config.seed,
        "clean_fraction": config.clean_fraction,
        "splits": splits,
        "pretrain": None if extra is None else {"source": extra.name, "count": len(extra.items)},
        "config": config.identity(),
    }


def already_prepared(config: DataConfig, out: Location, log=print) -> bool:
    """True when `out` holds data prepared with these settings; an error when it holds
    anything else, or cannot be written."""
    if (out / MANIFEST).is_file():
        if _same_identity(read_manifest(out).get("config"), config):
            log(f"data: {out} already prepared with these settings; nothing to do")
            return True
        raise FileExistsError(
            f"out: {out} holds data prepared with other settings; choose another --out"
        )
    if out.children():
        raise FileExistsError(f"out: {out} exists, is not empty and has no {MANIFEST}")
    out.parent.check_writable("out")
    return False


def prepare(config: DataConfig, out: Where, log=print) -> Location:
    """Write the prepared directory `out` (a path or URI); a complete identical one is kept
    as is. The manifest is written last: a folder without one is not prepared data."""
    config.validate()
    out = Location.of(out)
    if already_prepared(config, out, log):
        return out

    src = load_source(
        config.dataset,
        root=config.root,
        limit=config.limit,
        num=config.num,
        seed=config.seed,
        resolution=config.resolution,
    )
    extra = load_pretrain(config, src) if config.pretrain is not None else None
    n = len(src.items)
    clean_ids, noisy_ids = split_indices(n, config.clean_fraction, config.seed)
    noisy_ids, holdout_ids = holdout_indices(noisy_ids, config.holdout_fraction, config.seed)
    clean_items = src.items[clean_ids]
    if extra is not None:  # ids after the observed set's: n, n + 1, ...
        clean_ids = np.concatenate([clean_ids, n + np.arange(len(extra.items), dtype=np.int64)])
        clean_items = np.concatenate([clean_items, extra.items])
    log(
        f"data: {src.name}: {n} items of shape {src.item_shape}; {len(clean_ids)} clean"
        + (f" ({len(extra.items)} from {config.pretrain})" if extra is not None else "")
        + f", {len(noisy_ids)} noisy and {len(holdout_ids)} held out at tau={config.tau}"
    )

    # Locally the folder is filled under a temporary name and renamed into place.
    tmp = out.with_suffix_name(".tmp") if out.local is not None else out
    if tmp is not out:
        tmp.remove()
    try:
        clean_encoding = auto_encoding(clean_items, src.kind)
        clean = write_shards(
            tmp / "clean", clean_ids, clean_items, config.shard_size, clean_encoding
        )
        noisy_y = observe(src.items[noisy_ids], noisy_ids, config.tau, config.seed)
        noisy = write_shards(
            tmp / "noisy", noisy_ids, noisy_y, config.shard_size, config.noisy_dtype
        )
        held_y = observe(src.items[holdout_ids], holdout_ids, config.tau, config.seed)
        held = write_shards(
            tmp / "holdout", holdout_ids, held_y, config.shard_size, config.noisy_dtype
        )
        noisy_enc = config.noisy_dtype
        splits = {
            "clean": {"count": len(clean_ids), "shards": clean, "encoding": clean_encoding},
            "noisy": {"count": len(noisy_ids), "shards": noisy, "encoding": noisy_enc},
            "holdout": {"count": len(holdout_ids), "shards": held, "encoding": noisy_enc},
        }
        manifest = data_manifest(
            config, src.name, src.kind, src.item_shape, len(src.items), splits, extra
        )
        write_manifest(tmp, manifest)
        if tmp is not out:
            out.remove()  # empty, checked above
            tmp.move_to(out)
    finally:
        if tmp is not out:
            tmp.remove()
    log(f"data: wrote {out} ({len(clean)} clean, {len(noisy)} noisy, {len(held)} holdout shards)")
    return out
