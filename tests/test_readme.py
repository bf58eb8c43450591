"""The README stays true: every setting is documented, and the two commands are where a new user looks."""

from __future__ import annotations

from pathlib import Path

from core.settings import ENV_PREFIX, Settings

README = (Path(__file__).parent.parent / "README.md").read_text()


def test_every_setting_is_in_the_configuration_table() -> None:
    missing = [name for name in Settings.model_fields if f"| `{ENV_PREFIX}{name.upper()}` |" not in README]
    assert missing == []


def test_the_two_commands_come_first() -> None:
    head = "\n".join(README.splitlines()[:40])
    assert "make run" in head
    assert "make test" in head


def test_ci_runs_the_readme_test_command() -> None:
    ci = (Path(__file__).parent.parent / ".ci" / "run").read_text()
    assert [line for line in ci.splitlines() if line and not line.startswith("#")][-1] == "make test"
