"""The README's quick start is what CI runs."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def commands() -> dict[str, str]:
    out = {}
    for line in (ROOT / ".ci" / "commands").read_text().splitlines():
        if "=" in line and not line.startswith("#"):
            name, _, value = line.partition("=")
            out[name] = value
    return out


def test_readme_quick_start_matches_ci() -> None:
    readme = (ROOT / "README.md").read_text()
    cmds = commands()
    assert set(cmds) == {"SERVE_COMMAND", "TEST_COMMAND"}
    for command in cmds.values():
        assert f"\n{command}\n" in readme, command
