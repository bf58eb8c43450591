"""The README stays true: every setting, endpoint, metric and command flag is documented as the code has it, the two
commands are where a new user looks, and the repository stands alone (no reference to documents outside it)."""

from __future__ import annotations

import argparse
import os
import re
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from fastapi import FastAPI

from core.docs import swagger_ui_version
from core.jetstream import JetStreamLink
from core.settings import ENV_PREFIX, Settings, env_only
from ingest.app import create_app as create_ingest
from ingest.metrics import IngestMetrics
from stream.app import create_app as create_stream
from stream.metrics import ENDED_REASONS, REFUSED_REASONS, RESET_REASONS, StreamMetrics
from telemetry.cli import build_parser, flag_of, shown

ROOT = Path(__file__).parent.parent
README = (ROOT / "README.md").read_text()
# What git ignores (.gitignore): the virtualenv, caches, local data, build output and reports.
GENERATED = {".git", ".venv", ".mypy_cache", ".ruff_cache", ".pytest_cache", "__pycache__", ".telemetry", "build"}
GENERATED |= {".hypothesis", "bench/results", "loadtest/reports", "tests/artifacts"}
OUTSIDE_REFERENCES = re.compile(rb"shared/|BENCHMARKS\.md|FIELD-NOTES")


def test_every_setting_is_in_the_configuration_table() -> None:
    missing = [name for name in Settings.model_fields if f"| `{ENV_PREFIX}{name.upper()}` |" not in README]
    assert missing == []


def test_the_configuration_table_gives_each_settings_flag_default_and_description() -> None:
    # The flag cell of a setting read from the environment only (a secret) is "none".
    rows = {
        row[0]: row[1:]
        for row in re.findall(r"^\| `(TELEMETRY_[A-Z_]+)` \| `?([^`|]+)`? \| `([^`]*)` \| (.*) \|$", README, re.M)
    }
    wrong = [
        name
        for name, field in Settings.model_fields.items()
        if ("none" if env_only(name) else flag_of(name), shown(field.default)) != rows[ENV_PREFIX + name.upper()][:2]
        or not rows[ENV_PREFIX + name.upper()][2].replace("`", "").startswith(field.description or "")
    ]
    assert wrong == []


@pytest.mark.parametrize("create_app", [create_ingest, create_stream], ids=["ingest", "stream"])
def test_every_endpoint_is_in_the_readme(create_app: Callable[[Settings], FastAPI]) -> None:
    paths = create_app(Settings()).openapi()["paths"]
    endpoints = [f"{method.upper()} {path}" for path, operations in paths.items() for method in operations]
    assert [endpoint for endpoint in endpoints if f"`{endpoint}" not in README] == []


def test_the_readme_names_the_swagger_ui_the_services_serve() -> None:
    version = swagger_ui_version()  # from the vendored package.json
    assert f"Swagger UI {version}," in README and f"`/docs/assets/{version}/...`" in README


def test_the_metrics_in_the_readme_are_the_ones_the_services_have() -> None:
    ingest, stream = IngestMetrics(), StreamMetrics()
    ingest.track_devices(lambda: 0)
    stream.watch(lambda: (0, 0))
    for metrics in (ingest, stream):  # as each service's app does with its own link
        JetStreamLink(Settings(), "readme").expose(metrics.registry)
    exposed = {
        family.name + ("_total" if family.type == "counter" else ""): family.type
        for registry in (ingest.registry, stream.registry)
        for family in registry.collect()
    }
    catalogue = dict(re.findall(r"^\| `(telemetry_[a-z_]+)` \| (counter|gauge|histogram) \|", README, re.M))
    assert catalogue == exposed
    assert set(re.findall(r"`(telemetry_(?:ingest|stream|nats)_[a-z_]+)", README)) == set(exposed)


def test_the_reasons_in_the_readme_are_the_ones_exported_from_the_start() -> None:
    lists = re.search(r"Reasons of `ended_connections`: (.*?); of\s+`refused_connections`: (.*?)\. ", README, re.S)
    resets = re.search(r"^\| `telemetry_stream_resets_total` \| .*? \| `reset` events sent: (.*) \|$", README, re.M)
    assert lists is not None and resets is not None
    texts = [*lists.groups(), resets[1]]
    named = [re.findall(r"(?:^|, )`([a-z_]+)`", " ".join(text.split())) for text in texts]
    assert named == [list(ENDED_REASONS), list(REFUSED_REASONS), list(RESET_REASONS)]


def test_every_flag_of_a_command_is_in_its_row_of_the_table_of_commands() -> None:
    syntax = dict(re.findall(r"^\| `telemetry (\w+) ([^`]*)` \|", README, re.M))
    (commands,) = [action for action in build_parser()._actions if isinstance(action, argparse._SubParsersAction)]
    own_flags = {
        name: [flag for action in parser._actions for flag in action.option_strings if flag not in ("-h", "--help")]
        for name, parser in commands.choices.items()
    }
    settings_flags = {flag_of(name) for name in Settings.model_fields}
    assert sorted(syntax) == sorted(name for name, flags in own_flags.items() if set(flags) - settings_flags)
    missing = [
        f"telemetry {name} {flag}"
        for name, text in syntax.items()
        for flag in own_flags[name]
        if flag not in settings_flags and not re.search(rf"{re.escape(flag)}\b(?!-)", text)
    ]
    assert missing == []


def test_the_two_commands_come_first() -> None:
    head = "\n".join(README.splitlines()[:40])
    assert "make run" in head
    assert "make test" in head


def test_ci_runs_the_readme_test_command() -> None:
    ci = (ROOT / ".ci" / "run").read_text()
    assert [line for line in ci.splitlines() if line and not line.startswith("#")][-1] == "make test"


def project_files() -> Iterator[Path]:
    """Every file of the repository but what git ignores."""
    for directory, subdirectories, files in os.walk(ROOT):
        relative = Path(directory).relative_to(ROOT)
        subdirectories[:] = [
            name
            for name in subdirectories
            if (relative / name).as_posix() not in GENERATED and not name.endswith(".egg-info")
        ]
        yield from (Path(directory) / name for name in files)


def test_the_repository_refers_to_no_document_outside_it() -> None:
    """Nobody who clones it has the team's shared notes: what the project relies on is written down in it."""
    referring = [
        str(path.relative_to(ROOT))
        for path in project_files()
        # This file names what it looks for.
        if path != Path(__file__) and OUTSIDE_REFERENCES.search(path.read_bytes())
    ]
    assert referring == []
