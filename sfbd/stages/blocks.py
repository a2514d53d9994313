"""Ray Data datasets from Arrow tables held by this process, with no Ray task.

`ray.data.from_arrow` and `ray.data.from_numpy` (Ray 2.60) start one task per block, of a whole
CPU each, to compute the blocks' metadata, and wait for them before the dataset exists. In a
sweep whose trials hold fractions of the CPUs (`sfbd.sweep`), a whole CPU is rarely free, so
the stage would wait for the other trials' stages to end. Here the metadata is computed in
this process, by the function those tasks run, and the blocks go to the object store from
here, as `ray.data.from_arrow_refs` does otherwise.
"""

from __future__ import annotations

import pyarrow as pa
import ray


def dataset_from_tables(tables: list[pa.Table]):
    """A materialized dataset with one block per table, in order."""
    from ray.data._internal.logical.interfaces import LogicalPlan
    from ray.data._internal.logical.operators import FromArrow
    from ray.data._internal.stats import DatasetStats
    from ray.data._internal.util import get_table_block_metadata_schema
    from ray.data.context import DataContext
    from ray.data.dataset import MaterializedDataset

    metadata = [get_table_block_metadata_schema(t) for t in tables]
    blocks = [ray.put(t) for t in tables]
    context = DataContext.get_current().copy()
    stats = DatasetStats(metadata={"FromArrow": metadata}, parent=None)
    return MaterializedDataset(LogicalPlan(FromArrow(blocks, metadata), context), context, stats)
