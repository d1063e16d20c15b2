"""What an operator relies on: readiness that says what is wrong, safe binding, logs without content."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import httpx

from service import free_port, start_service, wait_terminal


def test_readiness_names_what_is_missing(tmp_path: Path) -> None:
    dead_llm = f"http://127.0.0.1:{free_port()}/v1"
    svc = start_service(tmp_path / "data", workers=0, env={"MAIE_LLM__BASE_URL": dead_llm})
    try:
        svc.wait_ready(need_worker=False)
        r = httpx.get(svc.base_url + "/health/ready")
        assert r.status_code == 503
        checks = r.json()["checks"]
        assert checks["redis"]["ok"] is True
        assert checks["workers"] == {"ok": False, "live": 0}
        assert checks["llm"]["ok"] is False and "unreachable" in checks["llm"]["detail"]
        assert httpx.get(svc.base_url + "/health").status_code == 200  # liveness is not readiness
    finally:
        svc.stop()


def test_refuses_public_bind_without_a_key(tmp_path: Path) -> None:
    env = {**os.environ, "MAIE_DATA_DIR": str(tmp_path), "MAIE_API_KEYS": "", "MAIE_REDIS_URL": ""}
    run = subprocess.run(
        [sys.executable, "-m", "maie", "serve", "--host", "0.0.0.0", "--workers", "0"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode == 2
    assert "MAIE_API_KEYS" in run.stderr
    assert not (tmp_path / "redis").exists()  # refused before starting anything


def test_json_logs_carry_the_correlation_id_and_no_transcript(tmp_path: Path, shared_audio: Path) -> None:
    svc = start_service(tmp_path / "data", env={"MAIE_LOG_FORMAT": "json"})
    try:
        svc.wait_ready()
        with svc.client() as client, (shared_audio / "jfk.flac").open("rb") as f:
            r = client.post("/v1/process", files={"file": ("jfk.flac", f)}, headers={"X-Request-ID": "req-abc-123"})
            assert r.headers["X-Request-ID"] == "req-abc-123"
            record = wait_terminal(client, r.json()["task_id"])
        assert record["status"] == "COMPLETE"
        assert record["correlation_id"] == "req-abc-123"
    finally:
        svc.stop()
    lines = [json.loads(line) for line in svc.log().splitlines() if line.startswith("{")]
    assert lines, "no JSON log lines"
    tagged = [entry for entry in lines if entry["correlation_id"] == "req-abc-123"]
    loggers = {entry["logger"] for entry in tagged}
    assert "maie.jobs.tasks" in loggers  # the worker's lines carry the API request's id
    text = svc.log().lower()
    assert "fellow americans" not in text and "ask not what your country" not in text
