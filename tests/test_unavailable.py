"""Features that cannot run are refused at submit, before any work, by the API and both CLI commands.

"Not installed" is made real, not mocked: the processes run with ``PYTHONPATH`` starting with a
directory holding a ``resemblyzer`` package whose import raises ImportError, so in those processes
(and in the import check they start) ``import resemblyzer`` genuinely fails, as on a machine without
the ``diarization`` extra.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from live_service import API_KEY, JFK, live_service  # noqa: F401  (fixture)

from service import Service, start_service


@pytest.fixture(scope="module")
def no_resemblyzer(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    stub = tmp_path_factory.mktemp("stub") / "resemblyzer"
    stub.mkdir()
    (stub / "__init__.py").write_text(
        "raise ImportError(\"No module named 'resemblyzer' (test: extra not installed)\")\n"
    )
    return {"PYTHONPATH": os.pathsep.join([str(stub.parent), os.environ.get("PYTHONPATH", "")])}


@pytest.fixture(scope="module")
def bare_service(tmp_path_factory: pytest.TempPathFactory, no_resemblyzer: dict[str, str]) -> Iterator[Service]:
    """An API without the diarization extra (no worker: nothing should ever reach one)."""
    svc = start_service(tmp_path_factory.mktemp("bare") / "data", workers=0, env=no_resemblyzer)
    try:
        svc.wait_ready(need_worker=False)
        yield svc
    finally:
        svc.stop()


def test_diarization_not_installed_is_refused_at_submit(bare_service: Service) -> None:
    with bare_service.client() as client:
        r = client.post(
            "/v1/process", data={"enable_diarization": "true"}, files={"file": ("jfk.flac", JFK.read_bytes())}
        )
        assert r.status_code == 422, r.text
        body = r.json()
        assert body["code"] == "FEATURE_UNAVAILABLE"
        assert "maie[diarization]" in body["detail"] and "enable_diarization" in body["detail"]
        assert client.get("/v1/tasks").json() == []  # nothing was queued
        assert not list((bare_service.data_dir / "audio").glob("*/source.*"))  # nor stored
        # Without diarization the same upload is accepted.
        r = client.post("/v1/process", files={"file": ("jfk.flac", JFK.read_bytes())})
        assert r.status_code == 202, r.text
        models = client.get("/v1/models").json()
        assert models["features"]["diarization"]["available"] is False
        assert "maie[diarization]" in models["features"]["diarization"]["detail"]


def test_chunkformer_without_a_model_is_backend_unavailable(bare_service: Service) -> None:
    with bare_service.client() as client:
        r = client.post(
            "/v1/process", data={"asr_backend": "chunkformer"}, files={"file": ("jfk.flac", JFK.read_bytes())}
        )
        assert r.status_code == 503, r.text
        assert r.json()["code"] == "BACKEND_UNAVAILABLE"
        assert "MAIE_ASR__CHUNKFORMER_MODEL" in r.json()["detail"]
        assert client.get("/v1/models").json()["features"]["chunkformer"]["available"] is False


def test_other_language_with_an_english_only_model(live_service: Service) -> None:  # noqa: F811
    with live_service.client() as client:
        r = client.post("/v1/process", data={"language": "de"}, files={"file": ("jfk.flac", JFK.read_bytes())})
        assert r.status_code == 422, r.text
        assert r.json()["code"] == "LANGUAGE_UNSUPPORTED"
        assert "tiny.en" in r.json()["detail"] and "MAIE_ASR__WHISPER_MODEL" in r.json()["detail"]
        for ok in ("en", "EN"):
            r = client.post("/v1/process", data={"language": ok}, files={"file": ("jfk.flac", JFK.read_bytes())})
            assert r.status_code == 202, r.text
        # The diarization extra is installed in the test venv: offered.
        assert client.get("/v1/models").json()["features"]["diarization"]["available"] is True


def _maie(*args: str, cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    full_env = {**os.environ, "MAIE_DATA_DIR": str(cwd / "data"), "MAIE_REDIS_URL": "", **env}
    return subprocess.run([sys.executable, "-m", "maie", *args], cwd=cwd, env=full_env, capture_output=True,
                          text=True, timeout=300)  # fmt: skip


def test_process_refuses_before_any_work(tmp_path: Path, no_resemblyzer: dict[str, str]) -> None:
    started = time.monotonic()
    run = _maie("process", str(JFK), "--diarize", cwd=tmp_path, env=no_resemblyzer)
    assert run.returncode == 2, run.stderr
    assert "FEATURE_UNAVAILABLE" in run.stderr and "maie[diarization]" in run.stderr
    assert "processing_asr" not in run.stderr and "preprocessing" not in run.stderr  # no stage ran
    assert run.stdout == ""
    assert time.monotonic() - started < 60
    run = _maie("process", str(JFK), "--language", "fr", cwd=tmp_path, env={})
    assert run.returncode == 2 and "LANGUAGE_UNSUPPORTED" in run.stderr, run.stderr


def test_submit_refuses_before_sending(tmp_path: Path, bare_service: Service) -> None:
    env = {"MAIE_API_KEY": API_KEY}
    run = _maie("submit", str(JFK), str(JFK), "--diarize", "--server", bare_service.base_url, cwd=tmp_path, env=env)
    assert run.returncode == 2, run.stderr
    assert "FEATURE_UNAVAILABLE" in run.stderr and "maie[diarization]" in run.stderr
    before = httpx.get(bare_service.base_url + "/v1/tasks", headers=bare_service.headers).json()
    run = _maie("submit", str(JFK), "--language", "de", "--server", bare_service.base_url, cwd=tmp_path, env=env)
    assert run.returncode == 2 and "LANGUAGE_UNSUPPORTED" in run.stderr, run.stderr
    after = httpx.get(bare_service.base_url + "/v1/tasks", headers=bare_service.headers).json()
    assert after == before  # no task from either refused command
