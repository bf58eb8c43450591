"""The Helm chart, rendered by Helm's own engine (helm-python-sdk): lint, Kubernetes schemas, security, probes,
template-time failures, values schema and README; and a contract test that runs the rendered commands locally."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import functools
import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import httpx
import nats
import nats.js.errors
import pytest
import yaml
from support.chart import CHART_DIR, EXTERNAL, NAMESPACE, RELEASE, REPO, Doc, find, helm, one, render, render_files
from support.monitoring import check_prometheus_rule
from support.net import free_port

from core.auth import mint_token
from core.settings import ENV_PREFIX, Settings
from core.topics import Pattern
from telemetry.cli import build_parser
from telemetry.natsserver import LocalNatsServer

try:
    import kubernetes_validate
except ImportError as missing:  # no skip: a missing tool must fail the run, with the way to get it
    raise ImportError(
        f"tests/charts need kubernetes-validate ({missing}): pip install kubernetes-validate==1.37.0 (the dev extra)"
    ) from missing

KUBERNETES_VERSION = "1.33"
# What the monitoring stack reads, which the "everything" value set puts in its namespace: (kind, name).
MONITORING_OBJECTS = {
    ("ServiceMonitor", RELEASE),
    ("PrometheusRule", RELEASE),
    ("ConfigMap", f"{RELEASE}-grafana-dashboard"),
}


# The value sets rendered by most tests. The official NATS chart cannot be downloaded here: with
# nats.enabled (the chart's default) Helm renders our templates and leaves NATS out, which
# "in-chart-nats" covers; the declaration of the dependency is tested on its own below.
VALUE_SETS: dict[str, dict[str, Any]] = {
    "external-nats": EXTERNAL,
    "in-chart-nats": {},
    "ingress": {
        **EXTERNAL,
        "ingress": {"enabled": True, "hostname": "telemetry.example.com", "tls": {"enabled": True}},
    },
    "external-nats-with-credentials": {
        "nats": {"enabled": False},
        "externalNats": {
            "urls": ["nats://app:s3cret-pw@nats-0.example:4222", "tls://app:s3cret-pw@nats-1.example:4443"]
        },
        "networkPolicy": {"natsPorts": [4222, 4443], "natsTo": [{"ipBlock": {"cidr": "10.20.0.0/16"}}]},
    },
    "existing-secret": {
        "nats": {"enabled": False},
        "natsConnection": {"existingSecret": "nats-credentials", "existingSecretKey": "urls"},
        "telemetry": {"auth": {"jwt": {"existingSecret": "telemetry-jwt"}}},
    },
    "autoscaling-off": {
        **EXTERNAL,
        "ingest": {
            "autoscaling": {"enabled": False},
            "replicaCount": 3,
            "pdb": {"minAvailable": 2, "maxUnavailable": None},
        },
        "stream": {"autoscaling": {"enabled": False}, "replicaCount": 4, "pdb": {"create": False}},
    },
    "servicemonitor": {**EXTERNAL, "metrics": {"serviceMonitor": {"enabled": True, "labels": {"release": "prom"}}}},
    "everything": {
        **EXTERNAL,
        "image": {"registry": "registry.example", "digest": "sha256:" + "a" * 64, "pullSecrets": ["regcred"]},
        "ingress": {"enabled": True, "annotations": {"cert-manager.io/cluster-issuer": "letsencrypt"}},
        "metrics": {
            "serviceMonitor": {"enabled": True, "namespace": "monitoring"},
            "prometheusRule": {
                "enabled": True,
                "namespace": "monitoring",
                "labels": {"release": "prom"},
                "additionalAlertLabels": {"team": "sensors"},
                "thresholds": {"upstreamPending": 50000},
            },
            "grafanaDashboard": {
                "enabled": True,
                "namespace": "monitoring",
                "annotations": {"grafana_folder": "Telemetry"},
            },
        },
        "networkPolicy": {
            "ingressFrom": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "ingress-nginx"}}}],
            "extraEgress": [{"ports": [{"port": 4317, "protocol": "TCP"}]}],
        },
        "telemetry": {
            "forwardedAllowIps": "10.0.0.0/8",
            "extraEnv": {"TELEMETRY_FUTURE_SETTING": "1"},
            "stream": {"maxBytes": 10737418240, "maxAgeS": 0.5, "duplicateWindowS": 0.25},
            "auth": {
                "jwt": {"publicKeysSecret": "idp-keys", "audience": "telemetry", "issuer": "https://idp.example"},
                "apiKeys": {"existingSecret": "device-keys"},
            },
        },
        "natsConnection": {
            "tls": {"existingSecret": "nats-client-tls", "clientCertificate": True},
            "credentials": {"existingSecret": "nats-user", "type": "nkey", "existingSecretKey": "seed"},
        },
        "commonLabels": {"team": "sensors"},
        "ingest": {"podAnnotations": {"a": "b"}, "priorityClassName": "high", "tolerations": [{"operator": "Exists"}]},
        "stream": {
            "nodeSelector": {"pool": "sse"},
            "affinity": {},
            "autoscaling": {"targetCPUUtilizationPercentage": None},
        },
        "topologySpread": {"whenUnsatisfiable": "DoNotSchedule"},
    },
}


# --------------------------------------------------------------------------------------------------------------
# Rendering helpers (the chart fixture is conftest.py's; rendering is support/chart.py's)


def deployment(docs: list[Doc], component: str) -> Doc:
    """The Deployment of ingest or stream."""
    (found,) = [
        doc for doc in find(docs, "Deployment") if doc["metadata"]["labels"]["app.kubernetes.io/component"] == component
    ]
    return found


def container_of(workload: Doc) -> Doc:
    """The only container of a Deployment or Pod."""
    spec = workload["spec"]["template"]["spec"] if workload["kind"] == "Deployment" else workload["spec"]
    containers: list[Doc] = spec["containers"]
    assert len(containers) == 1
    return containers[0]


def secret_data(secret: Doc) -> dict[str, str]:
    """A Secret's data, decoded."""
    data = {key: base64.b64decode(value).decode() for key, value in secret.get("data", {}).items()}
    data.update(secret.get("stringData", {}))
    return data


def container_env(container: Doc, docs: list[Doc]) -> dict[str, str]:
    """The environment Kubernetes would give the container, from the rendered ConfigMaps and Secrets."""
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        if "configMapRef" in source:
            env.update(one(docs, "ConfigMap", source["configMapRef"]["name"])["data"])
        else:
            env.update(secret_data(one(docs, "Secret", source["secretRef"]["name"])))
    for variable in container.get("env", []):
        if "value" in variable:
            env[variable["name"]] = variable["value"]
        elif "secretKeyRef" in variable["valueFrom"]:
            ref = variable["valueFrom"]["secretKeyRef"]
            env[variable["name"]] = secret_data(one(docs, "Secret", ref["name"]))[ref["key"]]
        else:
            ref = variable["valueFrom"]["configMapKeyRef"]
            env[variable["name"]] = one(docs, "ConfigMap", ref["name"])["data"][ref["key"]]
    return env


def render_error(chart: helm.Chart, values: dict[str, Any]) -> str:
    """The message of the template-time failure these values cause."""
    with pytest.raises(helm.HelmRenderError) as failure:
        render(chart, values)
    return str(failure.value)


# --------------------------------------------------------------------------------------------------------------
# Lint and Kubernetes schemas


def missing_dependency_only(report: dict[str, Any]) -> list[dict[str, Any]]:
    """Lint findings above "info", but the missing nats dependency (it cannot be downloaded here)."""
    return [
        message
        for message in report["messages"]
        if message["severity"] >= 2 and "missing these dependencies: nats" not in message["error"]
    ]


@pytest.mark.parametrize("value_set", VALUE_SETS)
def test_helm_lint_is_clean(value_set: str) -> None:
    report = helm.lint(CHART_DIR, VALUE_SETS[value_set], namespace=NAMESPACE, kube_version="v1.33.0")
    assert report["errors"] == [], report
    assert missing_dependency_only(report) == [], report


def check_service_monitor(doc: Doc, docs: list[Doc]) -> None:
    """kubernetes-validate has no schema for CRDs: the fields of the ServiceMonitor we use, checked by hand
    against the Prometheus Operator's monitoring.coreos.com/v1 API."""
    assert doc["apiVersion"] == "monitoring.coreos.com/v1"
    assert set(doc) == {"apiVersion", "kind", "metadata", "spec"}
    spec = doc["spec"]
    assert set(spec) <= {"jobLabel", "namespaceSelector", "selector", "endpoints"}
    assert spec["namespaceSelector"] == {"matchNames": [NAMESPACE]}
    (endpoint,) = spec["endpoints"]
    assert set(endpoint) <= {"port", "path", "interval", "scrapeTimeout"}
    assert endpoint["path"] == "/metrics"
    for duration in (endpoint["interval"], endpoint["scrapeTimeout"]):
        assert duration[:-1].isdigit() and duration[-1] in "smh", duration
    # The selector picks exactly the two Services, and both name the scraped port.
    selected = [
        service for service in find(docs, "Service") if selects(spec["selector"], service["metadata"]["labels"])
    ]
    assert sorted(s["metadata"]["name"] for s in selected) == [f"{RELEASE}-ingest", f"{RELEASE}-stream"]
    for service in selected:
        assert endpoint["port"] in [port["name"] for port in service["spec"]["ports"]]
        assert (
            service["metadata"]["labels"]["app.kubernetes.io/component"]
            == service["metadata"]["labels"][spec["jobLabel"]]
        )


def selects(selector: Doc, labels: dict[str, str]) -> bool:
    """Whether a Kubernetes label selector (matchLabels, matchExpressions In/NotIn/Exists) matches labels."""
    if any(labels.get(key) != value for key, value in selector.get("matchLabels", {}).items()):
        return False
    for expression in selector.get("matchExpressions", []):
        value = labels.get(expression["key"])
        operator = expression["operator"]
        if operator == "In" and value not in expression["values"]:
            return False
        if operator == "NotIn" and value in expression["values"]:
            return False
        if operator == "Exists" and value is None:
            return False
    return True


def validate(doc: Doc, docs: list[Doc]) -> None:
    """Kubernetes' own schemas for its kinds; the Prometheus Operator's, checked by hand, for its CRDs."""
    if doc["kind"] == "ServiceMonitor":
        check_service_monitor(doc, docs)
    elif doc["kind"] == "PrometheusRule":
        check_prometheus_rule(doc)
    else:
        kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)


@pytest.mark.parametrize("value_set", VALUE_SETS)
def test_every_manifest_is_valid_kubernetes(chart: helm.Chart, value_set: str) -> None:
    docs = render(chart, VALUE_SETS[value_set])
    for doc in docs:
        validate(doc, docs)
        metadata = doc["metadata"]
        assert len(metadata["name"]) <= 63
        assert metadata["labels"]["app.kubernetes.io/managed-by"] == "Helm"
        assert metadata["labels"]["app.kubernetes.io/instance"] == RELEASE
        monitoring = value_set == "everything" and (doc["kind"], metadata["name"]) in MONITORING_OBJECTS
        assert metadata["namespace"] == ("monitoring" if monitoring else NAMESPACE)


def test_the_value_sets_render_what_they_switch_on(chart: helm.Chart) -> None:
    kinds = {name: sorted({doc["kind"] for doc in render(chart, values)}) for name, values in VALUE_SETS.items()}
    base = ["ConfigMap", "Deployment", "NetworkPolicy", "Pod", "PodDisruptionBudget", "Service", "ServiceAccount"]
    assert kinds["external-nats"] == sorted([*base, "HorizontalPodAutoscaler", "Secret"])
    assert kinds["existing-secret"] == sorted([*base, "HorizontalPodAutoscaler"])
    assert kinds["autoscaling-off"] == sorted([*base, "Secret"])
    assert "Ingress" in kinds["ingress"] and "ServiceMonitor" in kinds["servicemonitor"]
    assert {"Ingress", "ServiceMonitor", "PrometheusRule"} <= set(kinds["everything"])


def test_names_are_cut_to_63_characters(chart: helm.Chart) -> None:
    release = "r" * 53  # the longest release name Helm accepts
    docs = render(chart, VALUE_SETS["everything"], release=release)
    objects = [(doc["kind"], doc["metadata"]["name"]) for doc in docs]
    assert len(set(objects)) == len(objects)
    for doc in docs:
        name = doc["metadata"]["name"]
        assert len(name) <= 63 and not name.endswith("-"), name
        assert all(len(value) <= 63 for value in doc["metadata"]["labels"].values())
        if doc["kind"] not in {"ServiceMonitor", "PrometheusRule"}:  # no schemas (validate() checks them by hand)
            kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)


# --------------------------------------------------------------------------------------------------------------
# Pods: security, probes, settings


@pytest.mark.parametrize("value_set", VALUE_SETS)
def test_every_pod_is_locked_down(chart: helm.Chart, value_set: str) -> None:
    docs = render(chart, VALUE_SETS[value_set])
    workloads = find(docs, "Deployment") + find(docs, "Pod")
    assert len(workloads) == 3
    for workload in workloads:
        pod = workload["spec"]["template"]["spec"] if workload["kind"] == "Deployment" else workload["spec"]
        assert pod["automountServiceAccountToken"] is False
        assert pod["enableServiceLinks"] is False
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["runAsUser"] == 10001
        assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
        container = container_of(workload)
        security = container["securityContext"]
        assert security["runAsNonRoot"] is True
        assert security["readOnlyRootFilesystem"] is True
        assert security["allowPrivilegeEscalation"] is False
        assert security["privileged"] is False
        assert security["capabilities"] == {"drop": ["ALL"]}
        assert security["seccompProfile"] == {"type": "RuntimeDefault"}
        # A read-only root needs a writable /tmp, and it is bounded.
        assert {"name": "tmp", "mountPath": "/tmp"} in container["volumeMounts"]
        tmp = next(volume for volume in pod["volumes"] if volume["name"] == "tmp")
        assert tmp["emptyDir"]["sizeLimit"] == "64Mi"
        assert container["resources"]["requests"]["memory"] and container["resources"]["limits"]["memory"]
    account = one(docs, "ServiceAccount")
    assert account["automountServiceAccountToken"] is False


@pytest.mark.parametrize("component", ["ingest", "stream"])
def test_probes_ports_and_settings_agree(chart: helm.Chart, component: str) -> None:
    docs = render(chart, EXTERNAL)
    container = container_of(deployment(docs, component))
    assert "command" not in container  # the image's ENTRYPOINT (telemetry) runs, with the subcommand as argument
    assert container["args"] == [component]
    (port,) = container["ports"]
    assert port["name"] == "http"
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    env = container_env(container, docs)
    # The service listens where the probes, the Service and the NetworkPolicy look.
    assert env[f"TELEMETRY_{component.upper()}_PORT"] == str(port["containerPort"])
    assert env[f"TELEMETRY_{component.upper()}_HOST"] == "0.0.0.0"
    service = one(docs, "Service", f"{RELEASE}-{component}")
    assert service["spec"]["ports"][0]["targetPort"] == "http"
    assert selects(
        {"matchLabels": service["spec"]["selector"]},
        deployment(docs, component)["spec"]["template"]["metadata"]["labels"],
    )
    policy = one(docs, "NetworkPolicy")
    assert {"port": port["containerPort"], "protocol": "TCP"} in policy["spec"]["ingress"][0]["ports"]


def test_the_rendered_settings_are_exactly_the_settings_object(
    chart: helm.Chart, monkeypatch: pytest.MonkeyPatch
) -> None:
    docs = render(chart, EXTERNAL)
    env = container_env(container_of(deployment(docs, "stream")), docs)
    rendered = {name for name in env if name.startswith(ENV_PREFIX)}
    # Every setting the services have is set by the chart, and the chart sets nothing they do not have; a secret's
    # value never is: the chart mounts the secret and sets its _FILE setting.
    assert rendered == {ENV_PREFIX + field.upper() for field in Settings.model_fields} - {"TELEMETRY_JWT_SECRET"}
    for name in list(os.environ):
        if name.startswith(ENV_PREFIX):
            monkeypatch.delenv(name)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    settings = Settings()
    assert settings.nats_urls == ["nats://nats.messaging.svc:4222"]
    assert settings.stream_max_bytes == 1 << 30
    assert settings.stream_replicas == 1
    assert settings.log_format == "json"
    assert (settings.auth, settings.docs) == ("required", False)  # the chart's secure defaults


def test_large_and_fractional_numbers_survive_helm(chart: helm.Chart) -> None:
    # Helm reads numbers as floats; 10 GiB must not become 1.073741824e+10.
    data = one(render(chart, VALUE_SETS["everything"]), "ConfigMap", RELEASE)["data"]
    assert data["TELEMETRY_STREAM_MAX_BYTES"] == "10737418240"
    assert data["TELEMETRY_STREAM_MAX_AGE_S"] == "0.5"
    assert data["TELEMETRY_STREAM_DUPLICATE_WINDOW_S"] == "0.25"
    assert data["TELEMETRY_FUTURE_SETTING"] == "1"


def test_topology_spread_selects_each_services_own_pods(chart: helm.Chart) -> None:
    docs = render(chart, EXTERNAL)
    for component in ("ingest", "stream"):
        template = deployment(docs, component)["spec"]["template"]
        constraints = template["spec"]["topologySpreadConstraints"]
        assert [c["topologyKey"] for c in constraints] == ["topology.kubernetes.io/zone", "kubernetes.io/hostname"]
        for constraint in constraints:
            assert selects(constraint["labelSelector"], template["metadata"]["labels"])
            assert constraint["labelSelector"]["matchLabels"]["app.kubernetes.io/component"] == component
            assert constraint["matchLabelKeys"] == ["pod-template-hash"]
    off = render(chart, {**EXTERNAL, "topologySpread": {"enabled": False}})
    assert "topologySpreadConstraints" not in deployment(off, "stream")["spec"]["template"]["spec"]


def minimum_grace(values: Doc, shutdown_grace_s: int) -> int:
    """The chart's rule: preStop sleep, then the shutdown grace (whole seconds), then 2 s to close the NATS link."""
    return int(values["preStopSleepSeconds"]) + shutdown_grace_s + 2


@pytest.mark.parametrize("component", ["ingest", "stream"])
def test_grace_period_covers_the_pre_stop_sleep_and_the_drain(chart: helm.Chart, component: str) -> None:
    docs = render(chart, EXTERNAL)
    pod = deployment(docs, component)["spec"]["template"]["spec"]
    container = container_of(deployment(docs, component))
    shutdown_grace_s = int(container_env(container, docs)["TELEMETRY_SHUTDOWN_GRACE_S"])
    sleep_s = container["lifecycle"]["preStop"]["sleep"]["seconds"]
    assert sleep_s > 0
    assert pod["terminationGracePeriodSeconds"] >= minimum_grace({"preStopSleepSeconds": sleep_s}, shutdown_grace_s)

    # The boundary: exactly enough renders, one second less fails, naming the values to change.
    enough = minimum_grace({"preStopSleepSeconds": 5}, 5)
    render(chart, {**EXTERNAL, component: {"terminationGracePeriodSeconds": enough}})
    message = render_error(chart, {**EXTERNAL, component: {"terminationGracePeriodSeconds": enough - 1}})
    assert f"{component}.terminationGracePeriodSeconds={enough - 1} is shorter than" in message
    assert f"use at least {enough}" in message
    # A longer shutdown grace needs a longer grace period too.
    message = render_error(chart, {**EXTERNAL, "telemetry": {"shutdownGraceS": 24}})
    assert "terminationGracePeriodSeconds=30 is shorter than" in message
    assert "use at least 31" in message
    # Without a preStop sleep there is no hook, and the minimum shrinks accordingly.
    docs = render(chart, {**EXTERNAL, component: {"preStopSleepSeconds": 0, "terminationGracePeriodSeconds": 7}})
    assert "lifecycle" not in container_of(deployment(docs, component))


# --------------------------------------------------------------------------------------------------------------
# NATS: in-chart, external, credentials


def test_in_chart_nats_url_and_stream_replicas(chart: helm.Chart) -> None:
    docs = render(chart, {})
    env = container_env(container_of(deployment(docs, "ingest")), docs)
    assert env["TELEMETRY_NATS_URLS"] == f"nats://{RELEASE}-nats.{NAMESPACE}.svc:4222"
    assert env["TELEMETRY_STREAM_REPLICAS"] == "3"
    policy = one(docs, "NetworkPolicy", RELEASE)
    nats_rule = policy["spec"]["egress"][0]
    assert nats_rule["ports"] == [{"port": 4222, "protocol": "TCP"}]
    assert nats_rule["to"] == [
        {
            "podSelector": {
                "matchLabels": {
                    "app.kubernetes.io/name": "nats",
                    "app.kubernetes.io/instance": RELEASE,
                    "app.kubernetes.io/component": "nats",
                }
            }
        }
    ]
    # The official chart's naming rule: a release whose name contains "nats" names the Service after itself.
    docs = render(chart, {}, release="nats-prod")
    env = container_env(container_of(deployment(docs, "ingest")), docs)
    assert env["TELEMETRY_NATS_URLS"] == f"nats://nats-prod.{NAMESPACE}.svc:4222"


@pytest.mark.parametrize(
    ("values", "replicas"),
    [
        ({}, "3"),
        ({"nats": {"config": {"cluster": {"replicas": 5}}}}, "3"),
        ({"nats": {"config": {"cluster": {"enabled": False}}}}, "1"),
        ({"telemetry": {"stream": {"replicas": 2}}}, "2"),
        (EXTERNAL, "1"),
        ({**EXTERNAL, "telemetry": {"stream": {"replicas": 5}}}, "5"),
    ],
)
def test_stream_replicas_follow_the_nats_cluster(chart: helm.Chart, values: dict[str, Any], replicas: str) -> None:
    assert one(render(chart, values), "ConfigMap")["data"]["TELEMETRY_STREAM_REPLICAS"] == replicas


def test_credentials_stay_in_the_secret(chart: helm.Chart) -> None:
    docs = render(chart, VALUE_SETS["external-nats-with-credentials"])
    secret = one(docs, "Secret", f"{RELEASE}-nats")
    assert secret_data(secret) == {
        "TELEMETRY_NATS_URLS": "nats://app:s3cret-pw@nats-0.example:4222,tls://app:s3cret-pw@nats-1.example:4443"
    }
    outside = [doc for doc in docs if doc["kind"] != "Secret"]
    assert "s3cret-pw" not in json.dumps(outside)
    assert "TELEMETRY_NATS_URLS" not in one(docs, "ConfigMap")["data"]
    for component in ("ingest", "stream"):
        env = container_env(container_of(deployment(docs, component)), docs)
        assert env["TELEMETRY_NATS_URLS"].count("s3cret-pw") == 2
    egress = one(docs, "NetworkPolicy")["spec"]["egress"][0]
    assert egress == {
        "ports": [{"port": 4222, "protocol": "TCP"}, {"port": 4443, "protocol": "TCP"}],
        "to": [{"ipBlock": {"cidr": "10.20.0.0/16"}}],
    }


def test_an_existing_secret_replaces_the_charts(chart: helm.Chart) -> None:
    docs = render(chart, VALUE_SETS["existing-secret"])
    assert find(docs, "Secret") == []
    for component in ("ingest", "stream"):
        template = deployment(docs, component)["spec"]["template"]
        (variable,) = [
            v for v in container_of(deployment(docs, component))["env"] if v["name"] == "TELEMETRY_NATS_URLS"
        ]
        assert variable["valueFrom"]["secretKeyRef"] == {"name": "nats-credentials", "key": "urls"}
        # The chart cannot see that Secret's content, so there is no checksum of it to roll the pods.
        assert "checksum/nats" not in template["metadata"]["annotations"]
    # The external NATS is anywhere: the NATS egress rule has ports but no peers.
    assert "to" not in one(docs, "NetworkPolicy")["spec"]["egress"][0]


def test_a_settings_or_url_change_rolls_the_pods(chart: helm.Chart) -> None:
    def annotations(values: dict[str, Any]) -> dict[str, str]:
        found: dict[str, str] = deployment(render(chart, values), "stream")["spec"]["template"]["metadata"][
            "annotations"
        ]
        return found

    before = annotations(EXTERNAL)
    assert (
        annotations({**EXTERNAL, "telemetry": {"sse": {"keepaliveS": 20}}})["checksum/config"]
        != before["checksum/config"]
    )
    moved = {**EXTERNAL, "externalNats": {"urls": ["nats://elsewhere:4222"]}}
    assert annotations(moved)["checksum/nats"] != before["checksum/nats"]


def test_the_nats_dependency_is_declared(chart: helm.Chart) -> None:
    metadata = yaml.safe_load((CHART_DIR / "Chart.yaml").read_text())
    assert metadata["apiVersion"] == "v2"
    (dependency,) = metadata["dependencies"]
    assert dependency == {
        "name": "nats",
        "version": "~1",
        "repository": "https://nats-io.github.io/k8s/helm/charts/",
        "condition": "nats.enabled",
    }
    (listed,) = helm.dependency_list(CHART_DIR)
    assert listed["status"] in {"missing", "ok"}  # "missing" until `helm dependency update`
    values = chart.values["nats"]
    assert values["enabled"] is True
    assert values["config"]["jetstream"]["enabled"] is True
    assert values["config"]["jetstream"]["fileStore"]["pvc"]["size"] == "10Gi"
    assert values["config"]["cluster"] == {"enabled": True, "replicas": 3}


def test_the_condition_switches_the_nats_subchart(tmp_path: Path) -> None:
    """With a stand-in for the official chart in charts/ (what `helm dependency update` puts there), nats.enabled
    decides whether it is rendered, and our nats.* values reach it."""
    copy = tmp_path / "telemetry"
    shutil.copytree(CHART_DIR, copy)
    stand_in = copy / "charts" / "nats"
    (stand_in / "templates").mkdir(parents=True)
    (stand_in / "Chart.yaml").write_text("apiVersion: v2\nname: nats\nversion: 1.3.0\n")
    (stand_in / "values.yaml").write_text("config: {}\n")
    (stand_in / "templates" / "values.yaml").write_text(
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: nats-values\ndata:\n"
        "  values: {{ toJson .Values.config | quote }}\n"
    )
    with helm.Chart.load(copy) as with_nats:
        docs = render(with_nats, {})
        passed = json.loads(one(docs, "ConfigMap", "nats-values")["data"]["values"])
        assert passed["jetstream"] == {"enabled": True, "fileStore": {"pvc": {"size": "10Gi"}}}
        assert passed["cluster"] == {"enabled": True, "replicas": 3}
        assert find(render(with_nats, EXTERNAL), "ConfigMap", "nats-values") == []
    report = helm.lint(copy)
    assert report["errors"] == [] and missing_dependency_only(report) == []


# --------------------------------------------------------------------------------------------------------------
# Autoscaling, disruption budgets, ingress, monitoring, network policy


def test_autoscaling_owns_the_replica_count(chart: helm.Chart) -> None:
    on = render(chart, EXTERNAL)
    for component in ("ingest", "stream"):
        assert "replicas" not in deployment(on, component)["spec"]
        hpa = one(on, "HorizontalPodAutoscaler", f"{RELEASE}-{component}")
        assert hpa["apiVersion"] == "autoscaling/v2"
        assert hpa["spec"]["scaleTargetRef"] == {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "name": f"{RELEASE}-{component}",
        }
    assert (
        one(on, "HorizontalPodAutoscaler", f"{RELEASE}-stream")["spec"]["behavior"]["scaleDown"][
            "stabilizationWindowSeconds"
        ]
        == 600
    )
    off = render(chart, VALUE_SETS["autoscaling-off"])
    assert find(off, "HorizontalPodAutoscaler") == []
    assert deployment(off, "ingest")["spec"]["replicas"] == 3
    assert deployment(off, "stream")["spec"]["replicas"] == 4
    assert one(off, "PodDisruptionBudget")["spec"]["minAvailable"] == 2  # stream's is off in that value set
    for pdb in find(on, "PodDisruptionBudget"):
        component = pdb["metadata"]["labels"]["app.kubernetes.io/component"]
        assert pdb["spec"]["maxUnavailable"] == 1
        assert selects(pdb["spec"]["selector"], deployment(on, component)["spec"]["template"]["metadata"]["labels"])


def test_ingress_puts_both_services_behind_one_host(chart: helm.Chart) -> None:
    docs = render(chart, VALUE_SETS["ingress"])
    ingresses = {doc["metadata"]["labels"]["app.kubernetes.io/component"]: doc for doc in find(docs, "Ingress")}
    assert set(ingresses) == {"ingest", "stream"}
    # Only what clients use: no /metrics, /docs or probes from outside.
    stream_paths = [("/v1/stream", "Exact"), ("/v1/session", "Exact"), ("/", "Exact"), ("/ui/", "Prefix")]
    for component, paths in (("ingest", [("/v1/readings", "Exact")]), ("stream", stream_paths)):
        spec = ingresses[component]["spec"]
        assert spec["ingressClassName"] == "nginx"
        assert spec["tls"] == [{"hosts": ["telemetry.example.com"], "secretName": f"{RELEASE}-tls"}]
        (rule,) = spec["rules"]
        assert rule["host"] == "telemetry.example.com"
        assert [(route["path"], route["pathType"]) for route in rule["http"]["paths"]] == paths
        for route in rule["http"]["paths"]:
            backend = route["backend"]["service"]
            service = one(docs, "Service", backend["name"])
            assert service["metadata"]["labels"]["app.kubernetes.io/component"] == component
            assert backend["port"]["name"] in [port["name"] for port in service["spec"]["ports"]]
    stream = ingresses["stream"]["metadata"]["annotations"]
    assert stream["nginx.ingress.kubernetes.io/proxy-buffering"] == "off"
    assert stream["nginx.ingress.kubernetes.io/proxy-http-version"] == "1.1"
    assert stream["nginx.ingress.kubernetes.io/proxy-read-timeout"] == "3600"
    assert stream["nginx.ingress.kubernetes.io/proxy-send-timeout"] == "3600"
    ingest = ingresses["ingest"]["metadata"]["annotations"]
    # Buffering stays on for ingest (ingress-nginx applies an Ingress's annotations to all its paths: two objects).
    assert ingest == {"nginx.ingress.kubernetes.io/proxy-body-size": "1048576"}
    assert int(ingest["nginx.ingress.kubernetes.io/proxy-body-size"]) == int(
        one(docs, "ConfigMap")["data"]["TELEMETRY_MAX_BODY_BYTES"]
    )

    everything = render(chart, VALUE_SETS["everything"])
    for ingress in find(everything, "Ingress"):
        assert ingress["metadata"]["annotations"]["cert-manager.io/cluster-issuer"] == "letsencrypt"
        assert "tls" not in ingress["spec"]
    plain = render(chart, {**VALUE_SETS["ingress"], "ingress": {"enabled": True, "nginxAnnotations": False}})
    assert all("annotations" not in ingress["metadata"] for ingress in find(plain, "Ingress"))


def test_service_monitor_scrapes_both_services(chart: helm.Chart) -> None:
    docs = render(chart, VALUE_SETS["servicemonitor"])
    monitor = one(docs, "ServiceMonitor")
    check_service_monitor(monitor, docs)
    assert monitor["metadata"]["labels"]["release"] == "prom"
    assert find(render(chart, EXTERNAL), "ServiceMonitor") == []


def test_network_policy_covers_the_services_only(chart: helm.Chart) -> None:
    docs = render(chart, VALUE_SETS["everything"])
    policy = one(docs, "NetworkPolicy")["spec"]
    assert policy["policyTypes"] == ["Ingress", "Egress"]
    for component in ("ingest", "stream"):
        assert selects(policy["podSelector"], deployment(docs, component)["spec"]["template"]["metadata"]["labels"])
    test_pod = one(docs, "Pod")
    assert not selects(policy["podSelector"], test_pod["metadata"]["labels"])
    # With ingressFrom set, the listed peers and this release's pods (the helm test pod) may connect.
    (rule,) = policy["ingress"]
    assert rule["from"][0] == {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "ingress-nginx"}}}
    assert selects(rule["from"][1]["podSelector"], test_pod["metadata"]["labels"])
    egress_ports = [port for egress in policy["egress"] for port in egress["ports"]]
    assert {"port": 53, "protocol": "UDP"} in egress_ports and {"port": 53, "protocol": "TCP"} in egress_ports
    assert {"port": 4317, "protocol": "TCP"} in egress_ports
    assert "from" not in one(render(chart, EXTERNAL), "NetworkPolicy")["spec"]["ingress"][0]
    assert find(render(chart, {**EXTERNAL, "networkPolicy": {"enabled": False}}), "NetworkPolicy") == []


def test_only_this_releases_pods_reach_the_in_chart_nats(chart: helm.Chart) -> None:
    """Whoever reaches NATS's client port reads and writes every reading, past the services' auth."""
    docs = render(chart, {})
    policy = one(docs, "NetworkPolicy", f"{RELEASE}-nats")["spec"]
    nats_pod = {
        "app.kubernetes.io/name": "nats",
        "app.kubernetes.io/instance": RELEASE,
        "app.kubernetes.io/component": "nats",
    }
    assert selects(policy["podSelector"], nats_pod) and policy["policyTypes"] == ["Ingress"]
    allowed = {rule["ports"][0]["port"]: rule.get("from") for rule in policy["ingress"]}
    assert set(allowed) == {4222, 6222, 8222}
    clients = [peer["podSelector"] for peer in allowed[4222]]
    for pod in (
        deployment(docs, "ingest")["spec"]["template"]["metadata"]["labels"],
        deployment(docs, "stream")["spec"]["template"]["metadata"]["labels"],
        one(docs, "Pod")["metadata"]["labels"],  # the helm test pod
    ):
        assert any(selects(selector, pod) for selector in clients)
    assert not any(selects(selector, {**nats_pod, "app.kubernetes.io/component": "x"}) for selector in clients)
    assert [peer["podSelector"] for peer in allowed[6222]] == [{"matchLabels": nats_pod}]  # routes: servers only
    assert allowed[8222] is None  # probes and Prometheus
    assert find(render(chart, EXTERNAL), "NetworkPolicy", f"{RELEASE}-nats") == []
    assert find(render(chart, {"networkPolicy": {"enabled": False}}), "NetworkPolicy") == []


def test_forwarded_allow_ips_reach_both_services(chart: helm.Chart) -> None:
    docs = render(chart, VALUE_SETS["everything"])
    for component in ("ingest", "stream"):
        assert (
            container_env(container_of(deployment(docs, component)), docs)["TELEMETRY_FORWARDED_ALLOW_IPS"]
            == "10.0.0.0/8"
        )
        image = container_of(deployment(docs, component))["image"]
        assert image == "registry.example/telemetry-platform@sha256:" + "a" * 64
    plain = render(chart, EXTERNAL)
    assert (
        container_env(container_of(deployment(plain, "ingest")), plain)["TELEMETRY_FORWARDED_ALLOW_IPS"] == "127.0.0.1"
    )


def test_behind_an_ingress_the_default_trusts_the_private_ranges_and_the_notes_say_so(chart: helm.Chart) -> None:
    # With 127.0.0.1 trusted, every dashboard behind the Ingress would share the controller's address, and the
    # 65th per pod would be refused by telemetry.sse.maxConnectionsPerClient.
    values = {**EXTERNAL, "ingress": {"enabled": True}}
    docs = render(chart, values)
    for component in ("ingest", "stream"):
        trusted = container_env(container_of(deployment(docs, component)), docs)["TELEMETRY_FORWARDED_ALLOW_IPS"]
        assert trusted == "10.0.0.0/8,172.16.0.0/12,192.168.0.0/16,100.64.0.0/10,fc00::/7"
    notes = render_files(chart, values)[f"{RELEASE}/templates/NOTES.txt"]
    assert "X-Forwarded-For of proxies in 10.0.0.0/8," in notes
    assert "chosen by the chart" in notes
    chosen = {**values, "telemetry": {"forwardedAllowIps": "10.42.0.0/16"}}
    docs = render(chart, chosen)
    assert (
        container_env(container_of(deployment(docs, "stream")), docs)["TELEMETRY_FORWARDED_ALLOW_IPS"] == "10.42.0.0/16"
    )
    assert "chosen by the chart" not in render_files(chart, chosen)[f"{RELEASE}/templates/NOTES.txt"]


def test_notes_print_urls_and_commands(chart: helm.Chart) -> None:
    notes = render_files(chart, EXTERNAL)[f"{RELEASE}/templates/NOTES.txt"]
    assert f"kubectl -n {NAMESPACE} port-forward svc/{RELEASE}-ingest 8000:8000" in notes
    assert f"kubectl -n {NAMESPACE} port-forward svc/{RELEASE}-stream 8001:8001" in notes
    assert f"helm test {RELEASE} -n {NAMESPACE}" in notes
    notes = render_files(chart, VALUE_SETS["ingress"])[f"{RELEASE}/templates/NOTES.txt"]
    assert (
        """curl -N -H "Authorization: Bearer $TOKEN" 'https://telemetry.example.com/v1/stream?topic=plant1.>'"""
        in notes
    )
    assert "https://telemetry.example.com/v1/readings" in notes


def test_auth_is_required_by_default_with_a_generated_secret_that_the_pods_read_from_a_file(
    chart: helm.Chart, tmp_path: Path
) -> None:
    docs = render(chart, EXTERNAL)
    (generated,) = [doc for doc in find(docs, "Secret") if doc["metadata"]["name"] == f"{RELEASE}-auth"]
    secret = secret_data(generated)["jwt-secret"]
    assert len(secret) == 64
    assert secret not in json.dumps([doc for doc in docs if doc["kind"] != "Secret"])
    for component in ("ingest", "stream"):
        pod_spec = deployment(docs, component)["spec"]["template"]["spec"]
        container = container_of(deployment(docs, component))
        env = container_env(container, docs)
        assert (env["TELEMETRY_AUTH"], env["TELEMETRY_JWT_SECRET_FILE"]) == (
            "required",
            "/etc/telemetry/auth/jwt-secret",
        )
        assert "TELEMETRY_JWT_SECRET" not in env
        files = mounted_files(pod_spec, container, docs, tmp_path / component)
        assert Path(files["/etc/telemetry/auth/jwt-secret"]).read_text() == secret
    notes = render_files(chart, EXTERNAL)[f"{RELEASE}/templates/NOTES.txt"]
    assert f"kubectl -n {NAMESPACE} get secret {RELEASE}-auth -o jsonpath='{{.data.jwt-secret}}'" in notes
    assert "telemetry token --publish 'plant1.>' --subscribe 'plant1.>'" in notes


def test_given_key_sources_and_nats_credentials_are_mounted_and_nothing_is_generated(chart: helm.Chart) -> None:
    docs = render(chart, VALUE_SETS["everything"])
    assert [doc["metadata"]["name"] for doc in find(docs, "Secret")] == [f"{RELEASE}-nats"]
    data = one(docs, "ConfigMap", RELEASE)["data"]
    assert {name: data[name] for name in data if name.endswith("_FILE")} == {
        "TELEMETRY_JWT_SECRET_FILE": "",
        "TELEMETRY_JWT_PUBLIC_KEYS_FILE": "/etc/telemetry/auth/jwt-public-keys",
        "TELEMETRY_API_KEYS_FILE": "/etc/telemetry/auth/api-keys",
        "TELEMETRY_NATS_TLS_CA_FILE": "/etc/telemetry/nats/ca.crt",
        "TELEMETRY_NATS_TLS_CERT_FILE": "/etc/telemetry/nats/tls.crt",
        "TELEMETRY_NATS_TLS_KEY_FILE": "/etc/telemetry/nats/tls.key",
        "TELEMETRY_NATS_NKEY_SEED_FILE": "/etc/telemetry/nats/user.nk",
        "TELEMETRY_NATS_CREDS_FILE": "",
    }
    (volume,) = [v for v in deployment(docs, "stream")["spec"]["template"]["spec"]["volumes"] if v["name"] == "secrets"]
    mounted = {
        (source["secret"]["name"], item["key"], item["path"])
        for source in volume["projected"]["sources"]
        for item in source["secret"]["items"]
    }
    assert mounted == {
        ("idp-keys", "jwks.json", "auth/jwt-public-keys"),
        ("device-keys", "api-keys", "auth/api-keys"),
        ("nats-client-tls", "ca.crt", "nats/ca.crt"),
        ("nats-client-tls", "tls.crt", "nats/tls.crt"),
        ("nats-client-tls", "tls.key", "nats/tls.key"),
        ("nats-user", "seed", "nats/user.nk"),
    }
    # With public keys only, the test pod needs a token of its own: none here, so it is not given one.
    assert "TOKEN_SECRET_FILE" not in container_env(container_of(one(docs, "Pod")), docs)


def test_with_auth_off_nothing_is_generated_mounted_or_minted(chart: helm.Chart) -> None:
    values = {**EXTERNAL, "telemetry": {"auth": {"mode": "off"}}}
    docs = render(chart, values)
    assert [doc["metadata"]["name"] for doc in find(docs, "Secret")] == [f"{RELEASE}-nats"]
    assert one(docs, "ConfigMap")["data"]["TELEMETRY_AUTH"] == "off"
    assert "secrets" not in [v["name"] for v in deployment(docs, "stream")["spec"]["template"]["spec"]["volumes"]]
    assert "TOKEN_SECRET_FILE" not in container_env(container_of(one(docs, "Pod")), docs)
    assert "Auth is OFF" in render_files(chart, values)[f"{RELEASE}/templates/NOTES.txt"]


def test_helm_test_pod_targets_the_services(chart: helm.Chart) -> None:
    docs = render(chart, EXTERNAL)
    pod = one(docs, "Pod")
    assert pod["metadata"]["annotations"]["helm.sh/hook"] == "test"
    assert pod["spec"]["restartPolicy"] == "Never"
    container = container_of(pod)
    assert container["image"] == container_of(deployment(docs, "ingest"))["image"]
    assert container["command"][:3] == ["python", "-I", "-c"]
    assert container["command"][3] == (CHART_DIR / "files" / "helm_test.py").read_text()
    env = container_env(container, docs)
    for component, variable in (("ingest", "INGEST_URL"), ("stream", "STREAM_URL")):
        service = one(docs, "Service", f"{RELEASE}-{component}")
        assert env[variable] == f"http://{service['metadata']['name']}:{service['spec']['ports'][0]['port']}"


def test_the_services_are_subcommands_of_the_cli(chart: helm.Chart) -> None:
    docs = render(chart, EXTERNAL)
    for component in ("ingest", "stream"):
        args = build_parser().parse_args(container_of(deployment(docs, component))["args"])
        assert args.command == component


def test_app_version_is_the_projects_version() -> None:
    import tomllib

    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert yaml.safe_load((CHART_DIR / "Chart.yaml").read_text())["appVersion"] == project["version"]


# --------------------------------------------------------------------------------------------------------------
# Template-time failures


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"nats": {"enabled": False}}, "nats.enabled is false and there is no NATS to connect to"),
        ({"externalNats": {"urls": ["nats://a:4222"]}}, "both nats.enabled and externalNats.urls are set"),
        ({"nats": {"config": {"jetstream": {"enabled": False}}}}, "nats.config.jetstream.enabled must be true"),
        (
            {"telemetry": {"stream": {"replicas": 5}}},
            "telemetry.stream.replicas=5 cannot be placed on the in-chart NATS of 3",
        ),
        (
            {"nats": {"config": {"cluster": {"enabled": False}}}, "telemetry": {"stream": {"replicas": 3}}},
            "telemetry.stream.replicas=3 cannot be placed on the in-chart NATS of 1",
        ),
        (
            {**EXTERNAL, "telemetry": {"stream": {"maxAgeS": 60, "duplicateWindowS": 120}}},
            "telemetry.stream.duplicateWindowS (120) must not exceed telemetry.stream.maxAgeS (60)",
        ),
        (
            {**EXTERNAL, "ingest": {"pdb": {"minAvailable": 1}}},
            "ingest.pdb: set minAvailable or maxUnavailable, not both",
        ),
        ({**EXTERNAL, "stream": {"pdb": {"maxUnavailable": None}}}, "stream.pdb: set minAvailable or maxUnavailable"),
        (
            {**EXTERNAL, "stream": {"autoscaling": {"minReplicas": 5, "maxReplicas": 3}}},
            "stream.autoscaling: minReplicas (5) is above maxReplicas (3)",
        ),
        (
            {**EXTERNAL, "ingest": {"autoscaling": {"targetCPUUtilizationPercentage": None}}},
            "ingest.autoscaling: set targetCPUUtilizationPercentage or targetMemoryUtilizationPercentage",
        ),
        (
            {**EXTERNAL, "stream": {"terminationGracePeriodSeconds": 5}},
            "stream.terminationGracePeriodSeconds=5 is shorter than preStopSleepSeconds (5)",
        ),
        (
            {**EXTERNAL, "ingress": {"enabled": True, "streamProxyTimeoutS": 15}},
            "ingress.streamProxyTimeoutS (15) must exceed telemetry.sse.keepaliveS (15)",
        ),
        (
            {**EXTERNAL, "telemetry": {"extraEnv": {"TELEMETRY_INGEST_PORT": "9000"}}},
            "telemetry.extraEnv.TELEMETRY_INGEST_PORT: this setting is managed by the chart",
        ),
        (
            {**EXTERNAL, "telemetry": {"extraEnv": {"TELEMETRY_NATS_URLS": "nats://x:4222"}}},
            "telemetry.extraEnv.TELEMETRY_NATS_URLS: this setting is managed by the chart",
        ),
    ],
)
def test_impossible_combinations_fail_at_template_time(chart: helm.Chart, values: dict[str, Any], message: str) -> None:
    assert message in render_error(chart, values)


def test_the_limits_of_those_failures_still_render(chart: helm.Chart) -> None:
    render(chart, {"nats": {"enabled": False}, "natsConnection": {"existingSecret": "mine"}})
    render(chart, {"telemetry": {"stream": {"replicas": 3}}})
    render(chart, {**EXTERNAL, "telemetry": {"stream": {"maxAgeS": 0, "duplicateWindowS": 7200}}})
    render(chart, {**EXTERNAL, "telemetry": {"stream": {"maxAgeS": 120, "duplicateWindowS": 120}}})
    render(chart, {**EXTERNAL, "ingress": {"enabled": True, "streamProxyTimeoutS": 16}})
    render(chart, {**EXTERNAL, "stream": {"autoscaling": {"minReplicas": 3, "maxReplicas": 3}}})


# --------------------------------------------------------------------------------------------------------------
# values.schema.json and the README


@pytest.mark.parametrize(
    ("values", "complaint"),
    [
        ({"replicaCount": 3}, "additional properties 'replicaCount' not allowed"),
        ({"ingest": {"replicas": 3}}, "additional properties 'replicas' not allowed"),
        ({"telemetry": {"stream": {"maxBytez": 1}}}, "additional properties 'maxBytez' not allowed"),
        ({"ingest": {"replicaCount": "two"}}, "got string, want integer"),
        ({"telemetry": {"sse": {"keepaliveS": "15s"}}}, "got string, want number"),
        ({"ingress": {"enabled": "yes"}}, "got string, want boolean"),
        ({"telemetry": {"logLevel": "verbose"}}, "value must be one of"),
        ({"externalNats": {"urls": ["http://nats:4222"]}}, "does not match pattern"),
        ({"telemetry": {"stream": {"replicas": 7}}}, "maximum"),
        # uvicorn and nats-py take whole seconds: a fraction is refused, not rounded behind the user's back.
        ({"telemetry": {"shutdownGraceS": 24.5}}, "got number, want integer"),
        ({"telemetry": {"natsConnectTimeoutS": 0.5}}, "got number, want integer"),
        ({"telemetry": {"shutdownGraceS": 0}}, "minimum"),
        ({"telemetry": {"extraEnv": {"LOG_LEVEL": "debug"}}}, "does not match pattern"),
    ],
)
def test_values_schema_rejects_unknown_values_and_wrong_types(
    chart: helm.Chart, values: dict[str, Any], complaint: str
) -> None:
    with pytest.raises(helm.HelmValuesError) as rejected:
        chart.validate_schema(values)
    assert complaint in str(rejected.value)
    with pytest.raises(helm.HelmValuesError):
        render(chart, values)


def schema_node(schema: Doc, root: Doc, path: list[str]) -> Doc | None:
    """The schema of the value at path, following $ref; None when the schema does not describe it."""
    node = schema
    for part in path:
        while "$ref" in node:
            node = root["definitions"][node["$ref"].removeprefix("#/definitions/")]
        properties = node.get("properties", {})
        if part not in properties:
            return None
        node = properties[part]
    return node


def value_paths(values: Any, prefix: tuple[str, ...] = ()) -> Iterator[list[str]]:
    """The path of every value in values.yaml, maps included."""
    if isinstance(values, dict):
        for name, child in values.items():
            yield [*prefix, name]
            yield from value_paths(child, (*prefix, name))


def test_values_schema_covers_every_value(chart: helm.Chart) -> None:
    schema = json.loads((CHART_DIR / "values.schema.json").read_text())
    values = yaml.safe_load((CHART_DIR / "values.yaml").read_text())
    # Kubernetes objects passed through whole (resources, security contexts, ...) are typed as objects; below
    # them the schema leaves Kubernetes' own fields to Kubernetes.
    pass_through = {"updateStrategy", "behavior", "podSecurityContext", "containerSecurityContext", "resources"}
    undescribed = [
        ".".join(path)
        for path in value_paths(values)
        if schema_node(schema, schema, path) is None and not pass_through & set(path[:-1])
    ]
    assert undescribed == []
    chart.validate_schema(None)
    for values_set in VALUE_SETS.values():
        chart.validate_schema(values_set)


@functools.cache
def load_generator() -> ModuleType:
    """charts/values_table.py, imported by path (charts/ is no package; dataclasses need it in sys.modules)."""
    spec = importlib.util.spec_from_file_location("charts_values_table", REPO / "charts" / "values_table.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_readme_values_table_is_up_to_date() -> None:
    generator = load_generator()
    readme = (CHART_DIR / "README.md").read_text()
    values_text = (CHART_DIR / "values.yaml").read_text()
    assert generator.render_readme(readme, values_text) == readme, (
        "charts/telemetry/README.md is out of date: run python charts/values_table.py charts/telemetry"
    )
    documented = [param.key for section in generator.parse(values_text) for param in section.params]
    assert len(documented) == len(set(documented))


def test_the_generator_refuses_undocumented_values() -> None:
    generator = load_generator()
    with pytest.raises(generator.ValuesDocError, match="b has no @param line"):
        generator.parse("## @section S\n## @param a A\na: 1\nb: 2\n")
    with pytest.raises(generator.ValuesDocError, match="@param c names no value"):
        generator.parse("## @section S\n## @param a A\n## @param c C\na: 1\n")


# --------------------------------------------------------------------------------------------------------------
# Contract: the rendered commands, environment, ports and probes, run as local processes


def mounted_files(pod_spec: Doc, container: Doc, docs: list[Doc], root: Path) -> dict[str, str]:
    """What Kubernetes would mount from the rendered Secrets, written under ``root``: {mount path: local path}.

    Only Secrets the chart renders can be written; a test of mounts of existing Secrets reads the pod spec instead.
    """
    volumes = {volume["name"]: volume for volume in pod_spec.get("volumes", [])}
    local: dict[str, str] = {}
    for mount in container.get("volumeMounts", []):
        volume = volumes[mount["name"]]
        sources = volume["projected"]["sources"] if "projected" in volume else [{"secret": volume.get("secret")}]
        for source in sources:
            if not source.get("secret"):
                continue
            name = source["secret"].get("name") or source["secret"]["secretName"]
            data = secret_data(one(docs, "Secret", name))
            for item in source["secret"]["items"]:
                target = root / mount["mountPath"].lstrip("/") / item["path"]
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_text(data[item["key"]])
                local[f"{mount['mountPath']}/{item['path']}"] = str(target)
    return local


def with_local_paths(env: dict[str, str], files: dict[str, str]) -> dict[str, str]:
    """The environment with each mounted file's path replaced by where the test wrote it."""
    return {name: files.get(value, value) for name, value in env.items()}


def local_env(rendered: dict[str, str]) -> dict[str, str]:
    """The process environment: this one without any TELEMETRY_* of its own, plus the rendered variables."""
    env = {name: value for name, value in os.environ.items() if not name.startswith(ENV_PREFIX)}
    env.update(rendered)
    return env


def wait_for(url: str, process: subprocess.Popen[bytes], log: Path, deadline_s: float = 30.0) -> None:
    """Poll a probe path until it answers 200; fail with the service's log if it exits or never does."""
    deadline = time.monotonic() + deadline_s
    last = "no answer"
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"{process.args!r} exited with {process.returncode}:\n{log.read_text()}")
        try:
            response = httpx.get(url, timeout=2.0)
            if response.status_code == 200:
                return
            last = f"{response.status_code} {response.text}"
        except httpx.TransportError as err:
            last = repr(err)
        time.sleep(0.05)
    pytest.fail(f"{url} did not answer 200 within {deadline_s} s ({last}):\n{log.read_text()}")


def stop(process: subprocess.Popen[bytes]) -> None:
    """Terminate and reap a process that is still running (kill it if it hangs)."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


async def delete_stream(url: str, name: str) -> None:
    """Give the shared nats-server its storage back (each stream reserves its max_bytes)."""
    nc = await nats.connect(url)
    try:
        with contextlib.suppress(nats.js.errors.NotFoundError):
            await nc.jetstream().delete_stream(name)
    finally:
        await nc.close()


def test_rendered_commands_serve_probes_and_pass_helm_test(
    chart: helm.Chart, nats_server: LocalNatsServer, tmp_path: Path
) -> None:
    docs = render(chart, VALUE_SETS["servicemonitor"])
    ports = {component: free_port() for component in ("ingest", "stream")}
    # What Kubernetes would set, with loopback addresses instead of the cluster's, and a stream of this test's
    # own on the session's shared nats-server.
    overrides = {
        "TELEMETRY_NATS_URLS": nats_server.url,
        "TELEMETRY_STREAM_NAME": "CHARTCONTRACT",
        "TELEMETRY_SUBJECT_PREFIX": "chartcontract",
        "TELEMETRY_INGEST_HOST": "127.0.0.1",
        "TELEMETRY_STREAM_HOST": "127.0.0.1",
        "TELEMETRY_INGEST_PORT": str(ports["ingest"]),
        "TELEMETRY_STREAM_PORT": str(ports["stream"]),
    }
    processes: dict[str, subprocess.Popen[bytes]] = {}
    logs = {component: tmp_path / f"{component}.log" for component in ports}
    try:
        for component in ports:
            container = container_of(deployment(docs, component))
            env = container_env(container, docs)
            assert set(overrides) <= set(env), "the chart no longer sets what the override replaces"
            assert env[f"TELEMETRY_{component.upper()}_PORT"] == str(container["ports"][0]["containerPort"])
            pod_spec = deployment(docs, component)["spec"]["template"]["spec"]
            env = with_local_paths(env, mounted_files(pod_spec, container, docs, tmp_path / "mounts"))
            with logs[component].open("wb") as log:
                processes[component] = subprocess.Popen(
                    [sys.executable, "-m", "telemetry", *container["args"]],
                    env=local_env({**env, **overrides}),
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    cwd=tmp_path,
                )
        (monitor_endpoint,) = one(docs, "ServiceMonitor")["spec"]["endpoints"]
        for component, port in ports.items():
            container = container_of(deployment(docs, component))
            for probe in ("livenessProbe", "readinessProbe"):
                assert container[probe]["httpGet"]["port"] == container["ports"][0]["name"]
                wait_for(
                    f"http://127.0.0.1:{port}{container[probe]['httpGet']['path']}",
                    processes[component],
                    logs[component],
                )
            assert httpx.get(f"http://127.0.0.1:{port}{monitor_endpoint['path']}", timeout=5.0).status_code == 200

        # The helm test pod's own command, pointed at the local ports instead of the Services.
        pod = one(docs, "Pod")
        container = container_of(pod)
        env = with_local_paths(
            container_env(container, docs), mounted_files(pod["spec"], container, docs, tmp_path / "test-pod")
        )
        assert "TOKEN_SECRET_FILE" in env  # auth is required by default: the test pod mints its token
        env["INGEST_URL"] = f"http://127.0.0.1:{ports['ingest']}"
        env["STREAM_URL"] = f"http://127.0.0.1:{ports['stream']}"
        assert container["command"][0] == "python"
        test_run = subprocess.run(
            [sys.executable, *container["command"][1:]],
            env=local_env(env),
            capture_output=True,
            text=True,
            timeout=float(env["TIMEOUT_S"]) + 30,
            cwd=tmp_path,
        )
        assert test_run.returncode == 0, f"stdout:\n{test_run.stdout}\nstderr:\n{test_run.stderr}"
        assert "OK: seq" in test_run.stdout

        # SIGTERM (what the kubelet sends after the preStop sleep) with a stream open: the service ends the
        # stream and exits within the time the grace period leaves after the sleep.
        stream_pod = deployment(docs, "stream")["spec"]["template"]["spec"]
        budget_s = (
            stream_pod["terminationGracePeriodSeconds"]
            - container_of(deployment(docs, "stream"))["lifecycle"]["preStop"]["sleep"]["seconds"]
        )
        lines: list[str] = []
        url = f"http://127.0.0.1:{ports['stream']}/v1/stream"
        secret = Path(env["TOKEN_SECRET_FILE"]).read_bytes()
        token = mint_token(secret, subscribe=[Pattern.parse(">")], ttl_s=600)
        with httpx.stream(
            "GET",
            url,
            params={"topic": ">"},
            headers={"Authorization": f"Bearer {token}"},
            timeout=httpx.Timeout(5.0, read=budget_s),
        ) as response:
            assert response.status_code == 200
            lines_iter = response.iter_lines()
            lines.append(next(lines_iter))  # the retry: hint: the stream is open
            started = time.monotonic()
            for process in processes.values():
                process.send_signal(signal.SIGTERM)
            lines.extend(lines_iter)
        assert "event: end" in lines, lines
        for component, process in processes.items():
            remaining = budget_s - (time.monotonic() - started)
            try:
                process.wait(max(remaining, 0.1))
            except subprocess.TimeoutExpired:
                pytest.fail(f"{component} did not exit within {budget_s} s of SIGTERM:\n{logs[component].read_text()}")
            # uvicorn re-raises the signal it handled once it has shut down: the kubelet sees exit code 143.
            assert process.returncode in (0, -signal.SIGTERM), logs[component].read_text()
    finally:
        for process in processes.values():
            stop(process)
        asyncio.run(delete_stream(nats_server.url, overrides["TELEMETRY_STREAM_NAME"]))
