"""The label-free noisy-space distance (`sfbd.metrics.noisy`) and its rows in
`compute_metrics`: NumPy and a toy prepared set, no Ray, about a second."""

import numpy as np
import pytest

from sfbd.config import EvalConfig
from sfbd.data.prepare import DataConfig, prepare
from sfbd.data.sources import toy2d_sample
from sfbd.data.store import split_count
from sfbd.metrics.distances import sliced_wasserstein
from sfbd.metrics.noisy import noisy_distance, push_forward
from sfbd.stages.evaluate import compute_metrics, distance

TAU = 0.59


def _quiet(_line):
    pass


def _swd(a, b):
    return sliced_wasserstein(a, b, projections=64, seed=0)


def _draw(n, rng):
    """A skewed 6-d distribution (a Gaussian would hide nothing the test looks for)."""
    return (rng.exponential(0.3, (n, 6)) - 0.3).astype(np.float32)


def test_push_forward_is_reproducible_and_adds_variance_tau_squared():
    x = np.linspace(-1, 1, 40_000, dtype=np.float32).reshape(-1, 4)
    a, b = push_forward(x, TAU, seed=3), push_forward(x, TAU, seed=3)
    assert a.dtype == np.float32 and a.shape == x.shape
    assert np.array_equal(a, b)
    assert not np.array_equal(a, push_forward(x, TAU, seed=4))
    noise = (a - x).astype(np.float64)
    assert abs(noise.mean()) < 0.01
    assert noise.var() == pytest.approx(TAU**2, rel=0.02)
    assert a.max() > 1.5 and a.min() < -1.5  # not clamped, like the observations
    assert np.array_equal(push_forward(x, 0.0, seed=3), x)
    with pytest.raises(ValueError, match="tau"):
        push_forward(x, -0.1, seed=0)


def test_noisy_distance_floor_and_a_mean_shift():
    rng = np.random.default_rng(0)
    holdout = push_forward(_draw(3000, rng), TAU, seed=100)
    # The floor: two independent noisy draws of the data distribution.
    floors = [_swd(push_forward(_draw(3000, rng), TAU, seed=s), holdout) for s in range(3)]
    floor = float(np.mean(floors))
    same = noisy_distance(_draw(3000, rng), holdout, TAU, _swd, seed=7)
    shifted = noisy_distance(_draw(3000, rng) + 0.15, holdout, TAU, _swd, seed=7)
    print(f"noisy swd: floor {floors}, same distribution {same:.4f}, mean shift 0.15 {shifted:.4f}")
    assert 0.5 * floor < same < 2.0 * floor
    assert shifted > 5 * floor
    # The shift survives the noise undamped: a shift d moves sliced W2 by |d| / sqrt(dim),
    # here 0.15 * sqrt(6) / sqrt(6).
    assert shifted == pytest.approx(0.15, rel=0.25)


def test_noisy_distance_checks_its_input():
    x = np.zeros((10, 3), np.float32)
    with pytest.raises(ValueError, match="holdout set is empty"):
        noisy_distance(x, x[:0], TAU, _swd, seed=0)
    with pytest.raises(ValueError, match="shape"):
        noisy_distance(x, np.zeros((10, 4), np.float32), TAU, _swd, seed=0)


@pytest.fixture(scope="module")
def toy_data(tmp_path_factory):
    out = tmp_path_factory.mktemp("toy") / "data"
    prepare(DataConfig(dataset="toy2d", num=2000, tau=TAU, holdout_fraction=0.1), out, log=_quiet)
    return out


def test_compute_metrics_rows_carry_noisy_distance(toy_data, tmp_path):
    config = EvalConfig(num_samples=500, seeds=2, grid=0, projections=64)
    rng = np.random.default_rng(1)
    samples = rng.standard_normal((1000, 2)).astype(np.float32)
    row = compute_metrics(tmp_path / "run", "iter_000", toy_data, samples, config)
    print({k: row[k] for k in ("swd_true", "noisy_distance", "noisy_distance_items")})
    assert row["noisy_distance_items"] == split_count(toy_data, "holdout") == 192
    assert isinstance(row["noisy_distance"], float) and row["noisy_distance"] > 0
    # Two seed sets: the row's value is the mean of each set's; eps comes from eval.seed.
    single = EvalConfig(num_samples=500, projections=64)
    each = [distance(samples[s * 500 : (s + 1) * 500], toy_data, single, None) for s in (0, 1)]
    assert row["noisy_distance"] == pytest.approx(np.mean([r["noisy_distance"] for r in each]))
    assert distance(samples[:500], toy_data, single, None) == each[0]
    # The true distribution pushed forward lies far closer to the observations than N(0, I).
    true = distance(toy2d_sample(500, rng), toy_data, single, None)["noisy_distance"]
    print(f"toy noisy_distance: N(0, I) samples {each[0]['noisy_distance']:.4f}, true {true:.4f}")
    assert true < each[0]["noisy_distance"] / 2


def test_data_without_holdout_gives_rows_without_the_keys(tmp_path):
    data = prepare(
        DataConfig(dataset="toy2d", num=400, tau=TAU, holdout_fraction=0.0), tmp_path / "d", _quiet
    )
    samples = np.random.default_rng(2).standard_normal((200, 2)).astype(np.float32)
    row = compute_metrics(tmp_path / "run", "x", data, samples, EvalConfig(num_samples=200, grid=0))
    assert "swd_true" in row
    assert "noisy_distance" not in row and "noisy_distance_items" not in row


def _denoised_dir(path, ids, items):
    """A completed denoise output holding `items` under `ids`."""
    from sfbd.data.store import write_shards
    from sfbd.runfiles import publish_dir

    write_shards(path, ids, items, shard_size=1000)
    publish_dir(path, path, {"count": len(ids)})
    return path


def test_denoised_distance_is_the_denoised_sets_own_distance(toy_data, tmp_path):
    """`denoised_distance`: the metric of the denoised set's first `num_samples` items (by
    id) against the reference; a set drawn from the true distribution scores near the
    sampling floor, the same set shifted by 0.3 far above it."""
    config = EvalConfig(num_samples=500, grid=0, projections=64, memorization_threshold=None)
    rng = np.random.default_rng(3)
    true = toy2d_sample(800, rng)
    ids = rng.permutation(10_000)[:800]  # unsorted ids: the first 500 *by id* count
    good = _denoised_dir(tmp_path / "good", ids, true)
    bad = _denoised_dir(tmp_path / "bad", ids, true + 0.3)
    samples = rng.standard_normal((500, 2)).astype(np.float32)
    row_good = compute_metrics(tmp_path / "r1", "iter_001", toy_data, samples, config, good)
    row_bad = compute_metrics(tmp_path / "r2", "iter_001", toy_data, samples, config, bad)
    first = true[np.argsort(ids)[:500]]
    expect = distance(first, toy_data, config, None, noisy=False)["swd_true"]
    assert row_good["denoised_distance"] == pytest.approx(expect, rel=1e-9)
    assert row_good["denoised_distance_items"] == 500
    floor = distance(toy2d_sample(500, rng), toy_data, config, None, noisy=False)["swd_true"]
    print(
        f"denoised_distance: true set {row_good['denoised_distance']:.4f} (floor {floor:.4f}), "
        f"shifted {row_bad['denoised_distance']:.4f}, samples N(0, I) {row_good['swd_true']:.4f}"
    )
    assert row_good["denoised_distance"] < 2 * floor
    assert row_bad["denoised_distance"] > 4 * row_good["denoised_distance"]
    # The samples' own distance is untouched by the denoised set.
    assert row_good["swd_true"] == row_bad["swd_true"]
    assert "noisy_distance" in row_good  # the samples' label-free distance is still there
