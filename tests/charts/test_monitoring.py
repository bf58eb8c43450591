"""What the chart ships for monitoring: the Grafana dashboard ConfigMap and the PrometheusRule, rendered by Helm's own
engine, their queries checked against the metrics the services export, and the alerts checked and unit-tested by
Debian's promtool (alerts_test.yaml)."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from support.chart import CHART_DIR, EXTERNAL, NAMESPACE, RELEASE, REPO, find, helm, one, render
from support.monitoring import (
    DASHBOARD_KEY,
    INSTALL_COMMAND,
    PROMETHEUS,
    PROMTOOL,
    alert_rules,
    check_prometheus_rule,
    dashboard,
    dashboard_config_maps,
    installed,
    panel_queries,
    panels,
)

DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
NAMESPACE_MATCHER = 'namespace=~"$namespace"'
UNIT_TESTS = Path(__file__).with_name("alerts_test.yaml")
RULES_FILE = "telemetry-rules.yaml"  # the name alerts_test.yaml's rule_files gives
# A row of README.md's metrics catalogue: | `name` | type | labels | meaning |
CATALOGUE_ROW = re.compile(r"^\| `(telemetry_\w+)` \| (counter|gauge|histogram) \|", re.M)
METRIC = re.compile(r"\btelemetry_\w+")
SELECTOR = re.compile(r"\b(telemetry_\w+)(\{[^}]*\})?")
# Every comparison of an alert: what the real-Prometheus test neutralises (`> N` to `> -Inf`, `< N` to `< +Inf`).
COMPARISON = re.compile(r"(==|!=|>=|<=|>|<)\s*(\S+)")
NUMBER = re.compile(r"-?[0-9]+(\.[0-9]+)?")
# Each threshold and the alert comparing with it, with a value other than the default.
THRESHOLDS = {
    "TelemetryIngestErrors": ("ingestErrorRatio", 0.05),
    "TelemetryIngestPublishSlow": ("publishP99S", 0.25),
    "TelemetryEndToEndLatencyHigh": ("endToEndP99S", 5),
    "TelemetryStreamSlowConsumers": ("slowConsumerEndsPerS", 0.5),
    "TelemetryStreamPendingBytesNearBudget": ("pendingBytesRatio", 0.9),
    "TelemetryStreamUpstreamLagGrowing": ("upstreamPending", 2500000),  # a large one: Helm must not print 2.5e+06
}


def alerts(groups: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The alerting rules of rule groups, by alert name."""
    return {rule["alert"]: rule for group in groups for rule in group["rules"]}


def exported_metrics() -> set[str]:
    """Every series name the services export, from README.md's metrics catalogue (a histogram as its three series)."""
    names: set[str] = set()
    for name, kind in CATALOGUE_ROW.findall((REPO / "README.md").read_text()):
        names |= {f"{name}_bucket", f"{name}_sum", f"{name}_count"} if kind == "histogram" else {name}
    return names


def promtool(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """Run Debian's promtool (failing the test, with the command to install it, when it is missing)."""
    return subprocess.run(
        [str(installed(PROMTOOL)), *args], cwd=cwd, capture_output=True, text=True, timeout=60, check=False
    )


def write_rules(directory: Path, groups: list[dict[str, Any]]) -> Path:
    """The rule groups as the Prometheus rules file alerts_test.yaml names."""
    path = directory / RULES_FILE
    path.write_text(yaml.safe_dump({"groups": groups}, sort_keys=False))
    return path


def unit_test_groups() -> list[dict[str, Any]]:
    """The test groups of alerts_test.yaml."""
    groups: list[dict[str, Any]] = yaml.safe_load(UNIT_TESTS.read_text())["tests"]
    return groups


def run_unit_test_group(group: dict[str, Any], groups: list[dict[str, Any]], directory: Path) -> None:
    """One test group of alerts_test.yaml run by promtool on ``groups``; fails with promtool's report."""
    write_rules(directory, groups)
    unit_tests = {**yaml.safe_load(UNIT_TESTS.read_text()), "tests": [group]}
    (directory / UNIT_TESTS.name).write_text(yaml.safe_dump(unit_tests, sort_keys=False))
    result = promtool("test", "rules", UNIT_TESTS.name, cwd=directory)
    assert result.returncode == 0, f"promtool test rules: exit {result.returncode}\n{result.stdout}{result.stderr}"


@pytest.fixture(scope="module")
def rules() -> list[dict[str, Any]]:
    """The rule groups rendered with the chart's defaults, as the real-Prometheus test gets them."""
    return alert_rules()


@pytest.fixture(scope="module")
def grafana_dashboard() -> dict[str, Any]:
    """The dashboard as the rendered ConfigMap carries it."""
    return dashboard()


# --------------------------------------------------------------------------------------------------------------
# Switches and the Kubernetes objects


@pytest.mark.parametrize("values", [{}, EXTERNAL], ids=["in-chart-nats", "external-nats"])
def test_monitoring_objects_are_off_by_default(chart: helm.Chart, values: dict[str, Any]) -> None:
    docs = render(chart, values)
    assert find(docs, "PrometheusRule") == []
    assert dashboard_config_maps(docs) == []


def test_the_dashboard_config_map_carries_the_sidecar_label(chart: helm.Chart) -> None:
    docs = render(chart, {**EXTERNAL, "metrics": {"grafanaDashboard": {"enabled": True}}})
    (config_map,) = dashboard_config_maps(docs)
    assert config_map["metadata"]["name"] == f"{RELEASE}-grafana-dashboard"
    assert config_map["metadata"]["namespace"] == NAMESPACE
    assert config_map["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert "annotations" not in config_map["metadata"]
    # The file goes in as it is: Grafana's own {{legend}} templates and ${datasource} are no Helm templates.
    assert config_map["data"] == {DASHBOARD_KEY: (CHART_DIR / "files" / "grafana" / "telemetry.json").read_text()}

    chosen = {
        "enabled": True,
        "namespace": "grafana",
        "sidecarLabel": "example.com/dashboard",
        "sidecarLabelValue": "telemetry",
        "labels": {"team": "sensors"},
        "annotations": {"grafana_folder": "Telemetry"},
    }
    (config_map,) = dashboard_config_maps(render(chart, {**EXTERNAL, "metrics": {"grafanaDashboard": chosen}}))
    metadata = config_map["metadata"]
    assert metadata["namespace"] == "grafana"
    assert metadata["labels"]["example.com/dashboard"] == "telemetry" and "grafana_dashboard" not in metadata["labels"]
    assert metadata["labels"]["team"] == "sensors"
    assert metadata["labels"]["app.kubernetes.io/instance"] == RELEASE
    assert metadata["annotations"] == {"grafana_folder": "Telemetry"}


def test_the_prometheus_rule_is_a_valid_object_with_labelled_documented_alerts(chart: helm.Chart) -> None:
    docs = render(chart, {**EXTERNAL, "metrics": {"prometheusRule": {"enabled": True}}})
    rule = one(docs, "PrometheusRule")
    check_prometheus_rule(rule)
    assert rule["metadata"]["name"] == RELEASE
    assert rule["metadata"]["namespace"] == NAMESPACE
    (group,) = rule["spec"]["groups"]
    for alert in group["rules"]:
        assert alert["labels"] in ({"severity": "critical"}, {"severity": "warning"}), alert
        assert set(alert["annotations"]) == {"summary", "description"}, alert
        assert "{{ $labels.namespace }}" in alert["annotations"]["description"], alert  # which installation
        assert "runbook_url" not in alert["annotations"]  # the runbooks are the chart README's

    chosen = {
        "enabled": True,
        "namespace": "monitoring",
        "labels": {"release": "prom"},
        "additionalAlertLabels": {"team": "sensors"},
    }
    rule = one(render(chart, {**EXTERNAL, "metrics": {"prometheusRule": chosen}}), "PrometheusRule")
    check_prometheus_rule(rule)
    assert rule["metadata"]["namespace"] == "monitoring"
    assert rule["metadata"]["labels"]["release"] == "prom"
    for alert in rule["spec"]["groups"][0]["rules"]:
        assert alert["labels"]["team"] == "sensors" and alert["labels"]["severity"] in {"critical", "warning"}


def test_the_support_module_gives_the_rendered_rules_and_dashboard(
    chart: helm.Chart, rules: list[dict[str, Any]], grafana_dashboard: dict[str, Any]
) -> None:
    """What the real-Prometheus test imports is what a default installation with both switches on renders."""
    docs = render(chart, {"metrics": {"prometheusRule": {"enabled": True}, "grafanaDashboard": {"enabled": True}}})
    assert rules == one(docs, "PrometheusRule")["spec"]["groups"]
    stricter = alerts(alert_rules({"metrics": {"prometheusRule": {"thresholds": {"publishP99S": 0.25}}}}))
    assert stricter["TelemetryIngestPublishSlow"]["expr"].endswith("> 0.25")  # values go over the defaults
    (config_map,) = dashboard_config_maps(docs)
    assert json.loads(config_map["data"][DASHBOARD_KEY]) == grafana_dashboard


# --------------------------------------------------------------------------------------------------------------
# The dashboard


def test_the_dashboard_has_a_stable_identity_and_its_variables(grafana_dashboard: dict[str, Any]) -> None:
    assert grafana_dashboard["title"] == "Telemetry platform"
    assert grafana_dashboard["uid"] == "telemetry-platform"  # links and bookmarks survive a reinstall
    assert grafana_dashboard["id"] is None  # Grafana gives its own
    assert 38 <= grafana_dashboard["schemaVersion"] <= 41  # Grafana 10.0 to 11.x
    variables = {variable["name"]: variable for variable in grafana_dashboard["templating"]["list"]}
    assert list(variables) == ["datasource", "namespace"]
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    namespace = variables["namespace"]
    assert namespace["type"] == "query"
    assert namespace["datasource"] == DATASOURCE
    assert namespace["definition"] == namespace["query"]["query"] == "label_values(telemetry_nats_connected, namespace)"
    assert (namespace["includeAll"], namespace["allValue"], namespace["multi"]) == (True, ".*", True)


def test_every_panel_queries_the_chosen_data_source(grafana_dashboard: dict[str, Any]) -> None:
    for panel in panels(grafana_dashboard):
        assert panel["datasource"] == DATASOURCE, panel["title"]
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target["datasource"] == DATASOURCE, panel["title"]
            assert target["expr"].strip(), panel["title"]


def test_every_selector_is_held_to_the_chosen_namespaces(grafana_dashboard: dict[str, Any]) -> None:
    for title, expr in panel_queries(grafana_dashboard):
        selectors = SELECTOR.findall(expr)
        assert selectors, (title, expr)
        for metric, matchers in selectors:
            assert NAMESPACE_MATCHER in matchers, (title, metric, expr)


def test_rates_follow_grafanas_intervals(grafana_dashboard: dict[str, Any]) -> None:
    """A fixed window would be too short for a slow scrape, or blur a zoomed-in view."""
    for title, expr in panel_queries(grafana_dashboard):
        for window in re.findall(r"\[([^\]]*)\]", expr):
            assert window in {"$__rate_interval", "$__range"}, (title, expr)


def test_the_dashboard_layout_has_no_overlaps(grafana_dashboard: dict[str, Any]) -> None:
    ids = [panel["id"] for panel in grafana_dashboard["panels"]]
    assert len(set(ids)) == len(ids)
    taken: set[tuple[int, int]] = set()
    for panel in grafana_dashboard["panels"]:
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24, panel["title"]
        cells = {(grid["x"] + dx, grid["y"] + dy) for dx in range(grid["w"]) for dy in range(grid["h"])}
        assert not cells & taken, panel["title"]
        taken |= cells


def test_panel_queries_reach_panels_inside_collapsed_rows() -> None:
    """A collapsed row keeps its panels inside it: the real-Prometheus test must see those queries too."""
    nested = {
        "panels": [
            {"type": "timeseries", "title": "top", "targets": [{"expr": "a"}]},
            {"type": "row", "title": "row", "panels": [{"type": "stat", "title": "inner", "targets": [{"expr": "b"}]}]},
        ]
    }
    assert panel_queries(nested) == [("top", "a"), ("inner", "b")]


def test_every_metric_in_panels_and_alerts_is_one_the_services_export(
    grafana_dashboard: dict[str, Any], rules: list[dict[str, Any]]
) -> None:
    exported = exported_metrics()
    assert "telemetry_nats_connected" in exported and "telemetry_ingest_publish_seconds_bucket" in exported
    queries = [*panel_queries(grafana_dashboard), *((name, rule["expr"]) for name, rule in alerts(rules).items())]
    queries += [("variables", variable["definition"]) for variable in grafana_dashboard["templating"]["list"][1:]]
    unknown = {(where, name) for where, expr in queries for name in METRIC.findall(expr) if name not in exported}
    assert unknown == set(), "not in README.md's metrics catalogue"


# --------------------------------------------------------------------------------------------------------------
# The alerts


def test_every_alert_compares_only_with_a_plain_number(rules: list[dict[str, Any]]) -> None:
    """The real-Prometheus test neutralises each `> N` / `< N` to see every expression return series."""
    for name, rule in alerts(rules).items():
        unquoted = re.sub(r'"[^"]*"', '""', rule["expr"])
        found = COMPARISON.findall(unquoted)
        assert found, name
        for operator, operand in found:
            assert operator in {">", "<"} and NUMBER.fullmatch(operand), (name, operator, operand)


def test_thresholds_from_values_land_in_the_expressions(rules: list[dict[str, Any]]) -> None:
    defaults = alerts(rules)
    chosen = dict(THRESHOLDS.values())
    changed = alerts(alert_rules({"metrics": {"prometheusRule": {"thresholds": chosen}}}))
    for name, (key, value) in THRESHOLDS.items():
        assert f"> {value}\n" in changed[name]["expr"] + "\n", (name, changed[name]["expr"])
        assert changed[name]["expr"] != defaults[name]["expr"], key


@pytest.mark.parametrize(
    ("values", "complaint"),
    [
        ({"prometheusRule": {"thresholds": {"publishP99S": "500ms"}}}, "got string, want number"),
        ({"prometheusRule": {"thresholds": {"ingestErrorRatio": 5}}}, "maximum"),
        ({"prometheusRule": {"thresholds": {"upstreamPending": 10.5}}}, "got number, want integer"),
        ({"prometheusRule": {"thresholds": {"p99": 1}}}, "additional properties 'p99' not allowed"),
        ({"prometheusRule": {"additionalAlertLabels": {"severity": "page"}}}, "invalid propertyName 'severity'"),
        ({"prometheusRule": {"enabled": "yes"}}, "got string, want boolean"),
        ({"grafanaDashboard": {"sidecarLabelValue": 1}}, "got number, want string"),
        ({"grafanaDashboard": {"sidecarLabel": "not a label"}}, "does not match pattern"),
        ({"grafanaDashboard": {"folder": "Telemetry"}}, "additional properties 'folder' not allowed"),
    ],
)
def test_values_schema_rejects_wrong_monitoring_values(
    chart: helm.Chart, values: dict[str, Any], complaint: str
) -> None:
    with pytest.raises(helm.HelmValuesError) as rejected:
        chart.validate_schema({"metrics": values})
    assert complaint in str(rejected.value)


def test_promtool_accepts_the_rendered_rules(rules: list[dict[str, Any]], tmp_path: Path) -> None:
    path = write_rules(tmp_path, rules)
    result = promtool("check", "rules", str(path), cwd=tmp_path)
    assert result.returncode == 0, f"promtool check rules: exit {result.returncode}\n{result.stdout}{result.stderr}"
    assert f"SUCCESS: {len(alerts(rules))} rules found" in result.stdout


def test_every_alert_has_unit_tests_that_fire_it_and_that_must_not(rules: list[dict[str, Any]]) -> None:
    fired: set[str] = set()
    quiet: set[str] = set()
    for group in unit_test_groups():
        for case in group["alert_rule_test"]:
            (fired if case.get("exp_alerts") else quiet).add(case["alertname"])
    assert fired == quiet == set(alerts(rules))


@pytest.mark.parametrize("group", unit_test_groups(), ids=lambda group: group["name"].split(":")[0].replace(" ", "-"))
def test_promtool_unit_tests(group: dict[str, Any], rules: list[dict[str, Any]], tmp_path: Path) -> None:
    run_unit_test_group(group, rules, tmp_path)


def test_a_unit_test_fails_when_its_alert_no_longer_fires(tmp_path: Path) -> None:
    """The unit tests are no formality: with a threshold above what the input reaches, the firing test fails."""
    lenient = alert_rules({"metrics": {"prometheusRule": {"thresholds": {"ingestErrorRatio": 0.5}}}})
    (firing, *_) = [group for group in unit_test_groups() if group["name"].startswith("TelemetryIngestErrors fires")]
    with pytest.raises(AssertionError, match="TelemetryIngestErrors"):
        run_unit_test_group(firing, lenient, tmp_path)


# --------------------------------------------------------------------------------------------------------------
# Runbooks and the tools


def runbooks() -> dict[str, str]:
    """The chart README's runbooks ("### <alert>" under "## Alerts and runbooks"), by alert name."""
    readme = (CHART_DIR / "README.md").read_text()
    section = readme.split("\n## Alerts and runbooks\n", 1)[1].split("\n## ", 1)[0]
    return {
        heading: body.strip() for heading, body in re.findall(r"^### (\w+)\n(.*?)(?=^### |\Z)", section, re.M | re.S)
    }


def test_every_alert_has_a_runbook_naming_its_panels(
    rules: list[dict[str, Any]], grafana_dashboard: dict[str, Any]
) -> None:
    found = runbooks()
    assert set(found) == set(alerts(rules))
    titles = {panel["title"] for panel in panels(grafana_dashboard)}
    for name, text in found.items():
        (line,) = [line for line in text.splitlines() if line.startswith("- **Dashboard:**")]
        named = re.findall(r'"([^"]+)"', line)
        assert named and set(named) <= titles, (name, named)
        for part in ("- **Means:**", "- **Look at:**", "- **Do:**"):
            assert part in text, (name, part)


def test_make_test_installs_prometheus_as_the_tests_expect() -> None:
    makefile = (REPO / "Makefile").read_text()
    paths = re.search(r"^PROMETHEUS_PATHS := (.*)$", makefile, re.M)
    install = re.search(r"^PROMETHEUS_INSTALL := (.*)$", makefile, re.M)
    assert paths is not None and install is not None
    assert paths[1].split() == [str(PROMTOOL), str(PROMETHEUS)]
    assert install[1] == INSTALL_COMMAND
    assert re.search(r"^test: .*\bprometheus\b", makefile, re.M)  # a prerequisite of make test, before pytest runs
    assert installed(PROMETHEUS) == PROMETHEUS
