"""Files of a run, on any `Location`: atomic JSON, stage outputs marked complete by a record
written last, checkpoints with a sha256 beside them, and Parquet folders checked against the
digests their completion record lists, so corrupted or truncated files are refused with a
clear error instead of being trained on."""

from __future__ import annotations

import io
import json

import pyarrow as pa
import pyarrow.parquet as pq

from sfbd.storage import Location, Where

COMPLETE = "_COMPLETE.json"
DIGEST_SUFFIX = ".sha256"


def write_json_atomic(path: Where, obj) -> None:
    Location.of(path).write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n")


def read_json(path: Where) -> dict:
    return json.loads(Location.of(path).read_text())


def is_complete(directory: Where) -> bool:
    return (Location.of(directory) / COMPLETE).is_file()


def stage_dir(final: Where) -> Location:
    """Where a stage writes the folder `final`: an empty `<final>.tmp` beside it on a local
    file system (renamed into place by `publish_dir`); on an object store, which cannot rename
    folders, `final` itself, emptied, whose completion record is then the commit point."""
    final = Location.of(final)
    tmp = final.with_suffix_name(".tmp") if final.local is not None else final
    tmp.remove()
    tmp.mkdir()
    return tmp


def publish_dir(tmp: Where, final: Where, record: dict) -> None:
    """Record the sha256 of every file in `tmp`, mark it complete and move it to `final`."""
    tmp, final = Location.of(tmp), Location.of(final)
    files = {f.name: f.sha256() for f in tmp.children() if f.name != COMPLETE}
    write_json_atomic(tmp / COMPLETE, {**record, "files": files})
    if tmp.path != final.path:
        final.remove()
        tmp.move_to(final)


def parquet_files(directory: Where) -> list[Location]:
    """The Parquet files of a folder, checked against the sha256 digests that its completion
    record (a stage output) or the data manifest one level up (a prepared split) lists."""
    directory = Location.of(directory)
    files = directory.children(".parquet")
    if not files:
        raise FileNotFoundError(f"data: no Parquet files in {directory}")
    from sfbd.data.store import MANIFEST

    expected = None
    record_path, manifest_path = directory / COMPLETE, directory.parent / MANIFEST
    if record_path.is_file():
        expected = read_json(record_path).get("files")
    elif manifest_path.is_file():
        split = read_json(manifest_path).get("splits", {}).get(directory.name)
        if split is not None:
            expected = {s["file"]: s["sha256"] for s in split["shards"]}
    if expected is not None:
        check_digests(directory, files, expected)
    return files


def check_digests(directory: Location, files: list[Location], expected: dict) -> None:
    names = {f.name for f in files}
    missing = sorted(set(expected) - names - {COMPLETE})
    if missing:
        raise FileNotFoundError(f"data: {directory / missing[0]} listed as written is missing")
    unknown = sorted(names - set(expected))
    if unknown:
        raise ValueError(f"data: {directory / unknown[0]} was not written by the pipeline")
    for f in files:
        if f.sha256() != expected[f.name]:
            raise ValueError(
                f"data: {f} does not match the sha256 recorded when it was written "
                f"(corrupted or truncated); delete {directory} to recompute it"
            )


def read_parquet(files: list[Location]) -> pa.Table:
    tables = []
    for f in files:
        try:
            tables.append(pq.read_table(io.BytesIO(f.read_bytes())))
        except pa.ArrowException as exc:
            raise ValueError(f"data: {f} is not a readable Parquet file ({exc})") from exc
    return pa.concat_tables(tables)


# -- checkpoints ---------------------------------------------------------------------------------


def save_checkpoint(path: Where, payload: bytes) -> None:
    """Write checkpoint bytes, then their sha256 beside them (the sidecar marks it complete)."""
    import hashlib

    path = Location.of(path)
    digest_path = path.with_suffix_name(DIGEST_SUFFIX)
    digest_path.remove()
    path.write_bytes(payload)
    digest_path.write_text(hashlib.sha256(payload).hexdigest() + "\n")


def checkpoint_complete(path: Where) -> bool:
    path = Location.of(path)
    return path.is_file() and path.with_suffix_name(DIGEST_SUFFIX).is_file()


def read_checkpoint(path: Where) -> bytes:
    """Checkpoint bytes, checked against their sha256 when the sidecar exists."""
    import hashlib

    path = Location.of(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint: {path} does not exist")
    data = path.read_bytes()
    digest_path = path.with_suffix_name(DIGEST_SUFFIX)
    if (
        digest_path.is_file()
        and hashlib.sha256(data).hexdigest() != digest_path.read_text().strip()
    ):
        raise ValueError(
            f"checkpoint: {path} does not match its sha256 (corrupted or truncated); "
            f"delete it and its {DIGEST_SUFFIX} file to recompute the stage"
        )
    return data


def save_denoiser_at(path: Where, denoiser, config, **extra) -> None:
    from sfbd.diffusion.networks import denoiser_payload

    save_checkpoint(path, denoiser_payload(denoiser, config, **extra))


def load_denoiser_at(path: Where, map_location="cpu"):
    """`(denoiser, config, payload)` from a verified checkpoint anywhere."""
    from sfbd.diffusion.networks import denoiser_from_payload

    return denoiser_from_payload(read_checkpoint(path), str(path), map_location)
