"""The Helm chart rendered by Helm's own engine (helm-python-sdk), for the chart's tests and the monitoring ones."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

try:
    import helm_python as helm
except ImportError as missing:  # no skip: a missing tool must fail the run, with the way to get it
    raise ImportError(
        f"the chart's tests need helm-python-sdk ({missing}): pip install helm-python-sdk==0.2.2 pyyaml (the dev extra)"
    ) from missing

# helm is the guarded import above, for the tests to use.
__all__ = [
    "CHART_DIR",
    "EXTERNAL",
    "NAMESPACE",
    "RELEASE",
    "REPO",
    "Doc",
    "find",
    "helm",
    "one",
    "render",
    "render_defaults",
    "render_files",
]

REPO = Path(__file__).resolve().parents[2]
CHART_DIR = REPO / "charts" / "telemetry"
RELEASE = "telemetry"
NAMESPACE = "iot"

Doc = dict[str, Any]

# The chart with a NATS of its own: what most tests render (the official NATS chart cannot be downloaded here).
EXTERNAL: dict[str, Any] = {"nats": {"enabled": False}, "externalNats": {"urls": ["nats://nats.messaging.svc:4222"]}}


def render_files(chart: helm.Chart, values: dict[str, Any], release: str = RELEASE) -> dict[str, str]:
    """Every rendered file (templates, NOTES.txt, test hooks), keyed by its path in the chart."""
    return chart.render(values, name=release, namespace=NAMESPACE)


def render(chart: helm.Chart, values: dict[str, Any], release: str = RELEASE) -> list[Doc]:
    """The rendered Kubernetes objects."""
    docs: list[Doc] = []
    for path, text in sorted(render_files(chart, values, release).items()):
        if path.endswith(".yaml"):
            docs.extend(doc for doc in yaml.safe_load_all(text) if doc)
    return docs


def render_defaults(values: dict[str, Any]) -> list[Doc]:
    """The objects rendered from the chart's defaults and ``values``, with the chart loaded for this one call: for
    callers without the tests' module-wide chart fixture."""
    with helm.Chart.load(CHART_DIR) as chart:
        return render(chart, values)


def find(docs: list[Doc], kind: str, name: str | None = None) -> list[Doc]:
    """The objects of a kind (and name)."""
    return [d for d in docs if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)]


def one(docs: list[Doc], kind: str, name: str | None = None) -> Doc:
    """The one object of a kind (and name)."""
    found = find(docs, kind, name)
    assert len(found) == 1, f"expected one {kind} {name or ''}, got {[d['metadata']['name'] for d in found]}"
    return found[0]
