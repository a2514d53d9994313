"""Preparing image folders and zips (`folder:PATH`, `zip:PATH`) in parallel with Ray Data.

The driver lists the image names (a folder's files, sorted as paths; a zip's members), draws
the split from their count (`split_indices`, `holdout_indices`: the same ids as the
in-process `sfbd.data.prepare.prepare` gives the same folder) and reads the first image for
the item shape. Each split's ids, in order, are cut into blocks of (id, name) rows, one per
shard: `data.shard_size` rows, fewer when their float32 items would pass `BLOCK_BYTES`
(within it, and without `data.pretrain`, the shards are byte for byte those the in-process
path writes). Ray Data tasks of a
quarter CPU each take one block: read and decode its images (a zip is opened once per
block), centre-crop them to `data.resolution`, and write the clean items as they are or the
noisy and held-out ones observed (`observe`, seeded per (seed, id)), as a shard of its own
under `.parts/`. No image passes through the driver. Once every block is written, the
driver moves the shards into `clean/`, `noisy/` and `holdout/` in id order and writes the
manifest last, under the `.tmp` name that is renamed into place (on object stores: into
`out` itself, removed again on failure), so a failure leaves nothing that looks prepared.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from sfbd.data.images import (
    ImageError,
    ImageFiles,
    check_fits,
    image_files_kind,
    image_item,
    list_image_files,
)
from sfbd.data.prepare import (
    DataConfig,
    already_prepared,
    data_manifest,
    load_pretrain,
    prepare,
)
from sfbd.data.sources import Source
from sfbd.data.split import holdout_indices, observe, split_indices
from sfbd.data.store import SPLITS, auto_encoding, decode_codes, write_manifest, write_shards
from sfbd.storage import Location, Where

READ_CPUS = 0.25  # per read task: image decoding runs beside the other work of a small node
BLOCK_BYTES = 64 << 20  # float32 bytes of the items of one block, the most a task holds
PARTS = ".parts"


def prepare_data(config: DataConfig, out: Where, log=print) -> Location:
    """Prepare `config`'s data into `out`: image folders and zips with Ray Data
    (`prepare_images`), every other data set in this process (`sfbd.data.prepare.prepare`)."""
    if image_files_kind(config.dataset) is None:
        return prepare(config, out, log=log)
    return prepare_images(config, out, log=log)


@dataclass(frozen=True)
class _BlockJob:
    """What every block's task needs: small arrays and settings, no images."""

    kind: str
    root: str
    resolution: int | None
    item_shape: tuple[int, ...]
    first_label: str
    tau: float
    seed: int
    shard_size: int
    encodings: dict[str, str]
    parts: str  # the folder the blocks write their shards into


def _write_block(batch: dict[str, np.ndarray], job: _BlockJob) -> dict[str, np.ndarray]:
    """Read, crop and write one block of (split, id, name) rows; returns one record per
    shard (one, unless Ray Data hands several blocks over at once)."""
    ids = batch["id"].astype(np.int64)
    splits = batch["split"].astype(str)
    files = ImageFiles(job.kind, job.root, ())
    codes = np.empty((len(ids), *job.item_shape), np.uint8)
    with files.reader() as reader:
        for row, name in enumerate(batch["name"]):
            label = files.label(str(name))
            item = image_item(reader.read(str(name)), label, job.resolution)
            check_fits(item.shape, label, job.item_shape, job.first_label)
            codes[row] = item
    x = decode_codes(codes)  # exactly the float32 items an in-process load gives
    records: dict[str, list] = {"split": [], "file": [], "first": [], "rows": [], "sha256": []}
    for split in SPLITS:
        mask = splits == split
        if not mask.any():
            continue
        part_ids = ids[mask]
        part = x[mask] if split == "clean" else observe(x[mask], part_ids, job.tau, job.seed)
        scratch = Location.of(job.parts) / f"{split}-{int(part_ids[0]):012d}"
        shards = write_shards(scratch, part_ids, part, job.shard_size, job.encodings[split])
        for k, shard in enumerate(shards):
            records["split"].append(split)
            records["file"].append(f"{scratch.name}/{shard['file']}")
            records["first"].append(int(part_ids[k * job.shard_size]))
            records["rows"].append(shard["rows"])
            records["sha256"].append(shard["sha256"])
    return {
        "split": np.array(records["split"], dtype=str),
        "file": np.array(records["file"], dtype=str),
        "first": np.array(records["first"], dtype=np.int64),
        "rows": np.array(records["rows"], dtype=np.int64),
        "sha256": np.array(records["sha256"], dtype=str),
    }


def _task_error(exc: BaseException) -> ValueError | OSError | None:
    """The bad image (ImageError) or failed read or write (OSError) that a Ray task raised,
    from the exception Ray Data passes on: the one line the CLI prints."""
    seen = set()
    stack = [exc]
    while stack:
        e = stack.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        if isinstance(e, (ImageError, OSError)):
            return e
        stack += [e.__cause__, e.__context__, getattr(e, "cause", None)]
    for line in str(exc).splitlines():  # the task's error, when only its text came back
        if line.strip().startswith(("ImageError: dataset:", "sfbd.data.images.ImageError:")):
            return ImageError(line.split(": ", 1)[1].strip())
    return None


def _block_rows(item_shape: tuple[int, ...]) -> int:
    """The most items of a block (a shard): `BLOCK_BYTES` of float32 items, at least one."""
    return max(1, BLOCK_BYTES // (4 * math.prod(item_shape)))


def _run_blocks(
    files: ImageFiles, split_ids: dict[str, np.ndarray], job: _BlockJob, log
) -> list[dict]:
    import ray

    from sfbd.stages.blocks import dataset_from_tables

    if not ray.is_initialized():
        from sfbd.run import init_ray

        init_ray()
    n = len(files.names)
    rows = job.shard_size
    names = np.array(files.names, dtype=object)
    tables = []
    for split, ids in split_ids.items():
        for a in range(0, len(ids), rows):
            block = ids[a : a + rows]
            tables.append(
                pa.table(
                    {
                        "split": pa.array([split] * len(block), pa.string()),
                        "id": pa.array(block, pa.int64()),
                        "name": pa.array(names[block], pa.string()),
                    }
                )
            )
    t0 = time.time()
    ds = dataset_from_tables(tables).map_batches(
        _write_block,
        batch_size=None,  # one batch per block: one shard
        batch_format="numpy",
        num_cpus=READ_CPUS,
        fn_kwargs={"job": job},
    )
    try:
        records = ds.take_all()
    except Exception as exc:
        found = _task_error(exc)
        if found is not None:
            raise found from None
        raise
    took = time.time() - t0
    log(f"data: read {n} images in {len(tables)} blocks, {took:.1f}s ({n / took:.1f} images/s)")
    return records


def _write_pretrain(
    parts: Location, extra: Source, n: int, shard_size: int, encoding: str
) -> list[dict]:
    """Write the `data.pretrain` items (ids n, n + 1, ... after the folder's) as clean shards
    under `parts`; returns their records."""
    ids = n + np.arange(len(extra.items), dtype=np.int64)
    scratch = parts / "clean-pretrain"
    shards = write_shards(scratch, ids, extra.items, shard_size, encoding)
    return [
        {
            **shard,
            "split": "clean",
            "first": int(ids[k * shard_size]),
            "file": f"{scratch.name}/{shard['file']}",
        }
        for k, shard in enumerate(shards)
    ]


def _place(tmp: Location, split: str, records: list[dict]) -> list[dict]:
    """Move a split's shards from `.parts/` to `split/part-KKKKK.parquet`, in id order."""
    (tmp / split).mkdir()
    mine = sorted((r for r in records if r["split"] == split), key=lambda r: r["first"])
    placed = []
    for k, r in enumerate(mine):
        dest = tmp / split / f"part-{k:05d}.parquet"
        (tmp / PARTS / r["file"]).move_to(dest)
        placed.append({"file": dest.name, "rows": int(r["rows"]), "sha256": r["sha256"]})
    return placed


def prepare_images(config: DataConfig, out: Where, log=print) -> Location:
    """Prepare an image folder or zip (see the module's docstring); returns `out`."""
    config.validate()
    out = Location.of(out)
    if already_prepared(config, out, log):
        return out
    files = list_image_files(config.dataset, config.limit)
    n = len(files.names)
    clean_ids, noisy_ids = split_indices(n, config.clean_fraction, config.seed)
    noisy_ids, holdout_ids = holdout_indices(noisy_ids, config.holdout_fraction, config.seed)
    first_label = files.label(files.names[0])
    with files.reader() as reader:
        shape = image_item(reader.read(files.names[0]), first_label, config.resolution).shape
    extra = None
    if config.pretrain is not None:
        like = Source(config.dataset, np.zeros((0, *shape), np.float32), "image")
        extra = load_pretrain(config, like)
    clean_enc = "uint8" if extra is None else auto_encoding(extra.items, "image")
    log(
        f"data: {config.dataset}: {n} images, items of shape {shape}; {len(clean_ids)} clean"
        + (f" (+{len(extra.items)} from {config.pretrain})" if extra is not None else "")
        + f", {len(noisy_ids)} noisy and {len(holdout_ids)} held out at tau={config.tau}"
    )
    # Locally the folder is filled under a temporary name and renamed into place.
    tmp = out.with_suffix_name(".tmp") if out.local is not None else out
    tmp.remove()  # a .tmp left by a failed run; `out` itself was checked empty
    job = _BlockJob(
        kind=files.kind,
        root=files.root,
        resolution=config.resolution,
        item_shape=tuple(shape),
        first_label=first_label,
        tau=config.tau,
        seed=config.seed,
        shard_size=min(config.shard_size, _block_rows(shape)),
        encodings={"clean": clean_enc, "noisy": config.noisy_dtype, "holdout": config.noisy_dtype},
        parts=str(tmp / PARTS),
    )
    done = False
    try:
        split_ids = {"clean": clean_ids, "noisy": noisy_ids, "holdout": holdout_ids}
        records = _run_blocks(files, split_ids, job, log)
        if extra is not None:
            records += _write_pretrain(tmp / PARTS, extra, n, job.shard_size, clean_enc)
        shards = {split: _place(tmp, split, records) for split in SPLITS}
        (tmp / PARTS).remove()
        counts = {split: len(ids) for split, ids in split_ids.items()}
        counts["clean"] += len(extra.items) if extra is not None else 0
        splits = {
            split: {"count": counts[split], "shards": shards[split], "encoding": enc}
            for split, enc in job.encodings.items()
        }
        manifest = data_manifest(config, config.dataset, "image", shape, n, splits, extra)
        write_manifest(tmp, manifest)
        if tmp is not out:
            out.remove()  # empty, checked above
            tmp.move_to(out)
        done = True
    finally:
        if tmp is not out or not done:
            tmp.remove()  # on an object store, `out`: it held nothing before
    log(f"data: wrote {out} ({', '.join(f'{len(shards[s])} {s}' for s in SPLITS)} shards)")
    return out
