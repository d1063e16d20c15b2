"""Deployment files use exactly the settings names the code reads, and carry no keys."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from maie.config import all_env_names

ROOT = Path(__file__).resolve().parents[1]
FILES = ["Dockerfile", "Dockerfile.cuda", "docker-compose.yml", "docs/deployment.md", "README.md"]
NAME = re.compile(r"\bMAIE_[A-Z0-9_]+\b")
NOT_SETTINGS = {"MAIE_WORKERS"}  # compose's own replica count, not read by MAIE


@pytest.mark.parametrize("name", FILES)
def test_every_variable_is_a_setting(name: str) -> None:
    known = all_env_names() | NOT_SETTINGS
    used = set(NAME.findall((ROOT / name).read_text()))
    assert used, f"{name} names no settings"
    assert used <= known, f"{name} uses unknown settings: {sorted(used - known)}"


def test_compose_has_no_default_keys() -> None:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    env = compose["services"]["api"]["environment"]
    assert "${MAIE_API_KEYS:?" in env["MAIE_API_KEYS"]  # required, never defaulted
    for service in compose["services"].values():
        for key, value in (service.get("environment") or {}).items():
            if "KEY" in key or "SECRET" in key:
                assert (str(value).startswith("${") and ":-}" in str(value)) or ":?" in str(value), (key, value)


def test_settings_names_cover_the_contract() -> None:
    contract = ROOT.parent / "shared" / "ARCHITECTURE.md"
    assert contract.exists(), "ARCHITECTURE.md must be beside the checkout (../shared)"
    named = set(NAME.findall(contract.read_text()))
    assert named <= all_env_names(), sorted(named - all_env_names())
