"""Property-based fuzzing of the live OpenAPI schema: no generated request may cause a server error."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from service import API_KEY, start_service

pytestmark = pytest.mark.skipif(
    shutil.which("schemathesis") is None and not (Path(sys.executable).parent / "schemathesis").exists(),
    reason="schemathesis not installed (pip install '.[test]')",
)


def test_no_server_errors_on_live_openapi(tmp_path: Path) -> None:
    # A high rate limit so the fuzzer reaches the handlers instead of collecting 429s.
    svc = start_service(tmp_path / "data", env={"MAIE_RATE_LIMIT": "100000/minute"})
    try:
        svc.wait_ready()
        cli = shutil.which("schemathesis") or str(Path(sys.executable).parent / "schemathesis")
        run = subprocess.run(
            [
                cli,
                "run",
                svc.base_url + "/openapi.json",
                "-H",
                f"X-API-Key: {API_KEY}",
                "--checks",
                "not_a_server_error",
                "--max-examples",
                "25",
                "--phases",
                "examples,coverage,fuzzing",
                "--seed",
                "1",
                "--workers",
                "1",
            ],
            capture_output=True,
            text=True,
            timeout=600,
            cwd=tmp_path,
        )
    finally:
        svc.stop()
    summary = run.stdout[-3000:]
    assert run.returncode == 0, summary
    assert " passed" in summary and "failed" not in summary.split("Test cases:")[-1], summary
    assert "Traceback" not in svc.log()
