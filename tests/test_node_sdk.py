"""The official OpenAI Node SDK (npm ``openai``, pinned in tests/node/package.json) against a real server,
in its documented key order: ``create({model, file, response_format, timestamp_granularities, language,
prompt})`` sends every field after the file, so each is only applied because the whole form counts; the
same goes for ``stream: true`` (``create({file, model, response_format, stream})``, the guide's order)."""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import srt
import webvtt

from service import API_KEY, Service, start_service

NODE_DIR = Path(__file__).parent / "node"


@pytest.fixture(scope="module")
def node_results(tmp_path_factory: pytest.TempPathFactory, shared_audio: Path) -> Iterator[dict]:
    node, npm = shutil.which("node"), shutil.which("npm")
    assert node and npm, "node and npm are needed (apt-get install nodejs npm)"
    if not (NODE_DIR / "node_modules" / "openai").exists():
        subprocess.run([npm, "install", "--no-audit", "--no-fund"], cwd=NODE_DIR, check=True, timeout=600)
    svc = start_service(tmp_path_factory.mktemp("node") / "data")
    try:
        svc.wait_ready()
        yield _run(node, svc, shared_audio / "jfk.flac")
    finally:
        svc.stop()


def _run(node: str, svc: Service, audio: Path) -> dict:
    env = {**os.environ, "MAIE_URL": svc.base_url, "MAIE_KEY": API_KEY, "MAIE_AUDIO": str(audio)}
    proc = subprocess.run(
        [node, "compat.mjs"], cwd=NODE_DIR, env=env, capture_output=True, text=True, timeout=600, check=True
    )
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_json_and_text(node_results: dict) -> None:
    assert node_results["json"]["ok"], node_results["json"]
    text = node_results["json"]["value"]["text"]
    assert "ask not what your country can do for you" in text.lower()
    assert node_results["text"]["ok"] and node_results["text"]["value"].strip() == text.strip()


def test_srt_and_vtt(node_results: dict) -> None:
    subs = list(srt.parse(node_results["srt"]["value"]))
    assert subs and "country" in " ".join(s.content for s in subs).lower()
    captions = webvtt.from_buffer(io.StringIO(node_results["vtt"]["value"])).captions
    assert captions and "country" in " ".join(c.text for c in captions).lower()


def test_verbose_json_with_words(node_results: dict) -> None:
    value = node_results["verbose_json"]["value"]
    assert value["language"] == "en" and 10.5 < value["duration"] < 11.5
    words = [w["word"].lower().strip(",.") for w in value["words"]]
    assert words[:4] == ["and", "so", "my", "fellow"]
    assert all("avg_logprob" in s and s["tokens"] for s in value["segments"])


def test_error_message_reaches_the_sdk(node_results: dict) -> None:
    error = node_results["error"]
    assert not error["ok"] and error["status"] == 415
    assert "not a recognised audio" in error["message"] and error["code"] == "UNSUPPORTED_MEDIA_TYPE"


def test_models_list(node_results: dict) -> None:
    assert "whisper-1" in node_results["models"]["value"]


def test_stream_iterator_yields_deltas_then_done(node_results: dict) -> None:
    assert node_results["stream"]["ok"], node_results["stream"]
    events = node_results["stream"]["value"]
    types = [e["type"] for e in events]
    assert types[-1] == "transcript.text.done" and set(types[:-1]) == {"transcript.text.delta"}, types
    done = events[-1]["text"]
    assert "".join(e["delta"] for e in events[:-1]) == done
    assert done == node_results["json"]["value"]["text"]
