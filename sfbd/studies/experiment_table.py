"""The table of `sfbd experiment`: the rows of a clean fraction's runs (one per seed) merged
into mean, std (ddof 1) and n per cell, and the Markdown of the whole results. Pure: no Ray,
no files."""

from __future__ import annotations

import math

from sfbd.storage import Location, Where


def frac_label(f: float) -> str:
    return f"{f * 100:g}%"


def row_order(runs: list[list[dict]]) -> list[str]:
    """The row labels of all runs in table order: a label that one run lacks (a later
    iteration of a run that did not stop early) goes right after the label it follows."""
    order: list[str] = []
    for rows in runs:
        at = -1
        for r in rows:
            if r["row"] in order:
                at = order.index(r["row"])
            else:
                at += 1
                order.insert(at, r["row"])
    return order


def mean_std(values: list[float]) -> dict:
    """`{"mean", "std", "n", "values"}`; std has ddof 1 (None below two values)."""
    n = len(values)
    mean = sum(values) / n if n else None
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else None
    return {"mean": mean, "std": std, "n": n, "values": list(values)}


def aggregate_rows(runs: list[list[dict]]) -> list[dict]:
    """One row per label over the runs of the seeds (`runs`: each run's rows, as
    `collect_rows` gives them): `kimg` (the distinct values; the baselines' budget differs
    between runs that stopped early at different iterations) and, per metric column, the
    `mean_std` of the runs that have it. A run without a label (stopped before that
    iteration) or a row without a metric (`noisy_distance` of an older run) is left out of n."""
    table = []
    for label in row_order(runs):
        rows = [r for rs in runs for r in rs if r["row"] == label]
        columns = list(dict.fromkeys(c for r in rows for c in r["metrics"]))
        table.append(
            {
                "row": label,
                "kimg": sorted({r["kimg"] for r in rows}),
                "metrics": {
                    c: mean_std([r["metrics"][c] for r in rows if r["metrics"].get(c) is not None])
                    for c in columns
                },
            }
        )
    return table


def _fmt(value) -> str:
    if value is None:
        return "–"
    return f"{value:.4g}" if abs(value) < 1e4 else f"{value:.0f}"


def cell(stats: dict | None, seeds: int) -> str:
    """A table cell: the value with one seed (as before `--seeds`), else `mean +/- std (n=N)`
    (`mean (n=1)` where a single run has the row)."""
    if not stats or not stats["n"]:
        return "–"
    if seeds == 1:
        return _fmt(stats["mean"])
    spread = f" +/- {_fmt(stats['std'])}" if stats["n"] > 1 else ""
    return f"{_fmt(stats['mean'])}{spread} (n={stats['n']})"


def _kimg(values: list[float]) -> str:
    """One budget, or the range where runs that stopped early differ."""
    if not values:
        return "–"
    return f"{values[0]:g}" if len(values) == 1 else f"{values[0]:g}-{values[-1]:g}"


def _rel(path: str | None, out: Location) -> str | None:
    if path is None:
        return None
    prefix = str(out).rstrip("/") + "/"
    return path[len(prefix) :] if path.startswith(prefix) else path


def markdown(results: dict, out: Where) -> str:
    """The results as a Markdown table with the notes and where the sample grids are."""
    out = Location.of(out)
    fractions = results["fractions"]
    columns = results["columns"]
    seeds = results.get("seeds", 1)
    head = ["model", "kimg"] + [
        f"{c} ({frac_label(f['clean_fraction'])} clean)" for f in fractions for c in columns
    ]
    lines = [
        f"Config `{results['config']}`"
        + (
            f" with {' '.join('`--set ' + s + '`' for s in results['overrides'])}"
            if results["overrides"]
            else ""
        )
        + f"; distances: {', '.join(columns)} (lower is better)"
        + (f"; feature net {results['feature_net']}" if results.get("feature_net") else "")
        + (
            f"; mean +/- std (ddof 1) over {seeds} seeds (seed = data.seed = 0..{seeds - 1}), "
            "n: the runs that have the cell"
            if seeds > 1
            else ""
        )
        + ".",
        "",
        "| " + " | ".join(head) + " |",
        "|" + "---|" * len(head),
    ]
    labels = row_order([f["rows"] for f in fractions])
    for label in labels:
        found = [next((r for r in f["rows"] if r["row"] == label), None) for f in fractions]
        kimg = sorted({k for r in found if r for k in r["kimg"]})
        cells = [label, _kimg(kimg)]
        for r in found:
            cells += [cell(r["metrics"].get(c) if r else None, seeds) for c in columns]
        lines.append("| " + " | ".join(cells) + " |")
    lines += [""] + list(results["notes"])
    lines += ["", "Sample grids:", ""]
    for f in fractions:
        for run in f["runs"]:
            grids = ", ".join(
                f"{r['row']} `{_rel(r['grid'], out)}`" for r in run["rows"] if r["grid"]
            )
            side = (
                f"`{_rel(run['comparison'], out)}` (side by side); "
                if run.get("comparison")
                else ""
            )
            what = f", seed {run['seed']}" if seeds > 1 else ""
            lines.append(f"- {frac_label(f['clean_fraction'])} clean{what}: {side}{grids}")
    return "\n".join(lines) + "\n"
