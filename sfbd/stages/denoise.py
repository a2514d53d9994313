"""The denoise stage: SFBD's backward sampling over the whole noisy set with Ray Data.

The calling process (the orchestrator) never holds the noisy or the denoised set: it lists
the input ids from the shards' `id` column alone, hands Ray Data one small block per shard
naming the file (`sfbd.stages.blocks`), and reading tasks of a fraction of a CPU each load one
shard (checked against the manifest's sha256). `backward_denoise` runs as a batched
`map_batches` over an actor pool whose actors load the current EMA weights once; they write
Parquet keyed by id, in `denoise.out_dtype`, with per-item statistic columns beside `x`
(`STAT_COLUMNS`). The stage then checks, from the `id` column alone, that exactly the ids
that went in came out, each once, and sums the statistic columns into the completion
record's stats, before the output is published. While it runs, a line every 10 s tells the
items written so far, the rate and the time left.

What the stage holds at once (`resources`) is the actor pool plus `IO_CPUS` for reading and
writing (half each). Ray 2.60's `read_parquet` would start a listing task of a whole CPU per
file, which cannot be made smaller, and `ray.data.from_arrow` a metadata task of a whole CPU
per block; neither is used. The dataset's Ray Data budget is capped at that amount, so that
the stages of concurrent sweep trials can all hold theirs at once (see `sfbd.sweep`).
"""

from __future__ import annotations

import hashlib
import io
import time
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import ray
import torch
from ray.data import ExecutionResources

from sfbd.config import DenoiseConfig
from sfbd.data.store import items_table, read_manifest, table_items
from sfbd.diffusion.samplers import backward_denoise, network_evaluations
from sfbd.progress import Ticker
from sfbd.runfiles import (
    Where,
    is_complete,
    load_denoiser_at,
    parquet_files,
    publish_dir,
    read_parquet,
    stage_dir,
)
from sfbd.stages.blocks import dataset_from_tables
from sfbd.storage import Location

IO_CPUS = 0.25  # the reading tasks' and the writing task's share (half each)
# Per-item statistics the actors write beside `x`, of the stored (decoded) values: the stage's
# stats come from them without reading the items back.
STAT_COLUMNS = ("x_sum", "x_sumsq", "x_min", "x_max", "x_outside")


def item_stats(x: np.ndarray) -> dict[str, np.ndarray]:
    """`STAT_COLUMNS` of items `x` (one row per item): sum and sum of squares (float64),
    minimum, maximum, and how many elements lie outside [-1, 1]."""
    flat = x.reshape(len(x), -1)
    wide = flat.astype(np.float64)
    return {
        "x_sum": wide.sum(axis=1),
        "x_sumsq": np.square(wide).sum(axis=1),
        "x_min": flat.min(axis=1).astype(np.float32),
        "x_max": flat.max(axis=1).astype(np.float32),
        "x_outside": (np.abs(flat) > 1).sum(axis=1).astype(np.int64),
    }


def read_shard(batch: pa.Table) -> pa.Table:
    """Ray Data function: the `id`, `x` rows of the shards a batch names (`path`), each
    checked against its `sha256` from the data manifest."""
    tables = []
    for path, digest in zip(
        batch.column("path").to_pylist(), batch.column("sha256").to_pylist(), strict=True
    ):
        data = Location.of(path).read_bytes()
        if hashlib.sha256(data).hexdigest() != digest:
            raise ValueError(
                f"data: shard {path} does not match its manifest sha256 "
                f"(changed or truncated); prepare the data again"
            )
        tables.append(pq.read_table(io.BytesIO(data), columns=["id", "x"]))
    return pa.concat_tables(tables)


def sample_seed(seed: int, iteration: int, item_id: int) -> int:
    """The SDE's seed for one item: a function of (seed, iteration, id) alone."""
    digest = hashlib.blake2b(f"{seed}/{iteration}/{item_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & ((1 << 63) - 1)


@dataclass
class DenoiseTask:
    """What every denoise actor needs: the denoiser, the channel and the backward pass."""

    checkpoint: str
    tau: float
    item_shape: tuple[int, ...]
    config: DenoiseConfig
    seed: int
    iteration: int
    metric_tags: dict | None = None  # tags of the images-denoised counter; None: no metric


class DenoiseBatch:
    """Ray Data callable class: holds the denoiser; maps a batch of (id, y) to (id, x0) in
    `denoise.out_dtype`, with x0's `STAT_COLUMNS`."""

    def __init__(self, task: DenoiseTask):
        if task.config.threads > 0:
            torch.set_num_threads(task.config.threads)
        self.task = task
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.denoiser, _, _ = load_denoiser_at(task.checkpoint, map_location=self.device)
        if task.config.compile:  # compiled on the first batch; a shorter last batch recompiles
            self.denoiser = torch.compile(self.denoiser)
        self.counter, self.tags = None, None
        if task.metric_tags is not None:
            from sfbd.telemetry import images_denoised

            self.counter = images_denoised()
            self.tags = {**task.metric_tags, "iteration": str(task.iteration)}

    def __call__(self, batch: pa.Table) -> pa.Table:
        task, c = self.task, self.task.config
        ids, y = table_items(batch, task.item_shape)
        generator = None
        if c.stochastic:
            generator = [
                torch.Generator(self.device).manual_seed(
                    sample_seed(task.seed, task.iteration, int(i))
                )
                for i in ids
            ]
        y_t = torch.from_numpy(y)
        if self.device.type == "cuda":  # pinned: the copy runs asynchronously to the GPU's work
            y_t = y_t.pin_memory().to(self.device, non_blocking=True)
        with torch.autocast(self.device.type, torch.bfloat16, enabled=self.device.type == "cuda"):
            x = backward_denoise(
                self.denoiser,
                y_t,
                task.tau,
                c.steps,
                stochastic=c.stochastic,
                generator=generator,
                sigma_min=c.sigma_min,
            )
        out = items_table(ids, x.float().cpu().numpy(), c.out_dtype)
        for name, values in item_stats(table_items(out, task.item_shape)[1]).items():
            out = out.append_column(name, pa.array(values))
        if self.counter is not None:
            self.counter.inc(len(ids), tags=self.tags)
        return out


@dataclass
class DenoiseResult:
    count: int
    seconds: float
    images_per_s: float
    evaluations_per_s: float
    stats: dict


class RowCounter:
    """Rows in the Parquet files written so far to a folder (for progress lines); each
    file's footer is read once, files still being written are counted later."""

    def __init__(self, directory: Location):
        self.directory, self.rows = directory, {}

    def __call__(self) -> int:
        import pyarrow.parquet as pq

        for f in self.directory.children(".parquet"):
            if f.name not in self.rows:
                try:
                    with f.fs.open_input_file(f.path) as handle:
                        self.rows[f.name] = pq.ParquetFile(handle).metadata.num_rows
                except (OSError, pa.ArrowInvalid):
                    pass
        return sum(self.rows.values())


def _ids_digest(ids: np.ndarray) -> str:
    return hashlib.sha256(np.sort(ids).astype(np.int64).tobytes()).hexdigest()


def actor_resources(config: DenoiseConfig, cluster: dict | None = None) -> tuple[int, dict]:
    """(pool size, per-actor resources) from the config and the cluster's GPUs."""
    gpus = int((cluster if cluster is not None else ray.cluster_resources()).get("GPU", 0))
    if gpus:
        size = config.num_actors or max(1, int(gpus / config.gpus_per_actor))
        return size, {"num_gpus": config.gpus_per_actor, "num_cpus": config.cpus_per_actor}
    return config.num_actors or 1, {"num_cpus": config.cpus_per_actor}


def resources(config: DenoiseConfig, cluster: dict) -> dict:
    """The most the stage holds at once: its actors, and reading and writing tasks."""
    size, res = actor_resources(config, cluster)
    return {"CPU": size * res["num_cpus"] + IO_CPUS, "GPU": size * res.get("num_gpus", 0)}


def run_denoise(
    data_dir: Where,
    checkpoint: Where,
    out_dir: Where,
    config: DenoiseConfig,
    seed: int,
    iteration: int,
    log=print,
    metric_tags: dict | None = None,
    batch_class: type[DenoiseBatch] = DenoiseBatch,
) -> DenoiseResult:
    """Denoise every noisy item with the denoiser in `checkpoint`; publish `out_dir`.
    `batch_class` is the actors' class (a subclass may record timings, as the benchmark's)."""
    manifest = read_manifest(data_dir)
    tau, shape = float(manifest["tau"]), tuple(manifest["item_shape"])
    shards = manifest["splits"]["noisy"]["shards"]
    files = [Location.of(data_dir) / "noisy" / s["file"] for s in shards]
    t0 = time.time()
    in_ids = read_ids(files)
    size, res = actor_resources(config)
    log(
        f"denoise {iteration:03d}: {len(in_ids)} items, tau={tau}, {config.steps} levels "
        f"({network_evaluations(config.steps)} evaluations each), "
        f"{'SDE' if config.stochastic else 'ODE'}, {size} actor(s) {res}"
    )
    out_dir = Location.of(out_dir)
    tmp = stage_dir(out_dir)
    # One block per shard naming its file (no listing or metadata tasks); reading and writing
    # get fractions of a CPU, so that they can run beside actors that hold whole CPUs.
    names = [
        pa.table({"path": [str(f)], "sha256": [s["sha256"]]})
        for f, s in zip(files, shards, strict=True)
    ]
    ds = dataset_from_tables(names).map_batches(
        read_shard, batch_size=1, batch_format="pyarrow", num_cpus=IO_CPUS / 2
    )
    task = DenoiseTask(str(checkpoint), tau, shape, config, seed, iteration, metric_tags)
    ds = ds.map_batches(
        batch_class,
        fn_constructor_args=(task,),
        batch_size=config.batch_size,
        batch_format="pyarrow",
        compute=ray.data.ActorPoolStrategy(size=size),
        **res,  # Ray Data spreads the actors over the nodes (one per GPU node) by default
    )
    # Ray Data sizes its budget to the whole cluster; cap it at what the stage may hold.
    cap = resources(config, ray.cluster_resources())
    ds.context.execution_options.resource_limits = ExecutionResources(
        cpu=cap["CPU"], gpu=cap["GPU"]
    )
    ds.set_name(f"denoise_{iteration:03d}")
    with Ticker(f"denoise {iteration:03d}", RowCounter(tmp), len(in_ids), "items", log):
        ds.write_parquet(tmp.path, filesystem=tmp.fs, ray_remote_args={"num_cpus": IO_CPUS / 2})
    seconds = time.time() - t0

    out_ids, stats = _check_output(tmp, in_ids, shape)
    rate = len(out_ids) / seconds
    result = DenoiseResult(
        len(out_ids), seconds, rate, rate * network_evaluations(config.steps), stats
    )
    publish_dir(
        tmp,
        out_dir,
        {
            "count": result.count,
            "ids_sha256": _ids_digest(out_ids),
            "iteration": iteration,
            "seconds": seconds,
            "stats": stats,
        },
    )
    log(
        f"denoise {iteration:03d}: {result.count} items in {seconds:.1f}s "
        f"({rate:.1f} items/s, {result.evaluations_per_s:.0f} evaluations/s)"
    )
    return result


def read_ids(files: list[Location]) -> np.ndarray:
    """The `id` column of Parquet files, read alone (the items stay on disk)."""
    if not files:
        return np.zeros(0, np.int64)
    return np.concatenate(
        [
            pq.read_table(f.path, filesystem=f.fs, columns=["id"]).column("id").to_numpy()
            for f in files
        ]
    ).astype(np.int64)


def _check_output(
    directory: Location, in_ids: np.ndarray, shape: tuple[int, ...]
) -> tuple[np.ndarray, dict]:
    """Every input id exactly once in the output, and summary statistics of the items, from
    the `id` and `STAT_COLUMNS` columns alone."""
    files = parquet_files(directory)
    out_ids = read_ids(files)
    unique, counts = np.unique(out_ids, return_counts=True)
    missing = np.setdiff1d(in_ids, unique)
    extra = np.setdiff1d(unique, in_ids)
    dup = unique[counts > 1]
    if len(missing) or len(extra) or len(dup):
        raise RuntimeError(
            f"denoise: output does not match input ids ({len(in_ids)} in, {len(out_ids)} out; "
            f"{len(missing)} missing, {len(dup)} duplicated, {len(extra)} unknown)"
        )
    # File by file: the sums, minima and maxima of the per-item columns (the ids are the only
    # per-item values held for the whole set).
    totals = {name: [] for name in STAT_COLUMNS}
    for f in files:
        table = pq.read_table(f.path, filesystem=f.fs, columns=list(STAT_COLUMNS))
        for name in STAT_COLUMNS:
            column = table.column(name).to_numpy()
            if len(column):
                reduce = {"x_min": np.min, "x_max": np.max}.get(name, np.sum)
                totals[name].append(reduce(column))
    return out_ids, stats_from_columns(
        {name: np.asarray(values) for name, values in totals.items()},
        int(np.prod(shape)),
        len(out_ids),
    )


def stats_from_columns(
    columns: dict[str, np.ndarray], item_size: int, count: int | None = None
) -> dict:
    """The completion record's stats (mean, std, min, max, outside_unit_range over every
    element of every item) from the `STAT_COLUMNS` of `count` items of `item_size` elements:
    per item, or already summed (minimum, maximum) per file, with `count` given."""
    n = (len(columns["x_sum"]) if count is None else count) * item_size
    mean = float(columns["x_sum"].sum()) / n
    return {
        "mean": mean,
        "std": float(np.sqrt(max(float(columns["x_sumsq"].sum()) / n - mean * mean, 0.0))),
        "min": float(columns["x_min"].min()),
        "max": float(columns["x_max"].max()),
        "outside_unit_range": float(columns["x_outside"].sum()) / n,
    }


def read_denoised(directory: Where, shape: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    """All denoised items of a published stage output (verified): (ids, items), sorted by id."""
    if not is_complete(directory):
        raise FileNotFoundError(f"denoise: {directory} is not a completed denoise output")
    ids, x = table_items(read_parquet(parquet_files(directory)), shape)
    order = np.argsort(ids)
    return ids[order], x[order]
