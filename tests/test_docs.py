"""The examples in docs/api.md run against a live server.

A fenced ```bash or ```python block is tested when the line before it is ``<!-- test -->``, optionally with
``: expect "<text>"`` (the output must contain it, case-insensitive), ``: cli`` (needs ``maie submit`` in the
CLI) or ``: openai`` (needs the OpenAI-compatible endpoint). Blocks run in a fresh folder holding the reference
recording as ``meeting.flac`` (the guide says ``meeting.mp3``), with ``MAIE_URL`` and ``MAIE_API_KEY`` set and,
for bash blocks that use ``$TASK_ID`` without setting it, ``TASK_ID`` of a finished task.
"""

from __future__ import annotations

import os
import re
import shutil
import stat
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from live_service import API_KEY, JFK, live_service  # noqa: F401  (fixture)
from maie.client import MaieClient

from service import Service

ROOT = Path(__file__).resolve().parents[1]
GUIDE = ROOT / "docs" / "api.md"
MARK = re.compile(r"^<!--\s*test(?::\s*(?P<spec>.*?))?\s*-->$")
EXPECT = re.compile(r'^expect\s+"(?P<text>[^"]+)"$')


@dataclass(frozen=True)
class Example:
    lang: str
    code: str
    line: int
    expect: str | None = None
    needs: str | None = None  # "cli" | "openai"

    @property
    def id(self) -> str:
        return f"{self.lang}-line{self.line}"


def parse_examples(text: str) -> list[Example]:
    lines = text.splitlines()
    out: list[Example] = []
    for i, line in enumerate(lines):
        mark = MARK.match(line.strip())
        if not mark:
            continue
        fence = lines[i + 1].strip() if i + 1 < len(lines) else ""
        lang = fence.removeprefix("```")
        if not fence.startswith("```") or lang not in ("bash", "python"):
            raise ValueError(f"{GUIDE.name}:{i + 1}: a test marker must precede a ```bash or ```python block")
        end = next(j for j in range(i + 2, len(lines)) if lines[j].strip() == "```")
        spec = (mark.group("spec") or "").strip()
        expect = EXPECT.match(spec)
        needs = spec if spec in ("cli", "openai") else None
        if spec and not expect and not needs:
            raise ValueError(f"{GUIDE.name}:{i + 1}: unknown test marker {spec!r}")
        code = "\n".join(lines[i + 2 : end]) + "\n"
        out.append(Example(lang, code, i + 3, expect.group("text") if expect else None, needs))
    return out


EXAMPLES = parse_examples(GUIDE.read_text(encoding="utf-8"))


def test_guide_has_tested_examples_of_every_kind() -> None:
    kinds = {(e.lang, e.needs) for e in EXAMPLES}
    assert {("bash", None), ("python", None), ("bash", "cli"), ("python", "openai"), ("bash", "openai")} <= kinds
    assert len(EXAMPLES) >= 10


def cli_has_submit() -> bool:
    from maie.cli import app

    return any((c.name or getattr(c.callback, "__name__", "")) == "submit" for c in app.registered_commands)


def openai_endpoint_exists(base_url: str) -> bool:
    r = httpx.post(f"{base_url}/v1/audio/transcriptions", headers={"X-API-Key": API_KEY}, timeout=30)
    return r.status_code not in (404, 405)  # 405: only the static web UI mount answered


def finished_task(service: Service) -> str:
    with MaieClient(service.base_url, api_key=API_KEY) as client:
        task_id = client.submit(JFK)
        assert client.wait(task_id, timeout=180)["status"] == "COMPLETE"
    return task_id


def maie_shim(folder: Path) -> Path:
    """A ``maie`` command on PATH that runs this checkout, as an installed console script would."""
    folder.mkdir()
    shim = folder / "maie"
    shim.write_text(f'#!/bin/sh\nexec "{sys.executable}" -m maie "$@"\n')
    shim.chmod(shim.stat().st_mode | stat.S_IXUSR)
    return folder


@pytest.mark.slow
@pytest.mark.parametrize("example", EXAMPLES, ids=lambda e: e.id)
def test_example_runs(example: Example, live_service: Service, tmp_path: Path) -> None:  # noqa: F811
    # Everything an example needs is part of the product or the test set-up: missing is a failure.
    if example.needs == "cli":
        assert cli_has_submit(), "`maie submit` is not registered in maie/cli.py"
    if example.needs == "openai":
        assert openai_endpoint_exists(live_service.base_url), "POST /v1/audio/transcriptions is missing"
    if example.lang == "bash":
        for tool in ("curl", "jq"):
            assert shutil.which(tool), f"{tool} is not installed (.ci/run installs it)"

    work = tmp_path / "work"
    work.mkdir()
    shutil.copy(JFK, work / "meeting.flac")
    code = example.code.replace("meeting.mp3", "meeting.flac")
    src = str(ROOT / "src")
    env = {
        **os.environ,
        "MAIE_URL": live_service.base_url,
        "MAIE_API_KEY": API_KEY,
        "PYTHONPATH": os.pathsep.join(p for p in (src, os.environ.get("PYTHONPATH")) if p),
    }
    env.pop("MAIE_DATA_DIR", None)
    if example.lang == "bash":
        if "$TASK_ID" in code and "TASK_ID=" not in code:
            env["TASK_ID"] = finished_task(live_service)
        if example.needs == "cli":
            env["PATH"] = f"{maie_shim(tmp_path / 'bin')}{os.pathsep}{env['PATH']}"
        command = ["bash", "-euo", "pipefail", "-c", code]
    else:
        script = work / "example.py"
        script.write_text(code)
        command = [sys.executable, str(script)]
    proc = subprocess.run(command, cwd=work, env=env, capture_output=True, text=True, timeout=300)
    shown = f"--- code (docs/api.md line {example.line})\n{code}--- stdout\n{proc.stdout}--- stderr\n{proc.stderr}"
    assert proc.returncode == 0, shown
    if example.expect:
        assert example.expect.lower() in proc.stdout.lower(), shown


PLACEHOLDER = re.compile(r"\b[A-Z][A-Z]+_[0-9]+\b|\bTODO\b|\bTBD\b")


def test_docs_hold_no_unfilled_placeholders() -> None:
    """A figure still to be measured once stood in the deployment guide as ``RESULTS_60``."""
    found = []
    for doc in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        for n, line in enumerate(doc.read_text().splitlines(), 1):
            prose = re.sub(r"`[^`]*`", "", line)  # code spans name settings such as MAIE_X_1
            if PLACEHOLDER.search(prose):
                found.append(f"{doc.name}:{n}: {line.strip()}")
    assert not found, "\n".join(found)
