"""The denoise stage holds no whole set in the calling process (the orchestrator): ids come
from the `id` column, the shards are read inside Ray Data, the output is checked from its id
and statistic columns."""

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from sfbd.config import DenoiseConfig
from sfbd.data.store import read_split, write_manifest, write_shards
from sfbd.diffusion.networks import NetworkConfig, build_denoiser
from sfbd.runfiles import read_json, save_denoiser_at
from sfbd.stages.denoise import STAT_COLUMNS, read_denoised, run_denoise

DIM, NOISY, SHARD = 2048, 8000, 2000  # 65.5 MB of float32 noisy items in 4 shards


def _vector_data(directory, rng, count=NOISY) -> int:
    """A prepared directory of DIM-vectors (noisy split only, what the stage reads)."""
    y = rng.normal(0, 0.6, size=(count, DIM)).astype(np.float32)
    ids = rng.permutation(3 * count)[:count].astype(np.int64)
    shards = write_shards(directory / "noisy", ids, y, SHARD)
    write_manifest(
        directory,
        {
            "format": "sfbd-data-v1",
            "source": "test",
            "kind": "vector",
            "item_shape": [DIM],
            "tau": 0.59,
            "splits": {"noisy": {"count": count, "shards": shards, "encoding": "float32"}},
        },
    )
    return y.nbytes


def test_denoise_holds_no_whole_set_in_the_calling_process(ray_cluster, tmp_path, anon_peak):
    nbytes = _vector_data(tmp_path / "data", np.random.default_rng(0))
    torch.manual_seed(0)
    net = NetworkConfig(preset="mlp", channels=DIM, overrides={"hidden": 16, "num_layers": 1})
    save_denoiser_at(tmp_path / "init.pt", build_denoiser(net), net, stage="test")
    config = DenoiseConfig(steps=2, batch_size=SHARD, threads=1, out_dtype="float16")

    # This process's anonymous memory (Python, NumPy, Arrow; not the object store's shared
    # memory) while the stage runs, above where it started; after a run on 100 items, so that
    # Ray Data's one-off costs (modules imported on first use, its executor's threads) are
    # not counted.
    _vector_data(tmp_path / "warm", np.random.default_rng(1), count=100)
    run_denoise(tmp_path / "warm", tmp_path / "init.pt", tmp_path / "warm-out", config, 0, 1)
    with anon_peak:
        result = run_denoise(
            tmp_path / "data", tmp_path / "init.pt", tmp_path / "out", config, 0, 1, log=print
        )
    transient = anon_peak.growth
    print(f"noisy set {nbytes / 1e6:.1f} MB; calling process's peak {transient / 1e6:.1f} MB")
    assert transient < nbytes / 5

    # The output: every id once, float16 on disk with the statistic columns beside it, and
    # the recorded stats are those of the stored items.
    assert result.count == NOISY
    in_ids, _ = read_split(tmp_path / "data", "noisy")
    ids, x = read_denoised(tmp_path / "out", (DIM,))
    assert np.array_equal(ids, np.sort(in_ids)) and x.dtype == np.float32
    first = sorted((tmp_path / "out").glob("*.parquet"))[0]
    schema = pq.read_schema(first)
    assert schema.names == ["id", "x", *STAT_COLUMNS]
    assert schema.field("x").type.value_type == pa.float16()
    stats = read_json(tmp_path / "out" / "_COMPLETE.json")["stats"]
    assert stats["mean"] == pytest.approx(float(x.astype(np.float64).mean()), abs=1e-9)
    assert stats["std"] == pytest.approx(float(x.astype(np.float64).std()), rel=1e-6)
    assert (stats["min"], stats["max"]) == (float(x.min()), float(x.max()))
    assert stats["outside_unit_range"] == float((np.abs(x) > 1).mean())
