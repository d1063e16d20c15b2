"""Streaming transcription (issue 13): ``stream=true`` on ``/v1/audio/transcriptions`` through the official
Python SDK (sync and async) and raw HTTP, live ``segment`` events in a ``/v1/process`` task's own stream,
and LiteLLM's ``transcription``. Real server (the session's live service), real tiny.en, real audio.
The Node SDK's stream iterator is in test_node_sdk.py, a live stream's tenancy in test_tenancy.py."""

from __future__ import annotations

import asyncio
import os
import socket
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import openai
import pytest
import soundfile as sf
from httpx_sse import connect_sse
from openai.types.audio import TranscriptionTextDeltaEvent, TranscriptionTextDoneEvent

from live_service import API_KEY, JFK_PHRASE, live_service  # noqa: F401  (fixture)

import speech_mix
from service import Service, wait_terminal

# LiteLLM fetches its model price list from the internet at import unless told to use its bundled copy.
os.environ["LITELLM_LOCAL_MODEL_COST_MAP"] = "True"


@pytest.fixture(scope="module")
def oai(live_service: Service) -> openai.OpenAI:  # noqa: F811
    return openai.OpenAI(base_url=live_service.base_url + "/v1", api_key=API_KEY, max_retries=0, timeout=120)


def tiled(shared_audio: Path, out: Path, times: int) -> Path:
    samples, rate = sf.read(shared_audio / "jfk.flac", dtype="float32", always_2d=True)
    sf.write(out, np.tile(samples.mean(axis=1), times), rate, subtype="PCM_16")
    return out


@pytest.fixture(scope="module")
def jfk4(tmp_path_factory: pytest.TempPathFactory, shared_audio: Path) -> Path:
    """jfk.flac four times over: 44 s, two 30 s Whisper windows, so text comes out in two goes."""
    return tiled(shared_audio, tmp_path_factory.mktemp("audio") / "jfk4.wav", 4)


@pytest.fixture(scope="module")
def mixed(tmp_path_factory: pytest.TempPathFactory, shared_audio: Path) -> Path:
    """150 s of the reference clips in a varied order (``speech_mix``): several blocks, decoded two at a
    time here and put out in order, so the first block's text is out well before the last is decoded.
    Not one clip tiled: the hallucination filter holds back a run of identical segments until it ends,
    so jfk.flac repeated comes out all at once, at the end."""
    mix = speech_mix.build(shared_audio, 150)
    out = tmp_path_factory.mktemp("audio") / "mixed.wav"
    sf.write(out, mix.samples, speech_mix.SAMPLE_RATE, subtype="PCM_16")
    return out


def test_sdk_stream_sends_text_while_the_worker_decodes(oai: openai.OpenAI, live_service: Service, mixed: Path) -> None:  # noqa: F811
    with mixed.open("rb") as f:
        stream = oai.audio.transcriptions.create(model="whisper-1", file=f, stream=True)
    task_id = stream.response.headers["X-MAIE-Task-Id"]
    events: list[Any] = []
    first_at: datetime | None = None
    for event in stream:
        first_at = first_at or datetime.now(UTC)
        events.append(event)
    *deltas, done = events
    assert isinstance(done, TranscriptionTextDoneEvent) and done.type == "transcript.text.done"
    assert len(deltas) >= 2 and all(isinstance(d, TranscriptionTextDeltaEvent) for d in deltas), events
    assert "".join(d.delta for d in deltas) == done.text
    assert JFK_PHRASE in done.text.lower() and "horizon" in done.text.lower()
    with live_service.client() as client:
        record = client.get(f"/v1/status/{task_id}").json()
    assert record["status"] == "COMPLETE" and record["results"]["raw_transcript"] == done.text
    # The first text left the server while the worker was still decoding later blocks: a whole
    # second before the task completed (the last blocks take seconds on tiny.en here).
    completed_at = datetime.fromisoformat(record["completed_at"].replace("Z", "+00:00"))
    assert first_at is not None and (completed_at - first_at).total_seconds() > 1.0, (first_at, completed_at)


def test_async_sdk_stream_ends_with_the_json_text(live_service: Service, shared_audio: Path) -> None:  # noqa: F811
    audio = (shared_audio / "jfk.flac").read_bytes()

    async def run() -> None:
        client = openai.AsyncOpenAI(base_url=live_service.base_url + "/v1", api_key=API_KEY, max_retries=0)
        as_json = await client.audio.transcriptions.create(model="whisper-1", file=("jfk.flac", audio))
        stream = await client.audio.transcriptions.create(model="whisper-1", file=("jfk.flac", audio), stream=True)
        events = [event async for event in stream]
        assert [e.type for e in events][-1] == "transcript.text.done" and len(events) >= 2
        assert {e.type for e in events[:-1]} == {"transcript.text.delta"}
        done = events[-1]
        assert isinstance(done, TranscriptionTextDoneEvent)
        assert done.text == as_json.text and JFK_PHRASE in done.text.lower()
        # text is json's text too, streamed the same way
        stream = await client.audio.transcriptions.create(
            model="whisper-1", file=("jfk.flac", audio), stream=True, response_format="text"
        )
        assert [e async for e in stream][-1].model_dump() == done.model_dump()

    asyncio.run(run())


def test_refusals_before_the_stream_stay_plain_openai_errors(
    oai: openai.OpenAI,
    live_service: Service,  # noqa: F811
    shared_audio: Path,
) -> None:
    audio = (shared_audio / "jfk.flac").read_bytes()
    with pytest.raises(openai.UnprocessableEntityError) as info:
        oai.audio.transcriptions.create(model="whisper-1", file=("a.flac", audio), stream=True, language="xx")
    assert info.value.body["param"] == "language"  # type: ignore[index]
    with pytest.raises(openai.UnprocessableEntityError) as info:
        oai.audio.transcriptions.create(
            model="whisper-1",
            file=("a.flac", audio),
            stream=True,
            response_format="srt",  # type: ignore[arg-type]
        )
    assert info.value.body["param"] == "stream" and info.value.body["code"] == "INVALID_FIELD"  # type: ignore[index]
    with pytest.raises(openai.APIStatusError) as status:
        oai.audio.transcriptions.create(model="whisper-1", file=("notes.txt", b"not audio" * 100), stream=True)
    assert status.value.status_code == 415 and status.value.body["code"] == "UNSUPPORTED_MEDIA_TYPE"  # type: ignore[index]
    r = httpx.post(
        live_service.base_url + "/v1/audio/transcriptions",
        headers={"X-API-Key": API_KEY},
        data={"stream": "maybe"},
        files={"file": ("a.flac", audio)},
    )
    assert r.status_code == 422 and r.json()["error"]["param"] == "stream", r.text


def test_a_failure_after_the_stream_started_is_an_error_event(
    oai: openai.OpenAI,
    live_service: Service,  # noqa: F811
    jfk4: Path,
) -> None:
    with jfk4.open("rb") as f:
        stream = oai.audio.transcriptions.create(model="whisper-1", file=f, stream=True)
    assert stream.response.status_code == 200  # the stream has started: the failure must come inside it
    with live_service.client() as client:
        cancelled = client.delete(f"/v1/tasks/{stream.response.headers['X-MAIE-Task-Id']}").json()
    assert cancelled["status"] == "CANCELLED", cancelled
    with pytest.raises(openai.APIError) as info:
        for _ in stream:
            pass
    assert info.value.code == "CANCELLED" and "cancelled" in info.value.message


def sse_streams(service: Service) -> int:
    text = httpx.get(service.base_url + "/metrics").text
    return int(float(next(line.split()[1] for line in text.splitlines() if line.startswith("maie_sse_streams "))))


def test_a_caller_that_leaves_cancels_its_task_and_frees_its_stream(live_service: Service, jfk4: Path) -> None:  # noqa: F811
    with live_service.client() as client:
        with (
            jfk4.open("rb") as f,
            client.stream(
                "POST", "/v1/audio/transcriptions", data={"stream": "true"}, files={"file": ("jfk4.wav", f)}
            ) as r,
        ):
            assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
            task_id = r.headers["X-MAIE-Task-Id"]
            assert until(lambda: sse_streams(live_service) == 1), "the stream never subscribed"
        # The connection is closed unread: the server cancels the task and drops the subscription.
        assert wait_terminal(client, task_id, 60)["status"] == "CANCELLED"
    assert until(lambda: sse_streams(live_service) == 0), "a subscription outlived its stream"


def until(check: Any, timeout_s: float = 20.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.1)
    return False


def test_process_task_stream_shows_segments_before_it_completes(
    live_service: Service,  # noqa: F811
    shared_audio: Path,
    tmp_path: Path,
) -> None:
    audio = tiled(shared_audio, tmp_path / "jfk2.wav", 2)
    with live_service.client() as client:
        with audio.open("rb") as f:
            r = client.post("/v1/process", data={"features": "raw_transcript"}, files={"file": ("jfk2.wav", f)})
        assert r.status_code == 202, r.text
        task_id = r.json()["task_id"]
        with connect_sse(client, "GET", f"/v1/tasks/{task_id}/events") as source:
            events = [(sse.event, sse.json()) for sse in source.iter_sse()]
        record = client.get(f"/v1/status/{task_id}").json()
    kinds = [kind for kind, _ in events]
    assert kinds[-1] == "status" and events[-1][1]["status"] == "COMPLETE", kinds
    segments = [data for kind, data in events if kind == "segment"]
    assert len(segments) >= 2 and set(kinds) == {"status", "segment"}, kinds
    assert [s["id"] for s in segments] == list(range(len(segments)))
    assert all(set(s) == {"id", "start", "end", "text"} for s in segments)
    # Exactly the final transcript, times included, shown before the task completed.
    final = record["results"]["segments"]
    assert [(s["start"], s["end"], s["text"]) for s in segments] == [(s["start"], s["end"], s["text"]) for s in final]
    assert " ".join(s["text"] for s in segments) == record["results"]["raw_transcript"]


@pytest.fixture
def loopback_only(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[object]]:
    """Refuses (and records) any connection or name lookup that is not this machine."""
    elsewhere: list[object] = []
    connect, getaddrinfo = socket.socket.connect, socket.getaddrinfo

    def guarded_connect(sock: socket.socket, address: Any) -> None:
        if isinstance(address, tuple) and address[0] not in ("127.0.0.1", "::1", "localhost"):
            elsewhere.append(address)
            raise OSError("test: only loopback")
        connect(sock, address)

    def guarded_getaddrinfo(host: Any, *args: Any, **kwargs: Any) -> Any:
        if host not in ("127.0.0.1", "::1", "localhost", None):
            elsewhere.append(host)
            raise socket.gaierror("test: only loopback")
        return getaddrinfo(host, *args, **kwargs)

    monkeypatch.setattr(socket.socket, "connect", guarded_connect)
    monkeypatch.setattr(socket, "getaddrinfo", guarded_getaddrinfo)
    yield elsewhere


def test_litellm_transcription(live_service: Service, shared_audio: Path, loopback_only: list[object]) -> None:  # noqa: F811
    import litellm

    with (shared_audio / "jfk.flac").open("rb") as f:
        result = litellm.transcription(
            model="openai/whisper-1", file=f, api_base=live_service.base_url + "/v1", api_key=API_KEY
        )
    assert "ask not what your country can do for you" in result.text.lower()
    assert loopback_only == [], f"LiteLLM tried to reach {loopback_only}"
