"""How a train stage's workers hold its sets (`train.ingest`): whole in memory, or streamed.

`memory` is the train stage as it always was: every worker loads every set onto its device
and draws each batch from them (`sfbd.diffusion.training.draw_batch`).

`stream` feeds the workers from the sets' Parquet files through Ray Data, so that a worker
holds a few buffers of items, not the sets. Each file-backed set becomes one dataset handed
to the `TorchTrainer` (`datasets=`), split across the workers by Ray Train; a worker reads its
split with `ray.train.get_dataset_shard`. A dataset is one row per file (its path), in an
order drawn afresh for every pass, mapped by a reading task that yields the file in chunks
of `chunk_rows`; the worker shuffles them further in a local buffer of `shuffle_rows`,
decodes each batch with `table_items` (any stored encoding to float32) and moves it to its
device; augmentation stays in the loss, on the device, as in memory mode. Every step draws
how many items come from each set (`mix_counts`, the sets' weights) and takes them from
per-set feeds, each of which starts a new pass, in a new order, when its last one ends.

The reading tasks take `IO_CPUS` of a CPU each, one per set at a time: Ray 2.60's
`read_parquet` starts a listing task of a whole CPU per file, which a machine whose CPUs the
trainer holds may never have free (see `sfbd.stages.blocks`).

A set that is not a Parquet folder (the all-clean baseline's originals, which the pipeline
never writes) stays in memory in either mode.

`auto` (the default) is memory when the sets, counted from their Parquet footers as float32
items, fit `train.ingest_budget_gb` per worker, and stream otherwise. In stream mode the same
budget sizes the buffers: a sixteenth of each set's share for its shuffle buffer.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from sfbd.data.store import table_items
from sfbd.diffusion.training import TrainConfig, check_ingest, mix_counts, step_rng, step_seed
from sfbd.runfiles import parquet_files
from sfbd.storage import Location

if TYPE_CHECKING:
    from sfbd.stages.refit import TrainSet

IO_CPUS = 0.25  # each set's reading task: a share of a CPU, never a whole one
# A feed's data memory (its shuffle buffer, Ray Data's copies of it, the blocks and batches
# in flight) measured at 5-8x its shuffle buffer: the buffer gets a sixteenth of its share.
SHUFFLE_SHARE = 16
MAX_SHUFFLE_ROWS = 16384  # larger buffers only delay the first batch of every pass
MAX_CHUNK_ROWS = 2048
MAX_BATCH_ROWS = 1024
GB = 1e9


@dataclass
class IngestPlan:
    """How the workers of one stage hold its sets, resolved in the driver (`plan_ingest`)."""

    mode: str  # memory or stream
    sizes: list[int | None]  # items per set (a source set: None, counted when loaded)
    streamed: list[bool]  # per set: fed by Ray Data (stream mode, a Parquet folder)
    batch_rows: int = 0  # rows per Ray Data batch (at least a rank's share of a step)
    shuffle_rows: int = 0  # local shuffle buffer of each streamed set, per worker
    chunk_rows: int = 0  # rows per block the reading task yields


def stream_cpus(sets: int = 2) -> float:
    """CPUs that stream mode's reading tasks take beside the train workers (one task of
    `IO_CPUS` per streamed set: at most the clean and the denoised set)."""
    return sets * IO_CPUS


def check_stream_room(train: TrainConfig, cpus: float, why: str) -> None:
    """One-line `ValueError` when the train workers would hold so many of the cluster's
    `cpus` that the stream's reading tasks could never be scheduled (the stage would hang)."""
    held = train.num_workers * train.cpus_per_worker
    if train.num_workers > 0 and held + stream_cpus() > cpus + 1e-9:
        raise ValueError(
            f"config: train.ingest = stream ({why}) reads with {stream_cpus():g} CPUs beside "
            f"the workers' train.num_workers * train.cpus_per_worker = {held:g}; the cluster "
            f"has {cpus:g} CPUs: lower train.cpus_per_worker (e.g. to "
            f"{max((cpus - stream_cpus()) / train.num_workers, 0):g}) or use train.ingest = memory"
        )


def dataset_name(k: int) -> str:
    return f"set{k}"


def parquet_rows(files: Sequence[Location]) -> int:
    """Rows of Parquet files, from their footers."""
    total = 0
    for f in files:
        with f.fs.open_input_file(f.path) as handle:
            total += pq.ParquetFile(handle).metadata.num_rows
    return total


def mb(nbytes: float) -> str:
    return f"{nbytes / 1e6:,.1f} MB"


def plan_ingest(
    sets: Sequence[TrainSet], train: TrainConfig, item_shape: tuple[int, ...]
) -> tuple[IngestPlan, str]:
    """The plan of a stage's sets and one line saying which mode and why. Reads only the
    Parquet footers (memory mode checks the files' digests when the workers load them)."""
    check_ingest(train)
    item_bytes = 4 * math.prod(item_shape)
    sizes = [
        parquet_rows(Location.of(s.path).children(".parquet")) if s.path else s.count for s in sets
    ]
    nbytes = sum(n or 0 for n in sizes) * item_bytes
    budget = train.ingest_budget_gb * GB
    held = f"{mb(nbytes)} of float32 items"
    if train.ingest == "auto":
        mode = "memory" if nbytes <= budget else "stream"
        why = (
            f"train.ingest = auto -> {mode}: the sets hold {held}, "
            f"{'within' if mode == 'memory' else 'over'} train.ingest_budget_gb = "
            f"{train.ingest_budget_gb:g} per worker"
        )
    else:
        mode = train.ingest
        why = f"train.ingest = {mode}: the sets hold {held}"
    plan = IngestPlan(mode, sizes, [False] * len(sets))
    if mode == "stream":
        world = max(train.num_workers, 1)
        plan.batch_rows = train.batch_size // world
        files = [s.path is not None for s in sets]
        share = budget / max(sum(files), 1)
        plan.shuffle_rows = int(
            min(MAX_SHUFFLE_ROWS, max(plan.batch_rows, share // (SHUFFLE_SHARE * item_bytes)))
        )
        plan.chunk_rows = int(max(1, min(MAX_CHUNK_ROWS, plan.shuffle_rows // 4)))
        # Batches of a chunk (at most MAX_BATCH_ROWS) rather than a step's few items: Ray
        # Data's cost is per batch; the feeds keep what a step leaves for the next.
        plan.batch_rows = max(plan.batch_rows, min(plan.chunk_rows, MAX_BATCH_ROWS))
        # A set no larger than its shuffle buffer is held whole: that takes no more memory,
        # and saves the start of a Ray Data pass (about a second) every time it runs out.
        least = max(plan.shuffle_rows, world)
        plan.streamed = [f and n > least for f, n in zip(files, sizes, strict=True)]
        kept = [str(s) for s, st in zip(sets, plan.streamed, strict=True) if not st]
        why += (
            f"; streamed {sum(plan.streamed)} set(s) with a shuffle buffer of "
            f"{plan.shuffle_rows} items each ({mb(plan.shuffle_rows * item_bytes)})"
        )
        if kept:
            why += (
                f"; in memory: {', '.join(kept)} (no larger than a shuffle buffer, or a "
                f"source set, which is never written to disk)"
            )
    return plan, why


def read_chunks(batch: pa.Table, rows: int) -> Iterator[pa.Table]:
    """Ray Data map: the (id, x) rows of the files named in `batch`, `rows` at a time."""
    for path in batch.column("path").to_pylist():
        f = Location.of(path)
        with f.fs.open_input_file(f.path) as handle:
            for chunk in pq.ParquetFile(handle).iter_batches(batch_size=rows, columns=["id", "x"]):
                yield pa.Table.from_batches([chunk])


def stream_dataset(
    directory: str, plan: IngestPlan, item_shape: tuple[int, ...], seed: int, name: str
):
    """The dataset of one Parquet folder (digests checked here, in the driver): one row per
    file, in a new order each pass, read in chunks by tasks of `IO_CPUS` each."""
    import ray.data
    from ray.data import RandomSeedConfig

    from sfbd.stages.blocks import dataset_from_tables

    files = parquet_files(directory)
    paths = [pa.table({"path": [str(f)]}) for f in files]
    ds = dataset_from_tables(paths).randomize_block_order(
        seed=RandomSeedConfig(seed=seed, reseed_after_execution=True)
    )
    ds = ds.map_batches(
        partial(read_chunks, rows=plan.chunk_rows),
        batch_size=1,
        batch_format="pyarrow",
        num_cpus=IO_CPUS,
        compute=ray.data.TaskPoolStrategy(size=1),
    )
    # One block per chunk: Ray Data would otherwise gather chunks into blocks of up to 128 MB.
    ds.context.target_max_block_size = max(plan.chunk_rows * 4 * math.prod(item_shape), 1 << 16)
    ds.set_name(name)
    return ds


def stream_datasets(
    sets: Sequence[TrainSet], plan: IngestPlan, item_shape, seed, stage, start_step: int = 0
) -> dict:
    """The `datasets=` of the stage's `TorchTrainer`: one per streamed set; their file order
    depends on the step the stage starts from (0, or a checkpoint's)."""
    return {
        dataset_name(k): stream_dataset(
            s.path,
            plan,
            item_shape,
            step_seed(seed, f"{stage}/order{k}", 0, start_step),
            f"{stage}_set{k}",
        )
        for k, s in enumerate(sets)
        if plan.streamed[k]
    }


class MemoryFeed:
    """A set held on the device; draws with replacement, as `draw_batch` does."""

    def __init__(self, items: torch.Tensor):
        self.items, self.size = items, len(items)

    def take(self, n: int, rng: np.random.Generator) -> torch.Tensor:
        index = torch.from_numpy(rng.integers(0, self.size, n)).to(self.items.device)
        return self.items[index]

    def close(self) -> None:
        pass


class StreamFeed:
    """One streamed set on one worker: its dataset shard's batches, decoded on arrival, a new
    pass (a new file order and shuffle) whenever one ends. `size` is the whole set's."""

    def __init__(self, shard, plan: IngestPlan, item_shape, device, size: int, seed: int):
        self.shard, self.plan, self.item_shape, self.device = shard, plan, item_shape, device
        self.size, self.seed = size, seed
        self.passes, self.started = 0, False
        self.batches = None
        self.x = torch.zeros((0, *item_shape), device=device)
        self.ids = np.zeros(0, np.int64)

    def _next(self) -> None:
        """Decode the next batch into the feed's leftovers (starting a pass where needed)."""
        while True:
            if self.batches is None:
                self.batches = iter(
                    self.shard.iter_batches(
                        batch_size=self.plan.batch_rows,
                        batch_format="pyarrow",
                        prefetch_batches=1,
                        local_shuffle_buffer_size=self.plan.shuffle_rows,
                        local_shuffle_seed=step_seed(self.seed, "shuffle", 0, self.passes),
                    )
                )
                self.passes += 1
                self.started = True
            try:
                table = next(self.batches)
            except StopIteration:
                self.batches = None
                if self.started:  # a pass that gave nothing: an empty shard would loop
                    raise RuntimeError(
                        "train.ingest = stream: a worker's share of a set is empty"
                    ) from None
                continue
            self.started = False
            ids, x = table_items(table, self.item_shape)
            self.x, self.ids = torch.from_numpy(x).to(self.device), ids
            return

    def take_with_ids(self, n: int) -> tuple[torch.Tensor, np.ndarray]:
        """The next `n` items of the stream and their ids."""
        xs, ids, have = [], [], 0
        while have < n:
            if len(self.ids) == 0:
                self._next()
            m = min(n - have, len(self.ids))
            xs.append(self.x[:m])
            ids.append(self.ids[:m])
            self.x, self.ids = self.x[m:], self.ids[m:]
            have += m
        return torch.cat(xs), np.concatenate(ids)

    def take(self, n: int, rng: np.random.Generator | None = None) -> torch.Tensor:
        return self.take_with_ids(n)[0]

    def close(self) -> None:
        """End the pass in progress (its reading stops)."""
        close = getattr(self.batches, "close", None)
        if close is not None:
            close()
        self.batches = None


def open_feeds(
    sets: Sequence[TrainSet],
    plan: IngestPlan,
    item_shape: tuple[int, ...],
    device: torch.device,
    seed: int,
    stage: str,
    rank: int,
    get_shard=None,
    start_step: int = 0,
) -> list[MemoryFeed | StreamFeed]:
    """A worker's feeds of a stream-mode stage: its dataset shards, and sets in memory. Their
    shuffles depend on the step the stage starts from: a stage resumed from a checkpoint
    draws other items than it did before it (stream mode does not resume bit for bit)."""
    if get_shard is None:
        import ray.train

        get_shard = ray.train.get_dataset_shard
    feeds = []
    for k, s in enumerate(sets):
        if plan.streamed[k]:
            seed_k = step_seed(seed, f"{stage}/stream{k}", rank, start_step)
            shard = get_shard(dataset_name(k))
            feeds.append(StreamFeed(shard, plan, item_shape, device, plan.sizes[k], seed_k))
        else:
            feeds.append(MemoryFeed(torch.from_numpy(s.load(item_shape)).to(device)))
    return feeds


def stream_batch(
    feeds: Sequence[MemoryFeed | StreamFeed],
    weights: np.ndarray,
    size: int,
    seed: int,
    stage: str,
    rank: int,
    step: int,
) -> torch.Tensor:
    """One rank's batch of a stream-mode step: `mix_counts` items from each feed (the same
    counts on every rank); also seeds the step's EDM noise, as `draw_batch` does."""
    rng = step_rng(seed, stage, rank, step)
    counts = mix_counts(weights, size, seed, stage, step)
    return torch.cat(
        [feed.take(int(n), rng) for feed, n in zip(feeds, counts, strict=True) if n > 0]
    )
