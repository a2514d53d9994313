"""A finished (or stopped) sweep's outputs, read from Ray Tune's `ResultGrid`: `results.csv`
(one row per trial), `best.json` (the best trial, and with seeds the best point by its mean
over seeds) and `heatmap.png` (the final metric over the first two axes that vary, averaged
over the others and the seeds); with seeds, `points.md`: per point, the metric (and
`noisy_distance`) after pretraining and each iteration as mean +/- std over the seeds.
Everything is written through `sfbd.storage.Location`, so `--out` may be a URI."""

from __future__ import annotations

import io
import json
import math

import numpy as np

from sfbd.config import SFBDConfig
from sfbd.storage import Location
from sfbd.sweep_space import SEED_KEYS, SearchSpace, format_value, short_names

STATS = ("status", "iterations_done", "metric_name", "final_metric", "best_metric")
HEATMAP_MAX_VALUES = 24  # distinct values per heatmap axis; more (random draws) is no picture


def _number(value):
    """A pandas cell as plain Python; NaN (a trial that never reported) as None."""
    if value is None:
        return None
    if hasattr(value, "item"):
        value = value.item()
    if isinstance(value, float) and math.isnan(value):
        return None
    return value


def result_table(results, space: SearchSpace, config: SFBDConfig) -> list[dict]:
    """One row per trial from `results.get_dataframe()`: the trial's axis values, `status`
    (finished, stopped: ended early by the scheduler, failed), `iterations_done`, the metric's
    name, its final and best value, the run directory and Tune's trial id."""
    last = results.get_dataframe()
    if "metric" in last.columns:
        best = results.get_dataframe(filter_metric="metric", filter_mode="min")
        best_by_trial = dict(zip(best["trial_id"], best["metric"], strict=True))
    else:
        best_by_trial = {}
    errors = {(r.metrics or {}).get("trial_id"): r.error for r in results}
    rows = []
    for rec in last.to_dict("records"):
        iteration = _number(rec.get("iteration"))
        if errors.get(rec["trial_id"]) is not None or iteration is None:
            status = "failed"
        else:
            status = "finished" if iteration >= config.iterations else "stopped"
        row = {key: _number(rec.get(f"config/{key}")) for key in space.keys()}
        row.update(
            status=status,
            iterations_done=iteration,
            metric_name=rec.get("metric_name") if iteration is not None else None,
            final_metric=_number(rec.get("metric")),
            best_metric=_number(best_by_trial.get(rec["trial_id"])),
            run_dir=rec.get("run_dir") if iteration is not None else None,
            trial_id=rec["trial_id"],
        )
        rows.append(row)
    # Tune's table leaves out trials that never reported (failed before pretraining ended).
    listed = {r["trial_id"] for r in rows}
    for result in results:
        if (result.metrics or {}).get("trial_id") not in listed:
            row = {key: (result.config or {}).get(key) for key in space.keys()}
            row.update(dict.fromkeys(STATS[1:]), status="failed", run_dir=None, trial_id=None)
            rows.append(row)
    rows.sort(key=lambda r: tuple((str(type(r[k])), r[k]) for k in space.keys()))
    return rows


def _point_overrides(row: dict, space: SearchSpace) -> list[str]:
    """The `--set` arguments that reproduce a row's trial from the sweep's config."""
    sets = []
    for key in space.keys():
        keys = SEED_KEYS if space.seeds and key == "seed" else (key,)
        sets += [f"{k}={json.dumps(row[key])}" for k in keys]
    return sets


def best_summary(rows: list[dict], space: SearchSpace) -> dict:
    """The trial with the lowest final metric; with seeds, also the point (its axis values
    but the seed) with the lowest mean final metric over its seeds."""
    scored = [r for r in rows if r["final_metric"] is not None and r["status"] != "failed"]
    if not scored:
        return {"best": None, "reason": "no trial reported a metric"}
    top = min(scored, key=lambda r: r["final_metric"])
    summary = {
        "best": {
            "trial_id": top["trial_id"],
            "overrides": {k: top[k] for k in space.keys()},
            "set": _point_overrides(top, space),
            "metric_name": top["metric_name"],
            "metric": top["final_metric"],
            "status": top["status"],
            "iterations_done": top["iterations_done"],
            "run_dir": top["run_dir"],
        }
    }
    if space.seeds:
        keys = [k for k in space.keys() if k != "seed"]
        groups: dict[tuple, list[dict]] = {}
        for r in scored:
            groups.setdefault(tuple(r[k] for k in keys), []).append(r)
        point, members = min(
            groups.items(), key=lambda kv: sum(r["final_metric"] for r in kv[1]) / len(kv[1])
        )
        values = np.array([r["final_metric"] for r in members], dtype=np.float64)
        summary["best_mean_over_seeds"] = {
            "overrides": dict(zip(keys, point, strict=True)),
            "metric_name": top["metric_name"],
            "metric_mean": float(values.mean()),
            # the spread across seeds (sample standard deviation; null for one seed)
            "metric_std": float(values.std(ddof=1)) if len(values) > 1 else None,
            "seeds": sorted(r["seed"] for r in members),
        }
    return summary


def write_csv(rows: list[dict], space: SearchSpace, path: Location) -> None:
    import pandas as pd

    columns = [*space.keys(), *STATS, "run_dir", "trial_id"]
    table = pd.DataFrame(rows, columns=columns)
    table["iterations_done"] = table["iterations_done"].astype("Int64")  # blank, not NaN
    path.write_text(table.to_csv(index=False))


def heatmap(rows: list[dict], keys: list[str], path: Location, cell: int = 90) -> bool:
    """Final metric over two axes (`keys[0]` rows x `keys[1]` columns; one row of cells for
    one axis), each cell the mean over the other axes and seeds, darker = lower (better);
    gray: no trial reported. False, and nothing written, when there is nothing to
    draw or an axis has more than `HEATMAP_MAX_VALUES` values."""
    from PIL import Image, ImageDraw

    scored = [r for r in rows if r["final_metric"] is not None]
    if not scored or not keys:
        return False
    row_key, col_key = keys[0], (keys[1] if len(keys) > 1 else None)
    ys = sorted({r[row_key] for r in rows}, key=lambda v: (str(type(v)), v))
    xs = sorted({r[col_key] for r in rows}, key=lambda v: (str(type(v)), v)) if col_key else [None]
    if max(len(ys), len(xs)) > HEATMAP_MAX_VALUES:
        return False
    cells: dict[tuple, list[float]] = {}
    for r in scored:
        cells.setdefault((r[row_key], r[col_key] if col_key else None), []).append(
            r["final_metric"]
        )
    values = {k: sum(v) / len(v) for k, v in cells.items()}
    names = short_names([k for k in (row_key, col_key) if k])
    left, top = 110, 40
    width = max(left + cell * len(xs) + 10, 420)  # room for the title
    img = Image.new("RGB", (width, top + cell * len(ys) + 30), "white")
    draw = ImageDraw.Draw(img)
    lo, hi = min(values.values()), max(values.values())
    for i, y in enumerate(ys):
        label = f"{names[row_key]} {format_value(y)}"
        draw.text((4, top + i * cell + cell // 2 - 6), label, fill="black")
        for j, x in enumerate(xs):
            box = [
                left + j * cell,
                top + i * cell,
                left + (j + 1) * cell - 2,
                top + (i + 1) * cell - 2,
            ]
            v = values.get((y, x))
            if v is None:
                draw.rectangle(box, outline="gray")
                continue
            shade = int(60 + 180 * ((v - lo) / (hi - lo) if hi > lo else 0.5))
            draw.rectangle(box, fill=(shade, shade, 255))
            draw.text((box[0] + 8, box[1] + cell // 2 - 6), f"{v:.4g}", fill="black")
    if col_key:
        for j, x in enumerate(xs):
            label = f"{names[col_key]} {format_value(x)}"
            draw.text((left + j * cell + 8, top + len(ys) * cell + 8), label, fill="black")
    metric = scored[0]["metric_name"]
    draw.text((4, 8), f"final {metric} (lower is better; mean over the other axes)", fill="black")
    buffer = io.BytesIO()
    img.save(buffer, format="PNG")
    path.write_bytes(buffer.getvalue())
    return True


def heatmap_axes(rows: list[dict], keys: list[str]) -> list[str]:
    """The heatmap's axes: the first two axes whose value varies, seeds last (averaged unless
    nothing else varies); the first axis when none varies."""
    ordered = [k for k in keys if k != "seed"] + [k for k in keys if k == "seed"]
    varying = [k for k in ordered if len({repr(r[k]) for r in rows}) > 1]
    return varying[:2] or ordered[:1]


def _mean_std(values: list[float]) -> str:
    if not values:
        return "-"
    v = np.asarray(values, dtype=np.float64)
    spread = f" +/- {v.std(ddof=1):.4g}" if len(v) > 1 else ""
    return f"{v.mean():.4g}{spread} (n={len(v)})"


def points_table(rows: list[dict], space: SearchSpace, read_metrics) -> str:
    """Markdown: for each point (the axis values but the seed), its metric and noisy_distance
    after pretraining (iteration 0) and each iteration, mean +/- std (ddof 1) over the seeds
    that reached it. `read_metrics(run_dir)` gives a trial's metrics.jsonl rows."""
    keys = [k for k in space.keys() if k not in SEED_KEYS]
    groups: dict[tuple, list[list[dict]]] = {}
    for r in rows:
        if r["run_dir"] and r["status"] != "failed":
            groups.setdefault(tuple(r[k] for k in keys), []).append(read_metrics(r["run_dir"]))
    lines = []
    for point, runs in groups.items():
        name = next((row["metric"] for m in runs for row in m), "metric")
        title = ", ".join(f"{k}={format_value(v)}" for k, v in zip(keys, point, strict=True))
        lines += [f"### {title or 'all trials'}", "", f"| iteration | {name} | noisy_distance |"]
        lines.append("|---|---|---|")
        for k in sorted({row["iteration"] for m in runs for row in m}):
            at = [row for m in runs for row in m if row["iteration"] == k]
            metric = [row[name] for row in at if row.get(name) is not None]
            noisy = [row["noisy_distance"] for row in at if row.get("noisy_distance") is not None]
            lines.append(f"| {k} | {_mean_std(metric)} | {_mean_std(noisy)} |")
        lines.append("")
    return "\n".join(lines)


def write_results(results, space: SearchSpace, config: SFBDConfig, out: Location) -> list[dict]:
    """`results.csv`, `best.json`, `heatmap.png` and, with seeds, `points.md` under `out`;
    returns the table's rows."""
    from sfbd.rundir import RunDir

    rows = result_table(results, space, config)
    write_csv(rows, space, out / "results.csv")
    summary = best_summary(rows, space)
    (out / "best.json").write_text(json.dumps(summary, indent=1) + "\n")
    heatmap(rows, heatmap_axes(rows, space.keys()), out / "heatmap.png")
    if space.seeds:
        table = points_table(rows, space, lambda run_dir: RunDir(run_dir).read_metrics())
        (out / "points.md").write_text(table)
    return rows
