"""The prepared-data store: Parquet shards with integer ids plus `manifest.json`.

Layout of a prepared directory:

    manifest.json            source, counts, tau, seed, item shape, shard list with sha256
    clean/part-00000.parquet columns `id` (int64), `x` (fixed_size_list<float32>[prod(shape)])
    noisy/part-00000.parquet the same columns; `x` holds y = x + tau * eps
    holdout/part-...parquet  noisy observations held out of training (`data.holdout_fraction`;
                             absent in data prepared before it existed: none held out)

Shards are uncompressed and plain-encoded (no dictionary): the noisy items are
incompressible anyway, and it keeps the bytes on disk the float32 bytes of the items, so a
byte search can prove what was written.
"""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from sfbd.storage import Location, Where

MANIFEST = "manifest.json"
SPLITS = ("clean", "noisy", "holdout")


def items_table(ids: np.ndarray, items: np.ndarray) -> pa.Table:
    """An Arrow table `id`, `x` with each item flattened into a fixed-size float32 list."""
    flat = np.ascontiguousarray(items, dtype=np.float32).reshape(len(items), -1)
    x = pa.FixedSizeListArray.from_arrays(pa.array(flat.reshape(-1)), flat.shape[1])
    return pa.table({"id": pa.array(ids, pa.int64()), "x": x})


def table_items(table: pa.Table, item_shape: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    """Inverse of `items_table`: (int64 ids, float32 items of `item_shape`)."""
    ids = table.column("id").to_numpy().astype(np.int64)
    col = table.column("x").combine_chunks()
    flat = np.array(col.flatten().to_numpy(zero_copy_only=False), dtype=np.float32)  # writable
    return ids, flat.reshape(len(ids), *item_shape)


def write_shards(
    directory: Where, ids: np.ndarray, items: np.ndarray, shard_size: int
) -> list[dict]:
    """Write `ids`/`items` as shards of at most `shard_size` rows; returns their records."""
    directory = Location.of(directory)
    directory.mkdir()
    records = []
    for k, start in enumerate(range(0, len(ids), shard_size)):
        shard = directory / f"part-{k:05d}.parquet"
        table = items_table(ids[start : start + shard_size], items[start : start + shard_size])
        pq.write_table(
            table, shard.path, filesystem=shard.fs, compression="none", use_dictionary=False
        )
        records.append({"file": shard.name, "rows": table.num_rows, "sha256": shard.sha256()})
    return records


def write_manifest(directory: Where, manifest: dict) -> None:
    (Location.of(directory) / MANIFEST).write_text(
        json.dumps(manifest, indent=2, sort_keys=True) + "\n"
    )


def read_manifest(directory: Where) -> dict:
    path = Location.of(directory) / MANIFEST
    if not path.is_file():
        raise FileNotFoundError(f"data: {path} missing; is {directory} a prepared data set?")
    return json.loads(path.read_text())


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise ValueError(f"split: {split!r}; allowed: {', '.join(SPLITS)}")


def split_count(directory: Where, split: str) -> int:
    """Items in one split (0 for a holdout split that data prepared before it lacks)."""
    _check_split(split)
    return read_manifest(directory)["splits"].get(split, {"count": 0})["count"]


def shard_paths(directory: Where, split: str) -> list[Location]:
    """The shard files of one split, in manifest order (none for an absent holdout split)."""
    _check_split(split)
    manifest = read_manifest(directory)
    directory = Location.of(directory)
    shards = manifest["splits"].get(split, {"shards": []})["shards"]
    return [directory / split / s["file"] for s in shards]


def verify_split(directory: Where, split: str | None = None) -> None:
    """Check every shard (or those of `split`) against the manifest's sizes and sha256."""
    manifest = read_manifest(directory)
    for name in [split] if split else SPLITS:
        _check_split(name)
        for shard in manifest["splits"].get(name, {"shards": []})["shards"]:
            path = Location.of(directory) / name / shard["file"]
            if not path.is_file():
                raise FileNotFoundError(f"data: shard {path} listed in the manifest is missing")
            if path.sha256() != shard["sha256"]:
                raise ValueError(
                    f"data: shard {path} does not match its manifest sha256 "
                    f"(changed or truncated); prepare the data again"
                )


def read_split(directory: Where, split: str, verify: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """All of one split: (int64 ids, float32 items in their stored shape)."""
    if verify:
        verify_split(directory, split)
    manifest = read_manifest(directory)
    shape = tuple(manifest["item_shape"])
    tables = [pq.read_table(p.path, filesystem=p.fs) for p in shard_paths(directory, split)]
    if not tables:
        return np.zeros(0, np.int64), np.zeros((0, *shape), np.float32)
    return table_items(pa.concat_tables(tables), shape)
