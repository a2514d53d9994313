"""The table of `sfbd experiment --seeds N` (sfbd.studies.experiment_table): exact mean, std
(ddof 1) and n per cell on hand-made rows, runs that stopped at different iterations, cells a
run lacks, and the Markdown with one seed and with several."""

import pytest

from sfbd.studies.experiment_table import aggregate_rows, cell, markdown, mean_std, row_order


def _row(label, kimg, **metrics):
    return {"row": label, "kimg": kimg, "metrics": metrics, "grid": None}


def _seed_runs():
    """Three seeds' rows: seed 2 stopped after iteration 1 (`iterations: auto`: its later
    rows are absent and its baselines have the smaller budget), seed 0 is an older run
    without noisy_distance."""
    full = [
        ("noisy-only", 3.0),
        ("pretrain-only", 1.0),
        ("SFBD iteration 1", 2.0),
        ("SFBD iteration 2", 3.0),
        ("all-clean", 3.0),
    ]
    seed0 = [_row(label, k, fd=1.0 + i) for i, (label, k) in enumerate(full)]
    seed1 = [_row(label, k, fd=2.0 + i, noisy_distance=10.0) for i, (label, k) in enumerate(full)]
    seed2 = [
        _row("noisy-only", 2.0, fd=3.0, noisy_distance=20.0),
        _row("pretrain-only", 1.0, fd=4.0, noisy_distance=30.0),
        _row("SFBD iteration 1", 2.0, fd=5.0, noisy_distance=40.0),
        _row("all-clean", 2.0, fd=6.0, noisy_distance=50.0),
    ]
    return [seed0, seed1, seed2]


def test_mean_std_is_exact():
    assert mean_std([1.0, 2.0, 3.0]) == {"mean": 2.0, "std": 1.0, "n": 3, "values": [1, 2, 3]}
    two = mean_std([4.0, 8.0])
    assert two == {"mean": 6.0, "std": pytest.approx(8**0.5), "n": 2, "values": [4.0, 8.0]}
    assert mean_std([5.0]) == {"mean": 5.0, "std": None, "n": 1, "values": [5.0]}
    assert mean_std([]) == {"mean": None, "std": None, "n": 0, "values": []}


def test_rows_over_seeds_with_early_stops_and_missing_keys():
    runs = _seed_runs()
    # The stopped run's rows come first: iteration 2 still lands before all-clean.
    assert row_order([runs[2], runs[0]]) == [
        "noisy-only",
        "pretrain-only",
        "SFBD iteration 1",
        "SFBD iteration 2",
        "all-clean",
    ]
    table = {r["row"]: r for r in aggregate_rows(runs)}
    assert list(table) == row_order(runs)
    fd = {
        label: (r["metrics"]["fd"]["mean"], r["metrics"]["fd"]["n"]) for label, r in table.items()
    }
    assert fd == {
        "noisy-only": (2.0, 3),  # 1, 2, 3
        "pretrain-only": (3.0, 3),  # 2, 3, 4
        "SFBD iteration 1": (4.0, 3),  # 3, 4, 5
        "SFBD iteration 2": (4.5, 2),  # 4, 5: seed 2 stopped before
        "all-clean": (17 / 3, 3),  # 5, 6, 6
    }
    assert table["pretrain-only"]["metrics"]["fd"]["std"] == 1.0
    assert table["SFBD iteration 2"]["metrics"]["fd"]["values"] == [4.0, 5.0]
    # noisy_distance: seed 0 has none, so n counts seeds 1 and 2 only.
    noisy = table["pretrain-only"]["metrics"]["noisy_distance"]
    assert (noisy["mean"], noisy["n"], noisy["values"]) == (20.0, 2, [10.0, 30.0])
    assert table["SFBD iteration 2"]["metrics"]["noisy_distance"]["n"] == 1
    assert table["noisy-only"]["kimg"] == [2.0, 3.0] and table["pretrain-only"]["kimg"] == [1.0]


def test_cells():
    assert cell(mean_std([1.0, 2.0, 3.0]), seeds=3) == "2 +/- 1 (n=3)"
    assert cell(mean_std([0.123456]), seeds=3) == "0.1235 (n=1)"
    assert cell(mean_std([0.123456]), seeds=1) == "0.1235"  # as before --seeds
    assert cell(None, seeds=3) == cell(mean_std([]), seeds=1) == "–"


def _results(runs, seeds):
    return {
        "config": "fashion-mnist-cpu",
        "overrides": [],
        "seeds": seeds,
        "feature_net": None,
        "columns": ["fd", "noisy_distance"],
        "notes": [],
        "fractions": [
            {
                "clean_fraction": 0.04,
                "runs": [{"seed": s, "comparison": None, "rows": r} for s, r in enumerate(runs)],
                "rows": aggregate_rows(runs),
            }
        ],
    }


def test_markdown_over_seeds_and_with_one_seed():
    text = markdown(_results(_seed_runs(), 3), "/out")
    assert "| model | kimg | fd (4% clean) | noisy_distance (4% clean) |" in text
    assert "over 3 seeds" in text
    assert "| noisy-only | 2-3 | 2 +/- 1 (n=3) | 15 +/- 7.071 (n=2) |" in text
    assert "| SFBD iteration 2 | 3 | 4.5 +/- 0.7071 (n=2) | 10 (n=1) |" in text
    assert "- 4% clean, seed 2: " in text

    one = markdown(_results(_seed_runs()[1:2], 1), "/out")
    assert "| pretrain-only | 1 | 3 | 10 |" in one
    assert "seeds" not in one and "(n=" not in one
    assert "- 4% clean: " in one
