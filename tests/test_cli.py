"""The ``maie`` command as a user runs it: real subprocesses, real model, real audio."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import srt


def maie(*args: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    full_env = {**os.environ, "MAIE_DATA_DIR": str(cwd / "data"), "MAIE_REDIS_URL": "", **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "maie", *args], cwd=cwd, env=full_env, capture_output=True, text=True, timeout=600
    )


@pytest.mark.slow
def test_process_writes_exports_with_progress(tmp_path: Path, shared_audio: Path) -> None:
    out = tmp_path / "out"
    run = maie(
        "process",
        str(shared_audio / "jfk.flac"),
        str(shared_audio / "hotwords.mp3"),
        "--format",
        "srt",
        "-o",
        str(out),
        cwd=tmp_path,
    )
    assert run.returncode == 0, run.stderr
    subs = list(srt.parse((out / "jfk.srt").read_text()))
    assert "ask not what your country" in " ".join(s.content for s in subs).lower()
    assert (out / "hotwords.srt").exists()
    assert "processing_asr" in run.stderr  # the per-stage progress bar
    assert "jfk.flac -> " in run.stderr


@pytest.mark.slow
def test_process_json_to_stdout_and_failure_exit_code(tmp_path: Path, shared_audio: Path) -> None:
    bad = tmp_path / "notes.mp3"
    bad.write_text("not audio at all\n" * 100)
    run = maie("process", str(shared_audio / "jfk.flac"), str(bad), "--format", "json", cwd=tmp_path)
    assert run.returncode == 1
    assert "AUDIO_DECODE_ERROR" in run.stderr
    doc = json.loads(run.stdout)
    assert "ask not what your country" in doc["results"]["raw_transcript"].lower()
    assert doc["versions"]["asr"]["model"] == "tiny.en"


def test_templates_and_doctor(tmp_path: Path) -> None:
    run = maie("templates", "list", cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    for template_id in ("generic_summary_en_v2", "meeting_notes_v2", "interview_transcript_v2_en"):
        assert template_id in run.stdout
    run = maie("templates", "show", "generic_summary_en_v2", cwd=tmp_path)
    assert json.loads(run.stdout)["type"] == "object"
    run = maie("doctor", cwd=tmp_path, env={"MAIE_API_KEYS": "secret-key-value"})
    assert run.returncode == 0, run.stdout + run.stderr
    assert "secret-key-value" not in run.stdout  # keys are redacted
    assert "ok   whisper model: tiny.en" in run.stdout


def test_bad_setting_names_the_variable(tmp_path: Path) -> None:
    run = maie("doctor", cwd=tmp_path, env={"MAIE_VAD__THRESHOLD": "loud"})
    assert run.returncode == 2
    assert "MAIE_VAD__THRESHOLD" in run.stderr


def test_the_worker_entry_maie_serve_starts(tmp_path: Path) -> None:
    """``python -m maie.jobs worker`` (what ``maie serve`` spawns) refuses bad settings and arguments like
    ``maie worker``: exit 2 and one line naming the problem."""
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "src"), "MAIE_RATE_LIMIT": "lots"}
    run = subprocess.run(
        [sys.executable, "-m", "maie.jobs", "worker"], cwd=tmp_path, env=env, capture_output=True, text=True
    )
    assert run.returncode == 2 and "MAIE_RATE_LIMIT" in run.stderr and "count per period" in run.stderr
    run = subprocess.run([sys.executable, "-m", "maie.jobs"], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert run.returncode == 2 and "usage: python -m maie.jobs worker" in run.stderr
