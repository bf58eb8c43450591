"""What the chart ships for monitoring, as Prometheus and Grafana would read it: the alert rules of the rendered
PrometheusRule, the dashboard of the rendered ConfigMap and its queries; and Debian's Prometheus tools to check them.

``make test`` installs the ``prometheus`` package when promtool or prometheus is missing and it runs as root
(Makefile, target ``prometheus``); a test run without them fails with the command to run, it is never skipped. The
paths and the command here are the Makefile's (tests/charts/test_monitoring.py checks that they agree).
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

import pytest
from support.chart import Doc, find, one, render_defaults

PROMTOOL = Path("/usr/bin/promtool")
PROMETHEUS = Path("/usr/bin/prometheus")
INSTALL_COMMAND = "apt-get update && apt-get install -y --no-install-recommends prometheus"
DASHBOARD_KEY = "telemetry.json"  # the ConfigMap's key: the file name the sidecar writes for Grafana
DURATION = re.compile(r"([0-9]+(ms|s|m|h|d|w|y))+")


def installed(tool: Path) -> Path:
    """``tool`` (PROMTOOL or PROMETHEUS) when it is installed; else fails the test, naming the fix."""
    if os.access(tool, os.X_OK):
        return tool
    pytest.fail(
        f"{tool} is not installed (Debian's prometheus package); run `make prometheus`, or as root: {INSTALL_COMMAND}",
        pytrace=False,
    )


def merged(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """``base`` with ``override`` laid over it, maps merged key by key as Helm merges values."""
    result = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(result.get(key), dict):
            result[key] = merged(result[key], value)
        else:
            result[key] = value
    return result


def alert_rules(values: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """The rule groups of the PrometheusRule rendered from the chart's defaults (and ``values``), ready to be written
    as a Prometheus rules file: ``{"groups": alert_rules()}``."""
    enabled = merged({"metrics": {"prometheusRule": {"enabled": True}}}, values or {})
    groups: list[dict[str, Any]] = one(render_defaults(enabled), "PrometheusRule")["spec"]["groups"]
    return groups


def dashboard_config_maps(docs: list[Doc]) -> list[Doc]:
    """The ConfigMaps carrying the Grafana dashboard."""
    return [doc for doc in find(docs, "ConfigMap") if DASHBOARD_KEY in doc.get("data", {})]


def dashboard(values: dict[str, Any] | None = None) -> dict[str, Any]:
    """The Grafana dashboard as the rendered ConfigMap carries it (chart defaults and ``values``), parsed."""
    enabled = merged({"metrics": {"grafanaDashboard": {"enabled": True}}}, values or {})
    (config_map,) = dashboard_config_maps(render_defaults(enabled))
    parsed: dict[str, Any] = json.loads(config_map["data"][DASHBOARD_KEY])
    return parsed


def panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    """Every panel but the rows themselves, including those a collapsed row holds."""
    found: list[dict[str, Any]] = []
    for panel in dashboard["panels"]:
        if panel["type"] == "row":
            found.extend(panel.get("panels", []))
        else:
            found.append(panel)
    return found


def panel_queries(dashboard: dict[str, Any]) -> list[tuple[str, str]]:
    """(panel title, PromQL expression) of every target of every panel."""
    return [(panel["title"], target["expr"]) for panel in panels(dashboard) for target in panel.get("targets", [])]


def check_prometheus_rule(doc: Doc) -> None:
    """kubernetes-validate has no schema for CRDs: the fields of the PrometheusRule we use, checked by hand against
    the Prometheus Operator's monitoring.coreos.com/v1 API (labels and annotations are maps of strings)."""
    assert doc["apiVersion"] == "monitoring.coreos.com/v1"
    assert set(doc) == {"apiVersion", "kind", "metadata", "spec"}
    assert set(doc["spec"]) == {"groups"}
    names = [group["name"] for group in doc["spec"]["groups"]]
    assert len(set(names)) == len(names) and all(names)
    for group in doc["spec"]["groups"]:
        assert set(group) <= {"name", "interval", "rules"}
        for rule in group["rules"]:
            assert set(rule) <= {"alert", "expr", "for", "labels", "annotations"}, rule
            assert isinstance(rule["alert"], str) and isinstance(rule["expr"], str)
            assert DURATION.fullmatch(rule.get("for", "0s")), rule
            for mapping in (rule.get("labels", {}), rule.get("annotations", {})):
                assert all(isinstance(key, str) and isinstance(value, str) for key, value in mapping.items()), mapping
