"""What users bring: the openai SDK, SSE consumers, webhook receivers, Prometheus."""

from __future__ import annotations

import http.server
import io
import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import ClassVar

import httpx
import openai
import pytest
import srt
import webvtt
from httpx_sse import connect_sse
from prometheus_client.parser import text_string_to_metric_families

from maie.api.webhook_delivery import SIGNATURE_HEADER, TIMESTAMP_HEADER, verify

from service import API_KEY, Service, start_service, wait_terminal

SECRET = "webhook-test-secret"


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    svc = start_service(
        tmp_path_factory.mktemp("int") / "data",
        env={"MAIE_WEBHOOK_SECRET": SECRET, "MAIE_WEBHOOK_ALLOW_PRIVATE": "true"},
    )
    try:
        svc.wait_ready()
        yield svc
    finally:
        svc.stop()


@pytest.fixture(scope="module")
def oai(service: Service) -> openai.OpenAI:
    return openai.OpenAI(base_url=service.base_url + "/v1", api_key=API_KEY, max_retries=0, timeout=120)


def test_openai_client_json_and_text(oai: openai.OpenAI, shared_audio: Path) -> None:
    with (shared_audio / "jfk.flac").open("rb") as f:
        result = oai.audio.transcriptions.create(model="whisper-1", file=f)
    assert "ask not what your country can do for you" in result.text.lower()
    with (shared_audio / "jfk.flac").open("rb") as f:
        text = oai.audio.transcriptions.create(model="whisper-1", file=f, response_format="text")
    assert isinstance(text, str) and "ask what you can do for your country" in text.lower()


def test_openai_client_srt_vtt(oai: openai.OpenAI, shared_audio: Path) -> None:
    with (shared_audio / "jfk.flac").open("rb") as f:
        body = oai.audio.transcriptions.create(model="whisper-1", file=f, response_format="srt")
    subs = list(srt.parse(body))
    assert subs and subs[0].start.total_seconds() < 1.0
    with (shared_audio / "jfk.flac").open("rb") as f:
        body = oai.audio.transcriptions.create(model="whisper-1", file=f, response_format="vtt")
    captions = webvtt.from_buffer(io.StringIO(body)).captions
    assert captions and "country" in " ".join(c.text for c in captions).lower()


def test_openai_client_verbose_json_with_words(oai: openai.OpenAI, shared_audio: Path) -> None:
    with (shared_audio / "jfk.flac").open("rb") as f:
        result = oai.audio.transcriptions.create(
            model="whisper-1",
            file=f,
            response_format="verbose_json",
            timestamp_granularities=["word", "segment"],
            language="en",
            temperature=0.0,
        )
    assert result.language == "en"
    assert 10.5 < result.duration < 11.5
    assert result.segments and all(s.start <= s.end for s in result.segments)
    words = [w.word.lower().strip(",.") for w in result.words or []]
    assert words[:4] == ["and", "so", "my", "fellow"]
    assert all(a.start <= b.start for a, b in zip(result.words, result.words[1:], strict=False))


def test_openai_client_error_is_a_4xx(oai: openai.OpenAI) -> None:
    with pytest.raises(openai.APIStatusError) as info:
        oai.audio.transcriptions.create(model="whisper-1", file=("notes.txt", b"hello, not audio" * 50))
    assert info.value.status_code == 415


def test_sse_progress_until_terminal(service: Service, shared_audio: Path) -> None:
    with service.client() as client:
        with (shared_audio / "jfk.flac").open("rb") as f:
            task_id = client.post("/v1/process", files={"file": ("jfk.flac", f)}).json()["task_id"]
        events, segments = [], []
        with connect_sse(client, "GET", f"/v1/tasks/{task_id}/events") as source:
            for sse in source.iter_sse():
                assert sse.event in ("status", "segment"), sse.event
                (events if sse.event == "status" else segments).append(json.loads(sse.data))
    assert events[-1]["status"] == "COMPLETE" and events[-1]["progress"] == 1.0
    assert "ask not what your country" in " ".join(s["text"] for s in segments).lower()  # live text too
    seen = [e["status"] for e in events]
    assert len(events) >= 2
    assert set(seen) - {"COMPLETE"}, seen  # at least one non-terminal state was streamed
    progress = [e["progress"] for e in events]
    assert progress == sorted(progress)


class Receiver(http.server.BaseHTTPRequestHandler):
    calls: ClassVar[list[tuple[dict[str, str], bytes]]] = []

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        Receiver.calls.append((dict(self.headers), body))
        self.send_response(500 if len(Receiver.calls) == 1 else 204)  # the first delivery fails
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


def test_webhook_signed_and_retried_after_500(service: Service, shared_audio: Path) -> None:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Receiver)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/hook"
    try:
        with service.client() as client:
            with (shared_audio / "jfk.flac").open("rb") as f:
                r = client.post("/v1/process", data={"callback_url": url}, files={"file": ("jfk.flac", f)})
            task_id = r.json()["task_id"]
            wait_terminal(client, task_id)
            record = {}
            for _ in range(100):
                record = client.get(f"/v1/status/{task_id}").json()
                if (record.get("webhook") or {}).get("delivered"):
                    break
                time.sleep(0.1)
    finally:
        server.shutdown()
    assert len(Receiver.calls) == 2
    for headers, body in Receiver.calls:
        assert json.loads(body) == {"task_id": task_id, "status": "COMPLETE"}
        assert verify(SECRET, headers[TIMESTAMP_HEADER], body, headers[SIGNATURE_HEADER])
        assert not verify("wrong-secret", headers[TIMESTAMP_HEADER], body, headers[SIGNATURE_HEADER])
    attempts = record["webhook"]["attempts"]
    assert [a.get("status_code") for a in attempts] == [500, 204]


def test_webhook_refuses_bad_targets(tmp_path: Path) -> None:
    svc = start_service(tmp_path / "data", workers=0)
    try:
        svc.wait_ready(need_worker=False)
        with svc.client() as client:
            for url in ("ftp://example.com/x", "http://127.0.0.1:9/x", "http://10.1.2.3/x", "not a url"):
                r = client.post("/v1/process", data={"callback_url": url}, files={"file": ("a.wav", b"RIFF")})
                assert r.status_code == 422 and r.json()["code"] == "INVALID_FIELD", (url, r.text)
    finally:
        svc.stop()


def test_metrics_parse_and_count(service: Service, shared_audio: Path) -> None:
    with service.client() as client, (shared_audio / "jfk.flac").open("rb") as f:
        wait_terminal(client, client.post("/v1/process", files={"file": ("jfk.flac", f)}).json()["task_id"])
    text = httpx.get(service.base_url + "/metrics").text
    families = {f.name: f for f in text_string_to_metric_families(text)}
    for name in (
        "maie_http_requests",
        "maie_http_request_duration_seconds",
        "maie_queue_depth",
        "maie_tasks_active",
        "maie_tasks_finished",
        "maie_stage_duration_seconds",
        "maie_audio_seconds_processed",
        "maie_workers_live",
        "maie_worker_heartbeat_age_seconds",
    ):
        assert name in families, name
    finished = {
        s.labels["status"]: s.value for s in families["maie_tasks_finished"].samples if s.name.endswith("_total")
    }
    assert finished["COMPLETE"] >= 1
    audio = next(s.value for s in families["maie_audio_seconds_processed"].samples if s.name.endswith("_total"))
    assert audio >= 10.5
    assert families["maie_workers_live"].samples[0].value == 1
    routes = {s.labels.get("route") for s in families["maie_http_requests"].samples}
    assert "/v1/process" in routes and "/v1/status/{task_id}" in routes
