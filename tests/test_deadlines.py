"""Deadlines, over a real ``maie serve`` (embedded Redis + worker): a task always ends within its budget
plus a few seconds, in whatever stage the budget runs out. Out of time in ASR: FAILED ``TIMEOUT``. Out of
time in an optional stage (diarization, clean transcript, summary): COMPLETE with the transcript and a
``TIMEOUT`` warning naming the stage.

Budgets are set small through MAIE_JOB_TIMEOUT_BASE_S / MAIE_JOB_TIMEOUT_PER_AUDIO_S. The LLM stages
talk to an OpenAI-compatible server on 127.0.0.1 that never answers (a real HTTP server that is
slow, the fault injected); the embedded llama-cpp model is stopped mid-generation in
``test_embedded_generation_stops_at_the_deadline``.
"""

from __future__ import annotations

import json
import threading
import time
import wave
from collections.abc import Iterator
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest

from maie.jobs.queue import HARD_TIMEOUT_MARGIN_S, hard_timeout_s, job_budget_s
from maie.pipeline.audio import decode_file

from service import Service, start_service, wait_terminal

pytestmark = pytest.mark.slow

SLACK_S = 5.0
""""Within its budget plus a few seconds": the last unit of work that cannot be interrupted
(one Whisper window, one LLM token, the final write) plus the store round trips."""


def write_wav(path: Path, samples: np.ndarray) -> Path:
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(16000)
        w.writeframes((np.clip(samples, -1, 1) * 32767).astype("<i2").tobytes())
    return path


@pytest.fixture(scope="module")
def jfk_wav(tmp_path_factory: pytest.TempPathFactory, shared_audio: Path) -> Path:
    return write_wav(tmp_path_factory.mktemp("a") / "jfk.wav", decode_file(shared_audio / "jfk.flac").samples)


@pytest.fixture(scope="module")
def varied_wav(tmp_path_factory: pytest.TempPathFactory, shared_audio: Path) -> Path:
    """About 60 s of different real English recordings: no sentence repeats and no other language, so
    Whisper decodes each window once at temperature 0. Repeated speech or the German half of
    multilingual.mp3 sends windows through the sampled fallback temperatures, whose decoding time is
    random (the same file took 17 s and over 120 s), and a budget search cannot aim at that."""
    names = ["jfk.flac", "stereo_diarization.wav", "two_speakers_sample.wav", "hotwords.mp3"]
    samples = np.concatenate([decode_file(shared_audio / name).samples for name in names])
    return write_wav(tmp_path_factory.mktemp("a") / "varied.wav", samples)


@pytest.fixture(scope="module")
def long_wav(tmp_path_factory: pytest.TempPathFactory, shared_audio: Path) -> Path:
    samples = np.tile(decode_file(shared_audio / "jfk.flac").samples, 12)
    return write_wav(tmp_path_factory.mktemp("a") / "long.wav", samples)


class _SlowLlm(BaseHTTPRequestHandler):
    """Lists a model at once; a chat completion never comes (within any test's time)."""

    def do_GET(self) -> None:
        body = json.dumps({"object": "list", "data": [{"id": "slow", "object": "model", "owned_by": "test"}]})
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body.encode())

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        time.sleep(120)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def slow_llm() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _SlowLlm)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    finally:
        server.shutdown()


def run_one(tmp_path: Path, env: dict[str, str], path: Path, **fields: str) -> tuple[dict, Service]:
    svc = start_service(tmp_path / "data", env=env)
    try:
        svc.wait_ready()
        with svc.client() as client, path.open("rb") as f:
            r = client.post("/v1/process", data=fields, files={"file": (path.name, f)})
            assert r.status_code == 202, r.text
            record = wait_terminal(client, r.json()["task_id"], timeout_s=240)
    finally:
        svc.stop()
    return record, svc


def ran_for(record: dict) -> float:
    def t(stamp: str) -> float:
        return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()

    return t(record["completed_at"]) - t(record["started_at"])


def budget(base: float, per_audio: float, seconds: float) -> float:
    return base + per_audio * seconds


def test_the_budget_has_one_definition_and_rq_is_only_a_safety_net() -> None:
    from maie.config import Settings

    settings = Settings(job_timeout_base_s=10.5, job_timeout_per_audio_s=0.25)
    assert job_budget_s(settings, 100.0) == 35.5
    assert job_budget_s(settings, None) == 10.5 + 0.25 * settings.max_audio_minutes * 60
    # Rounded up, and a margin beyond: RQ's alarm can never fire before the worker's deadline.
    assert hard_timeout_s(35.5) == 36 + HARD_TIMEOUT_MARGIN_S
    assert hard_timeout_s(35.01) > 35.01


def test_out_of_time_in_asr_fails_with_timeout_on_time(tmp_path: Path, long_wav: Path) -> None:
    base, per = 4.0, 0.001
    record, _ = run_one(
        tmp_path, {"MAIE_JOB_TIMEOUT_BASE_S": str(base), "MAIE_JOB_TIMEOUT_PER_AUDIO_S": str(per)}, long_wav
    )
    assert record["status"] == "FAILED", record
    assert record["error"]["code"] == "TIMEOUT" and record["error"]["stage"] == "PROCESSING_ASR", record
    assert ran_for(record) <= budget(base, per, 132.0) + SLACK_S


def test_out_of_time_in_diarization_keeps_the_transcript(tmp_path: Path, varied_wav: Path) -> None:
    """The budget must outlast ASR and not diarization, on a machine of any speed: the same speech is
    first timed without diarization, then sent with digital silence after it (silence adds to the
    budget, per second of audio, and costs neither ASR nor diarization much) so the budget falls
    between ASR's end and diarization's. Load can move either end between runs, so the budget is
    searched (at most four tries, bisecting between "ASR ran out" and "diarization finished"); every
    try must still end as the deadline rules say, within its budget."""
    base, per = 1.0, 0.05
    speech = decode_file(varied_wav).samples
    speech_s = len(speech) / 16000

    def padded(total_s: float, name: str) -> Path:
        silence = np.zeros(int(max(total_s - speech_s, 0.0) * 16000), np.float32)
        return write_wav(tmp_path / name, np.concatenate([speech, silence]))

    env = {
        "MAIE_JOB_TIMEOUT_BASE_S": str(base),
        "MAIE_JOB_TIMEOUT_PER_AUDIO_S": str(per),
        "MAIE_MAX_UPLOAD_MB": "1024",
        # Fine, slow diarization: windows of 1.5 s every 0.1 s, one at a time (about 290 windows on
        # this speech, 5-10 s of embedding; with 5 s windows most speech regions are shorter than a
        # window and embed as one, and diarization can finish inside every budget tried).
        "MAIE_DIARIZATION__STEP_S": "0.1",
        "MAIE_DIARIZATION__WINDOW_S": "1.5",
        "MAIE_DIARIZATION__BATCH_SIZE": "1",
    }
    svc = start_service(tmp_path / "data", env=env)
    found: dict | None = None
    try:
        svc.wait_ready()
        with svc.client() as client:

            def submit(path: Path, **fields: str) -> dict:
                # A fresh connection: writing the next file can outlast the server's keep-alive, and a
                # request sent on a connection the server is closing is lost.
                with svc.client() as fresh, path.open("rb") as f:
                    r = fresh.post("/v1/process", data=fields, files={"file": (path.name, f)})
                assert r.status_code == 202, r.text
                record = wait_terminal(client, r.json()["task_id"], timeout_s=400)
                print("TRY", record["status"], ran_for(record), record.get("error"), record.get("warnings"))
                return record

            calibration = submit(padded(2400.0, "calibrate.wav"))  # a 121 s budget: ASR fits even on a busy machine
            assert calibration["status"] == "COMPLETE", calibration
            asr_done = ran_for(calibration)
            low, high = asr_done, 4.0 * asr_done + 20.0  # budgets (s): ASR alone fits; ASR + diarization not
            for attempt in range(4):
                budget_s = (low + high) / 2 if attempt else 1.25 * asr_done + 5.0
                total_s = max((budget_s - base) / per, speech_s)
                record = submit(padded(total_s, f"task{attempt}.wav"), enable_diarization="true")
                assert ran_for(record) <= budget(base, per, total_s) + SLACK_S, record
                if record["status"] == "FAILED":  # ASR itself ran out: only ever TIMEOUT in ASR
                    assert record["error"]["code"] == "TIMEOUT", record
                    assert record["error"]["stage"] == "PROCESSING_ASR", record
                    low = budget_s
                    continue
                assert record["status"] == "COMPLETE", record
                timeouts = [w for w in record.get("warnings") or [] if w["code"] == "TIMEOUT"]
                if not timeouts:  # diarization finished inside the budget
                    assert record["results"]["speakers"], record
                    high = budget_s
                    continue
                found = record
                break
    finally:
        svc.stop()
    assert found is not None, "no budget fell between the end of ASR and the end of diarization"
    assert "ask not what your country" in found["results"]["raw_transcript"].lower()
    assert "speakers" not in found["results"]
    # other warnings (LOW_CONFIDENCE, say) may come too: only the timeout matters here
    [warning] = [w for w in found["warnings"] if w["code"] == "TIMEOUT"]
    assert warning["stage"] == "DIARIZING", warning
    assert found["error"]["code"] == "TIMEOUT"


@pytest.mark.parametrize(
    ("features", "stages"),
    [
        ("summary", ["summary"]),
        ("clean_transcript", ["clean transcript"]),
        # Both: the clean transcript runs out, and the summary is skipped, not run unbounded.
        ("clean_transcript,summary", ["clean transcript", "summary"]),
    ],
    ids=["summary", "clean-transcript", "both"],
)
def test_out_of_time_in_an_llm_stage_keeps_the_transcript(
    tmp_path: Path, jfk_wav: Path, slow_llm: str, features: str, stages: list[str]
) -> None:
    # ASR of these 11 s takes 1-2 s on an idle machine and ran past an 8 s budget at load 4: the
    # budget must outlast ASR on a busy machine, and the LLM (which never answers) must not fit.
    base, per = 20.0, 0.001
    env = {
        "MAIE_JOB_TIMEOUT_BASE_S": str(base),
        "MAIE_JOB_TIMEOUT_PER_AUDIO_S": str(per),
        "MAIE_LLM__BASE_URL": slow_llm,
        "MAIE_LLM__TIMEOUT_S": "600",  # the deadline, not the HTTP timeout, must end the wait
        "MAIE_LLM__MAX_RETRIES": "0",
    }
    record, _ = run_one(tmp_path, env, jfk_wav, features=features)
    assert record["status"] == "COMPLETE", (record.get("error"), ran_for(record))
    assert "ask not what your country" in record["results"]["raw_transcript"].lower()
    assert [w["code"] for w in record["warnings"]] == ["TIMEOUT"] * len(stages), record["warnings"]
    assert all(w["stage"] == "PROCESSING_LLM" for w in record["warnings"])
    for warning, what in zip(record["warnings"], stages, strict=True):
        assert warning["message"].startswith(what), warning
    assert ran_for(record) <= budget(base, per, 11.0) + SLACK_S


def test_embedded_generation_stops_at_the_deadline() -> None:
    """llama-cpp inside the worker: a long generation is left between two tokens at the deadline."""
    from maie.config import Settings
    from maie.pipeline.context import BudgetExceeded
    from maie.pipeline.llm.embedded import EmbeddedClient, bundled_gguf_path, load_llama

    settings = Settings()
    path = bundled_gguf_path()
    client = EmbeddedClient(
        load_llama(path, settings.llm.n_ctx, settings.llm.n_threads or settings.cores_per_worker), path.stem
    )
    messages = [{"role": "user", "content": "Write a long essay about the Roman Empire, with many chapters."}]
    # A worker's model is warm: the first evaluation of a fresh context (seconds, one native call)
    # is not what is measured here.
    client.chat(messages[:1], max_tokens=1, temperature=0.0, top_k=None, json_schema=None)
    started = time.monotonic()
    with pytest.raises(BudgetExceeded):
        client.chat(messages, max_tokens=4000, temperature=0.0, top_k=None, json_schema=None, deadline=started + 1.0)
    assert time.monotonic() - started < 2.5
    # The model is still usable afterwards (the next task's generation is unharmed).
    reply = client.chat(
        [{"role": "user", "content": "Say hi."}], max_tokens=8, temperature=0.0, top_k=None, json_schema=None
    )
    assert reply.completion_tokens > 0 and reply.text


def test_rq_alarm_cannot_be_swallowed_by_except_exception() -> None:
    """The worker's hard alarm raises BudgetExceeded, which no ``except Exception`` can catch."""
    from maie.jobs.worker import HardDeadline, MaieWorker
    from maie.pipeline.context import BudgetExceeded

    assert MaieWorker.death_penalty_class is HardDeadline
    swallowed = False
    with pytest.raises(BudgetExceeded), HardDeadline(1):
        try:
            time.sleep(3)
        except Exception:
            swallowed = True
    assert not swallowed


def test_a_model_still_loading_at_the_deadline_stops_the_job_not_the_load() -> None:
    """A first load (torch import, weights) can outlast a job's budget: the job stops at its deadline
    with BudgetExceeded, the load finishes in the background, and the next job gets the model without
    loading it again. Two jobs asking at once share one load."""
    from maie.config import Settings
    from maie.pipeline.context import BudgetExceeded, TaskContext
    from maie.pipeline.registry import ModelRegistry
    from maie.schemas import TaskOptions

    registry = ModelRegistry()
    release = threading.Event()
    loads: list[int] = []

    def slow_load() -> str:
        loads.append(1)
        release.wait(30)
        return "model"

    def context(deadline: float | None) -> TaskContext:
        return TaskContext(task_id="t", options=TaskOptions(), settings=Settings(), models=registry, deadline=deadline)

    started = time.monotonic()
    with pytest.raises(BudgetExceeded):
        context(time.monotonic() + 0.3).model("k", slow_load)
    assert time.monotonic() - started < 10  # it did not wait for the load (which waits for release)
    waiter = threading.Thread(target=lambda: context(None).model("k", slow_load))
    waiter.start()
    release.set()
    waiter.join(30)
    assert context(time.monotonic() + 0.3).model("k", slow_load) == "model"
    assert loads == [1] and registry.loads() == 1
