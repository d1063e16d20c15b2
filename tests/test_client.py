"""``maie.client`` and ``maie submit`` against a live server with the real tiny.en model on real audio."""

from __future__ import annotations

import asyncio
import io
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest
import typer
from typer.testing import CliRunner

from live_service import API_KEY, JFK, JFK_PHRASE, live_service  # noqa: F401  (fixture)
from maie.client import AsyncMaieClient, MaieApiError, MaieClient, SseParser
from maie.client_cli import resolve_api_key
from maie.client_cli import submit as submit_command

from service import Service

NON_TERMINAL = {"PENDING", "PREPROCESSING", "PROCESSING_ASR", "DIARIZING", "PROCESSING_LLM"}


def test_sse_parser_handles_crlf_comments_and_multiline_data() -> None:
    parser = SseParser()
    lines = [": ping", "event: status\r\n", 'data: {"a":', "data: 1}", "", "", "data: plain", ""]
    out = [parsed for line in lines if (parsed := parser.feed(line)) is not None]
    assert out == [("status", '{"a":\n1}'), ("message", "plain")]


@pytest.mark.slow
def test_sync_submit_wait_progress_transcript_delete(live_service: Service) -> None:  # noqa: F811
    seen: list[dict[str, Any]] = []
    with MaieClient(live_service.base_url, api_key=API_KEY) as client:
        task_id = client.submit(JFK, features=["raw_transcript"], word_timestamps=True)
        record = client.wait(task_id, on_progress=seen.append, timeout=180)

        assert record["status"] == "COMPLETE", record
        assert JFK_PHRASE in record["results"]["raw_transcript"].lower()
        assert record["results"]["segments"][0]["words"], "word_timestamps=True was sent as a form field"
        statuses = [e["status"] for e in seen]
        assert NON_TERMINAL & set(statuses), statuses
        assert statuses[-1] == "COMPLETE" and seen[-1]["progress"] == 1.0
        assert all(e["task_id"] == task_id for e in seen)
        progress = [e["progress"] for e in seen]
        assert progress == sorted(progress), progress

        srt = client.transcript(task_id, "srt")
        assert "-->" in srt and JFK_PHRASE in srt.lower()
        assert client.transcript(task_id, "vtt").startswith("WEBVTT")
        assert any(t["task_id"] == task_id for t in client.tasks(limit=50))

        assert client.delete(task_id)["status"] == "DELETED"
        with pytest.raises(MaieApiError) as err:
            client.status(task_id)
        assert (err.value.status_code, err.value.code) == (404, "TASK_NOT_FOUND")


@pytest.mark.slow
def test_async_client_with_a_file_object(live_service: Service) -> None:  # noqa: F811
    async def run() -> tuple[dict[str, Any], list[dict[str, Any]], str, list[dict[str, Any]]]:
        seen: list[dict[str, Any]] = []
        async with AsyncMaieClient(live_service.base_url, api_key=API_KEY) as client:
            task_id = await client.submit(io.BytesIO(JFK.read_bytes()), filename="speech.flac")
            record = await client.wait(task_id, on_progress=seen.append, timeout=180)
            text = await client.transcript(task_id, "txt")
            templates = await client.templates()
        return record, seen, text, templates

    record, seen, text, templates = asyncio.run(run())
    assert record["status"] == "COMPLETE" and record["filename"] == "speech.flac"
    assert JFK_PHRASE in text.lower()
    statuses = [e["status"] for e in seen]
    assert NON_TERMINAL & set(statuses) and statuses[-1] == "COMPLETE", statuses
    assert any(t["id"] == "generic_summary_en_v2" for t in templates)


class _NoEventsTransport(httpx.HTTPTransport):
    """A real transport that refuses the SSE route, as a proxy that buffers or blocks streams would."""

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/events"):
            raise httpx.ConnectError("event stream blocked", request=request)
        return super().handle_request(request)


@pytest.mark.slow
def test_wait_falls_back_to_polling(live_service: Service) -> None:  # noqa: F811
    seen: list[dict[str, Any]] = []
    http = httpx.Client(base_url=live_service.base_url, transport=_NoEventsTransport(), timeout=30)
    with http, MaieClient(live_service.base_url, api_key=API_KEY, http_client=http) as client:
        task_id = client.submit(JFK)
        record = client.wait(task_id, on_progress=seen.append, timeout=180, poll_interval=0.2)
    assert record["status"] == "COMPLETE"
    assert seen and seen[-1]["status"] == "COMPLETE"


@pytest.mark.slow
def test_process_text_runs_the_llm_stage(live_service: Service) -> None:  # noqa: F811
    text = "so um we decided to uh ship the new version on friday and anna will write the release notes"
    seen: list[dict[str, Any]] = []
    with MaieClient(live_service.base_url, api_key=API_KEY) as client:
        task_id = client.process_text(text, features=["clean_transcript"])
        record = client.wait(task_id, on_progress=seen.append, timeout=240)
    assert record["status"] == "COMPLETE", record
    assert record["results"]["clean_transcript"].strip()
    assert "PROCESSING_LLM" in {e["status"] for e in seen}


@pytest.mark.slow
def test_errors_carry_the_server_code(live_service: Service) -> None:  # noqa: F811
    with MaieClient(live_service.base_url, api_key="wrong-key") as client, pytest.raises(MaieApiError) as err:
        client.templates()
    assert (err.value.status_code, err.value.code) == (401, "UNAUTHORIZED")
    with MaieClient(live_service.base_url, api_key=API_KEY) as client:
        with pytest.raises(MaieApiError) as err:
            client.submit(JFK, features="raw_transcript,telepathy")
        assert (err.value.status_code, err.value.code) == (422, "INVALID_FIELD")
        assert "telepathy" in err.value.detail
        with pytest.raises(MaieApiError) as err:
            client.template_schema("no_such_template")
        assert err.value.code == "TEMPLATE_NOT_FOUND"
        with pytest.raises(ValueError):
            client.transcript("any", "docx")


def test_api_key_resolution(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MAIE_API_KEY", raising=False)
    monkeypatch.setenv("MAIE_DATA_DIR", str(tmp_path))
    assert resolve_api_key(None) is None
    (tmp_path / "api_key").write_text("from-file\n")
    assert resolve_api_key(None) == "from-file"
    monkeypatch.setenv("MAIE_API_KEY", "from-env")
    assert resolve_api_key(None) == "from-env"
    assert resolve_api_key("given") == "given"


def _cli_registered() -> bool:
    from maie.cli import app

    return any((c.name or getattr(c.callback, "__name__", "")) == "submit" for c in app.registered_commands)


@pytest.mark.slow
def test_submit_command_end_to_end(live_service: Service, tmp_path: Path) -> None:  # noqa: F811
    out_dir = tmp_path / "out"
    args = ["submit", str(JFK), "--server", live_service.base_url, "--api-key", API_KEY,
            "--format", "srt", "-o", str(out_dir)]  # fmt: skip
    if _cli_registered():
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).parents[1] / "src"),
                                                            os.environ.get("PYTHONPATH", "")])}  # fmt: skip
        proc = subprocess.run([sys.executable, "-m", "maie", *args], capture_output=True, text=True, timeout=300,
                              env=env, cwd=tmp_path)  # fmt: skip
        code, stderr = proc.returncode, proc.stderr
    else:  # until `app.command()(submit)` is in maie/cli.py, drive the same function through Typer
        app = typer.Typer()
        app.command()(submit_command)
        app.command("noop", hidden=True)(lambda: None)  # two commands: Typer keeps "submit" as a subcommand
        result = CliRunner().invoke(app, args)
        code, stderr = result.exit_code, result.output
    assert code == 0, stderr
    srt = (out_dir / "jfk.srt").read_text()
    assert "-->" in srt and JFK_PHRASE in srt.lower()
    assert "100%" in stderr  # the progress bar reached the end


@pytest.mark.slow
def test_submit_command_reports_a_bad_key(live_service: Service) -> None:  # noqa: F811
    app = typer.Typer()
    app.command()(submit_command)
    result = CliRunner().invoke(app, [str(JFK), "--server", live_service.base_url, "--api-key", "nope"])
    assert result.exit_code == 1
    assert "UNAUTHORIZED" in result.output
