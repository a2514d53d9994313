"""The prepared-data store: Parquet shards with integer ids plus `manifest.json`.

Layout of a prepared directory:

    manifest.json            source, counts, tau, seed, item shape, shard list with sha256,
                             each split's `encoding`
    clean/part-00000.parquet columns `id` (int64) and `x`, one item per row (encodings below)
    noisy/part-00000.parquet the same columns; `x` holds y = x + tau * eps
    holdout/part-...parquet  noisy observations held out of training (`data.holdout_fraction`;
                             absent in data prepared before it existed: none held out)

Encodings of `x` (`ENCODINGS`), told apart by the column's Arrow type, so any shard reads
without its manifest (`table_items` decodes all of them to float32):

- `float32`: fixed_size_list<float32>[prod(shape)] (all data prepared before encodings);
- `float16`: fixed_size_list<float16>[prod(shape)] (`data.noisy_dtype`, `denoise.out_dtype`);
- `uint8`: fixed_size_binary[prod(shape)] of 8-bit pixel codes q, x = q / 127.5 - 1: chosen
  for clean image items when that reproduces them bit for bit (8-bit sources), a quarter of
  float32's bytes. A binary column, because Parquet stores a list of uint8 as 32-bit integers.

Shards are uncompressed and plain-encoded (no dictionary): the noisy items are
incompressible anyway, and it keeps the bytes on disk the bytes of the encoded items, so a
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


ENCODINGS = ("float32", "float16", "uint8")


def _check_encoding(encoding: str) -> None:
    if encoding not in ENCODINGS:
        raise ValueError(f"encoding: {encoding!r}; allowed: {', '.join(ENCODINGS)}")


def pixel_codes(items: np.ndarray) -> np.ndarray | None:
    """The uint8 codes q with q / 127.5 - 1 == items exactly (float32), or None when some
    item is not such a code (not from an 8-bit source, or any other value)."""
    x = np.asarray(items, dtype=np.float32)
    if not np.isfinite(x).all() or (x.size and (x.min() < -1 or x.max() > 1)):
        return None
    q = np.rint((x.astype(np.float64) + 1) * 127.5).astype(np.uint8)
    return q if np.array_equal(decode_codes(q), x) else None


def decode_codes(q: np.ndarray) -> np.ndarray:
    """Pixel codes to float32 items: exactly what the sources compute from 8-bit images."""
    return q.astype(np.float32) / 127.5 - 1.0


def auto_encoding(items: np.ndarray, kind: str) -> str:
    """`uint8` for image items that round-trip exactly through pixel codes, else `float32`."""
    return "uint8" if kind == "image" and pixel_codes(items) is not None else "float32"


def items_table(ids: np.ndarray, items: np.ndarray, encoding: str = "float32") -> pa.Table:
    """An Arrow table `id`, `x` with each item flattened into one row of `encoding`
    (`uint8` only for items that are exact pixel codes: anything else is refused)."""
    _check_encoding(encoding)
    n = len(items)
    flat = np.asarray(items).reshape(n, -1)
    width = flat.shape[1]
    if encoding == "uint8":
        q = pixel_codes(flat)
        if q is None:
            raise ValueError("encoding: uint8 holds 8-bit pixel codes; these items are not")
        x = pa.FixedSizeBinaryArray.from_buffers(
            pa.binary(width), n, [None, pa.py_buffer(np.ascontiguousarray(q).tobytes())]
        )
    else:
        values = np.ascontiguousarray(flat, dtype=np.dtype(encoding)).reshape(-1)
        x = pa.FixedSizeListArray.from_arrays(pa.array(values), width)
    return pa.table({"id": pa.array(ids, pa.int64()), "x": x})


def table_encoding(table: pa.Table) -> str:
    """The encoding of a table's `x` column, from its Arrow type."""
    kind = table.schema.field("x").type
    if pa.types.is_fixed_size_binary(kind):
        return "uint8"
    if pa.types.is_fixed_size_list(kind):
        if pa.types.is_float32(kind.value_type):
            return "float32"
        if pa.types.is_float16(kind.value_type):
            return "float16"
    raise ValueError(f"data: column x of type {kind}; not one of {', '.join(ENCODINGS)}")


def table_items(table: pa.Table, item_shape: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    """Inverse of `items_table`: (int64 ids, float32 items of `item_shape`), whatever the
    encoding; other columns (the denoise stage's statistics) are ignored."""
    ids = table.column("id").to_numpy().astype(np.int64)
    col = table.column("x").combine_chunks()
    if table_encoding(table) == "uint8":
        width = col.type.byte_width
        buf = np.frombuffer(col.buffers()[1], np.uint8)
        q = buf[col.offset * width : (col.offset + len(col)) * width]
        return ids, decode_codes(q).reshape(len(ids), *item_shape)
    values = col.flatten().to_numpy(zero_copy_only=False)
    flat = np.array(values, dtype=np.float32)  # a writable copy
    return ids, flat.reshape(len(ids), *item_shape)


def write_shards(
    directory: Where, ids: np.ndarray, items: np.ndarray, shard_size: int, encoding="float32"
) -> list[dict]:
    """Write `ids`/`items` as shards of at most `shard_size` rows in `encoding`; returns
    their records."""
    directory = Location.of(directory)
    directory.mkdir()
    records = []
    for k, start in enumerate(range(0, len(ids), shard_size)):
        shard = directory / f"part-{k:05d}.parquet"
        rows = slice(start, start + shard_size)
        table = items_table(ids[rows], items[rows], encoding)
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


def split_encoding(directory: Where, split: str) -> str:
    """How one split stores `x` (`float32` for data prepared before encodings existed)."""
    _check_split(split)
    return read_manifest(directory)["splits"].get(split, {}).get("encoding", "float32")


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
