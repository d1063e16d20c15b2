"""``maie process`` / ``maie submit`` show what was asked for: the clean transcript and summary whatever
``--format``, log lines above the progress bars (never inside them), several files at once.
Real subprocesses, the real embedded models, real audio."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import srt

from live_service import API_KEY, live_service  # noqa: F401  (fixture)

from service import Service

pytestmark = pytest.mark.slow
LOG_LINE = re.compile(r"^\d\d:\d\d:\d\d (DEBUG|INFO|WARNING|ERROR) ")


def maie(*args: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    full_env = {**os.environ, "MAIE_DATA_DIR": str(cwd / "data"), "MAIE_REDIS_URL": "", **(env or {})}
    return subprocess.run([sys.executable, "-m", "maie", *args], cwd=cwd, env=full_env, capture_output=True,
                          text=True, timeout=900)  # fmt: skip


def _sections(stdout: str) -> dict[str, str]:
    """``== Name ... ==`` blocks of the output, by name."""
    parts = re.split(r"^== (.+?) ==$", stdout, flags=re.M)
    return {
        head.split(" (")[0].split(" · ")[0]: body.strip() for head, body in zip(parts[1::2], parts[2::2], strict=True)
    }


def test_process_prints_clean_transcript_and_summary_with_srt(tmp_path: Path, shared_audio: Path) -> None:
    run = maie("process", str(shared_audio / "jfk.flac"), "--features", "raw_transcript,clean_transcript,summary",
               "--format", "srt", cwd=tmp_path, env={"MAIE_LOG_LEVEL": "DEBUG"})  # fmt: skip
    assert run.returncode == 0, run.stderr
    transcript, _, rest = run.stdout.partition("\n== ")
    subs = list(srt.parse(transcript))
    assert "ask not what your country" in " ".join(s.content for s in subs).lower()
    sections = _sections("== " + rest)
    # "Transcript text (clean-up changed nothing)" when the model kept every chunk raw (ENHANCE_UNCHANGED).
    clean = sections.get("Clean transcript") or sections["Transcript text"]
    assert "ask not what your country" in clean.lower()
    assert ("Transcript text" in sections) == ("ENHANCE_UNCHANGED" in run.stderr)
    assert isinstance(json.loads(sections["Summary"]), dict)
    # Every log line starts on its own line: after the bar is cleared ("\r"), never glued to a bar.
    logged = [line.rsplit("\r", 1)[-1] for line in run.stderr.split("\n") if " faster_whisper " in line]
    assert logged, run.stderr[-2000:]
    assert all(LOG_LINE.match(line) for line in logged), logged
    assert "processing_asr" in run.stderr


def test_process_to_files_still_shows_the_summary(tmp_path: Path, shared_audio: Path) -> None:
    out = tmp_path / "out"
    run = maie("process", str(shared_audio / "jfk.flac"), "--features", "raw_transcript,summary", "--format", "vtt",
               "-o", str(out), cwd=tmp_path)  # fmt: skip
    assert run.returncode == 0, run.stderr
    assert (out / "jfk.vtt").read_text().startswith("WEBVTT")
    sections = _sections(run.stdout)
    assert set(sections) == {"Summary"} and isinstance(json.loads(sections["Summary"]), dict)
    assert "jfk.flac" in run.stdout  # each block names its file


def test_submit_several_files_prints_each_with_its_summary(
    live_service: Service,  # noqa: F811
    tmp_path: Path,
    shared_audio: Path,
) -> None:
    files = [shared_audio / "jfk.flac", shared_audio / "hotwords.mp3"]
    run = maie("submit", *map(str, files), "--server", live_service.base_url, "--features", "raw_transcript,summary",
               "--parallel", "2", cwd=tmp_path, env={"MAIE_API_KEY": API_KEY})  # fmt: skip
    assert run.returncode == 0, run.stderr
    # In the order given, each transcript followed by its summary.
    jfk_at = run.stdout.lower().index("ask not what your country")
    hot_at = run.stdout.lower().index("folder")
    assert jfk_at < hot_at
    assert run.stdout.count("== Summary") == 2
    first_summary = run.stdout.index("== Summary")
    assert jfk_at < first_summary < hot_at
    # Both progress bars were drawn (one line each).
    assert "jfk.flac" in run.stderr and "hotwords.mp3" in run.stderr
    with live_service.client() as client:
        tasks = [
            t
            for t in client.get("/v1/tasks", params={"limit": 10}).json()
            if t["filename"] in ("jfk.flac", "hotwords.mp3")
        ]
    assert len(tasks) >= 2
