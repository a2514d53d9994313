"""docs/grafana/sfbd-dashboard.json agrees with sfbd/telemetry.py: every query names a metric
that telemetry defines, with labels it has, and every metric has a panel. No Ray, no Grafana."""

from __future__ import annotations

import ast
import json
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DASHBOARD = json.loads((ROOT / "docs" / "grafana" / "sfbd-dashboard.json").read_text())
# Labels that Ray's metrics agent adds to every metric.
RAY_LABELS = {"SessionName"}


def _telemetry() -> dict[str, set[str]]:
    """Prometheus name -> label names, from telemetry.py's `_get(Kind, name, _, tags)` calls:
    Ray exports `name` as `ray_<name>`, and a counter as `ray_<name>_total`."""
    tree = ast.parse((ROOT / "sfbd" / "telemetry.py").read_text())
    out = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "_get":
            kind, name, _, tags = (
                ast.literal_eval(a) if i else a.id for i, a in enumerate(node.args)
            )
            suffix = "_total" if kind == "Counter" else ""
            out[f"ray_{name}{suffix}"] = set(tags) | RAY_LABELS
    return out


def _queries() -> list[tuple[str, str]]:
    """(panel title, PromQL) of every panel target, and of the variables' queries."""
    found = [(p["title"], t["expr"]) for p in DASHBOARD["panels"] for t in p["targets"]]
    found += [
        (v["name"], v["query"]["query"])
        for v in DASHBOARD["templating"]["list"]
        if v["type"] == "query"
    ]
    return found


def test_telemetry_is_read():
    metrics = _telemetry()
    assert len(metrics) == 7 and "ray_sfbd_images_denoised_total" in metrics
    assert metrics["ray_sfbd_stage"] == {"run", "stage", "SessionName"}


def test_every_query_names_telemetry_metrics_with_their_labels():
    metrics = _telemetry()
    for title, expr in _queries():
        names = re.findall(r"\bray_[a-z_]+", expr)
        assert names, f"{title}: no Ray metric in {expr}"
        for name in names:
            assert name in metrics, f"{title}: {name} is not defined in sfbd/telemetry.py"
            labels = set(re.findall(r"\b([A-Za-z_]+)\s*=~?", expr))
            labels |= {
                lab.strip()
                for group in re.findall(r"by \(([^)]*)\)", expr)
                for lab in group.split(",")
            }
            assert labels <= metrics[name], f"{title}: labels {labels - metrics[name]} unknown"


def test_every_telemetry_metric_has_a_panel():
    shown = {
        n
        for p in DASHBOARD["panels"]
        for t in p["targets"]
        for n in re.findall(r"\bray_[a-z_]+", t["expr"])
    }
    assert shown == set(_telemetry())


def test_dashboard_has_the_shape_grafana_imports():
    """As Ray's own dashboards: a Prometheus datasource variable that every panel and query
    uses, unique panel ids, panels inside Grafana's 24-column grid."""
    variables = {v["name"]: v for v in DASHBOARD["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    assert DASHBOARD["uid"] and DASHBOARD["title"]
    ids = [p["id"] for p in DASHBOARD["panels"]]
    assert len(ids) == len(set(ids))
    for p in DASHBOARD["panels"]:
        assert p["datasource"] == "${datasource}"
        assert all(t["datasource"] == "${datasource}" for t in p["targets"])
        g = p["gridPos"]
        assert g["x"] + g["w"] <= 24 and g["w"] > 0 and g["h"] > 0, p["title"]
    used = {v for _, q in _queries() for v in re.findall(r"\$(\w+)", q)}
    assert used <= set(variables) | {"__all"}, used - set(variables)
