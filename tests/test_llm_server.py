"""LLM stages through a real OpenAI-compatible server: ``python -m llama_cpp.server`` over HTTP."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

pytest.importorskip("llama_cpp")

from maie.config import Settings
from maie.errors import ErrorCode, MaieError
from maie.pipeline.context import TaskContext, Transcript
from maie.pipeline.llm import OpenAICompatClient, bundled_gguf_path, enhance, summarize
from maie.pipeline.registry import ModelRegistry
from maie.schemas import Feature, Segment, TaskOptions
from maie.templates import TemplateStore, schema_validator

# Whisper tiny.en's transcript of ../shared/audio/jfk.flac
JFK = [
    (0.0, 8.0, "And so, my fellow Americans ask not what your country can do for you"),
    (8.0, 11.0, "ask what you can do for your country."),
]
TEMPLATE_IDS = [t.id for t in TemplateStore(Path("/nonexistent")).list()]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    pytest.importorskip("starlette_context", reason="llama_cpp.server needs llama-cpp-python[server]")
    port = free_port()
    cmd = [
        sys.executable,
        "-m",
        "llama_cpp.server",
        "--model",
        str(bundled_gguf_path()),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--n_ctx",
        "4096",
        "--n_threads",
        "1",
        "--n_threads_batch",
        "1",
        "--verbose",
        "False",
    ]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    base_url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            if proc.poll() is not None:
                err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
                pytest.fail(f"llama_cpp.server exited: {err[-2000:]}")
            try:
                if httpx.get(f"{base_url}/v1/models", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                pytest.fail("llama_cpp.server did not start within 120 s")
            time.sleep(0.5)
        yield base_url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()


def make_ctx(tmp_path: Path, models: ModelRegistry, base_url: str, **llm: object) -> TaskContext:
    settings = Settings(data_dir=tmp_path, llm={"base_url": base_url, "timeout_s": 120, **llm})
    return TaskContext(
        task_id="t1",
        options=TaskOptions(features=[Feature.CLEAN_TRANSCRIPT, Feature.SUMMARY]),
        settings=settings,
        models=models,
        transcript=Transcript(
            segments=[Segment(start=a, end=b, text=t) for a, b, t in JFK],
            language="en",
            language_probability=1.0,
            confidence=None,
            versions={},
        ),
    )


@pytest.mark.slow
def test_summaries_and_clean_transcript_over_http(tmp_path: Path, server: str) -> None:
    models = ModelRegistry()
    served_model = httpx.get(f"{server}/v1/models").json()["data"][0]["id"]
    for template_id in TEMPLATE_IDS:
        ctx = make_ctx(tmp_path, models, server, sum_max_tokens=384)
        ctx.options.template_id = template_id
        summary = summarize(ctx)
        schema = TemplateStore(tmp_path).schema(template_id)
        assert list(schema_validator(schema).iter_errors(summary.data)) == [], template_id
        assert summary.usage.model == served_model  # as the server reports it
        assert summary.usage.base_url == server
        assert summary.usage.prompt_tokens > 100 and summary.usage.completion_tokens > 5
    keys = models.keys()
    client = models.get(next(k for k in keys if k[0] == "llm-http"), lambda: None)
    assert client.flavour == "llamacpp"  # detected from GET /v1/models: our own grammar was sent

    ctx = make_ctx(tmp_path, models, server)
    cleaned = enhance(ctx)
    assert "country" in cleaned.text.lower() and not cleaned.text.lstrip().startswith("{")
    assert cleaned.usage.model == served_model


@pytest.mark.slow
def test_summaries_over_http_are_grounded(tmp_path: Path, server: str) -> None:
    """The same grounding as for the embedded model: evidence for every leaf, unsupported ones flagged."""
    ctx = make_ctx(tmp_path, ModelRegistry(), server, sum_max_tokens=512, sum_temperature=0.0)
    ctx.options.template_id = "meeting_notes_v2_en"
    summary = summarize(ctx)
    assert summary.usage.params["example"] == "full"  # sum_example=auto: the full example for a server
    grounding = summary.grounding
    assert grounding is not None and grounding["total"] == len(summary.evidence) > 0
    assert grounding["unsupported"] == [e["path"] for e in summary.evidence if not e["supported"]]
    # JFK's eleven seconds hold no meeting: SmolLM2 over HTTP invents notes, and they are flagged
    assert grounding["ratio"] < 1.0
    [warning] = [w for w in ctx.warnings if w.code == ErrorCode.SUMMARY_UNGROUNDED.value]
    assert f"{len(grounding['unsupported'])} of {grounding['total']} summary items" in warning.message
    for e in summary.evidence:
        if e["supported"]:  # what is supported points at JFK's words
            assert e["segments"] and e["start"] is not None
    assert all(not e["supported"] for e in summary.evidence if e["path"] == "/meeting_date")


@pytest.mark.slow
def test_json_schema_form_falls_back_when_the_server_refuses_it(server: str) -> None:
    # llama-cpp-python's server does not take response_format json_schema (422): the client
    # must retry with json_object + schema and remember that for the next request.
    client = OpenAICompatClient(server, flavour="vllm", max_retries=0)
    schema = {
        "type": "object",
        "properties": {"answer": {"type": "string", "maxLength": 40}},
        "required": ["answer"],
        "additionalProperties": False,
    }
    messages = [{"role": "user", "content": "What is the capital of France? Answer in JSON."}]
    for _ in range(2):
        reply = client.chat(messages, max_tokens=40, temperature=0.0, top_k=None, json_schema=schema)
        assert set(json.loads(reply.text)) == {"answer"}
        assert client._format_level == 1
    client.close()


def test_llm_server_down_is_reported_quickly(tmp_path: Path) -> None:
    base_url = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    for stage, code in ((summarize, ErrorCode.LLM_UNAVAILABLE), (enhance, ErrorCode.LLM_UNAVAILABLE)):
        ctx = make_ctx(tmp_path, ModelRegistry(), base_url, max_retries=2, retry_backoff_s=0.05, timeout_s=2)
        started = time.monotonic()
        with pytest.raises(MaieError) as exc:
            stage(ctx)
        assert exc.value.code == code
        assert "unreachable" in exc.value.message
        assert time.monotonic() - started < 5


class _FlakyServer:
    """A real HTTP server that fails the first ``failures`` chat requests with ``status``."""

    def __init__(self, status: int, failures: int) -> None:
        import threading
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        outer = self
        self.chat_requests = 0

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def _send(self, code: int, body: dict, headers: dict[str, str] | None = None) -> None:
                data = json.dumps(body).encode()
                self.send_response(code)
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:
                self._send(200, {"data": [{"id": "flaky-model", "owned_by": "vllm"}]})

            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("Content-Length", 0)))
                outer.chat_requests += 1
                if outer.chat_requests <= failures:
                    self._send(status, {"error": "busy"}, {"Retry-After": "0"})
                    return
                message = {"role": "assistant", "content": "Hello."}
                usage = {"prompt_tokens": 7, "completion_tokens": 2}
                choice = {"message": message, "finish_reason": "stop"}
                self._send(200, {"model": "flaky-model", "choices": [choice], "usage": usage})

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.mark.parametrize("status", [429, 503])
def test_busy_server_is_retried_with_backoff(status: int) -> None:
    server = _FlakyServer(status, failures=2)
    try:
        client = OpenAICompatClient(server.url, max_retries=3, backoff_s=0.05)
        started = time.monotonic()
        reply = client.chat(
            [{"role": "user", "content": "hi"}], max_tokens=8, temperature=0.0, top_k=5, json_schema=None
        )
        assert reply.text == "Hello." and reply.model == "flaky-model"
        assert reply.prompt_tokens == 7 and reply.completion_tokens == 2
        assert server.chat_requests == 3
        assert time.monotonic() - started >= 0.05 + 0.1  # backoff doubled between attempts
        client.close()

        server.chat_requests = 0
        client = OpenAICompatClient(server.url, max_retries=1, backoff_s=0.01)
        with pytest.raises(MaieError) as exc:
            client.chat([{"role": "user", "content": "hi"}], max_tokens=8, temperature=0, top_k=None, json_schema=None)
        assert exc.value.code == ErrorCode.LLM_UNAVAILABLE and str(status) in exc.value.message
        client.close()
    finally:
        server.close()
