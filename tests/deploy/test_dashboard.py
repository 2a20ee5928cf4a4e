"""The Grafana dashboard's structure (Grafana itself is not installable here: see
docs/monitoring.md; its queries run against a real Prometheus in test_kit.py)."""

from __future__ import annotations

import json
from typing import Any

from tests.deploy.tools import DASHBOARD

PANEL_TYPES = {"row", "stat", "timeseries"}


def cells(panel: dict[str, Any]) -> set[tuple[int, int]]:
    pos = panel["gridPos"]
    return {(x, y) for x in range(pos["x"], pos["x"] + pos["w"])
            for y in range(pos["y"], pos["y"] + pos["h"])}


def test_dashboard_is_a_provisionable_grafana_dashboard() -> None:
    data = json.loads(DASHBOARD.read_text())
    assert data["uid"] == "outbox-toolkit" and data["title"]
    assert data["schemaVersion"] == 39
    assert "id" not in data  # provisioned dashboards get theirs from Grafana
    variables = {v["name"]: v for v in data["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    panels = data["panels"]
    assert len({p["id"] for p in panels}) == len(panels)
    taken: set[tuple[int, int]] = set()
    for panel in panels:
        assert panel["type"] in PANEL_TYPES, panel["title"]
        pos = panel["gridPos"]
        assert pos["x"] >= 0 and pos["w"] >= 1 and pos["x"] + pos["w"] <= 24, panel["title"]
        assert not cells(panel) & taken, f"{panel['title']} overlaps another panel"
        taken |= cells(panel)
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
        assert panel["description"], panel["title"]
        refs = [t["refId"] for t in panel["targets"]]
        assert refs and len(set(refs)) == len(refs), panel["title"]
        for target in panel["targets"]:
            assert target["datasource"] == panel["datasource"]
            assert target["expr"].strip(), panel["title"]
    titles = [p["title"] for p in panels if p["type"] == "row"]
    assert titles == ["Relay", "Consumers", "CDC (Debezium)"]
