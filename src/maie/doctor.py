"""``maie doctor``: what is in force, and whether each part this deployment needs can be reached."""

from __future__ import annotations

import importlib.util
import json
from collections.abc import Callable
from pathlib import Path

import typer

from maie.config import Settings

SECRET_FIELDS = {"api_keys", "api_key", "webhook_secret"}


def _redacted(value: object) -> object:
    if isinstance(value, dict):
        return {k: ("***" if k in SECRET_FIELDS and v else _redacted(v)) for k, v in value.items()}
    return value


def _check(name: str, probe: Callable[[], str]) -> bool:
    try:
        detail = probe()
    except Exception as exc:
        typer.echo(f"  FAIL {name}: {exc}")
        return False
    typer.echo(f"  ok   {name}: {detail}")
    return True


def _whisper(settings: Settings) -> str:
    from maie.api.routers.models import whisper_model

    model = whisper_model(settings)["model"]
    if Path(model).exists() and not (Path(model) / "model.bin").exists():
        raise RuntimeError(f"{model} has no model.bin")
    return model


def _redis(settings: Settings) -> str:
    if not settings.redis_url:
        return "embedded (started by maie serve)"
    from maie.jobs.queue import connect
    from maie.jobs.worker import live_workers

    client = connect(settings.redis_url)
    client.ping()
    return f"reachable, {len(live_workers(client))} live worker(s)"


def _llm(settings: Settings) -> str:
    from maie.api.routers.models import describe_llm

    info = describe_llm(settings)
    if settings.llm.base_url:
        import httpx

        r = httpx.get(settings.llm.base_url.rstrip("/") + "/models", timeout=5)
        r.raise_for_status()
    elif importlib.util.find_spec("llama_cpp") is None:
        raise RuntimeError("llama-cpp-python is not installed")
    return json.dumps(info)


def run_doctor(settings: Settings) -> int:
    typer.echo("settings in force:")
    typer.echo(json.dumps(_redacted(settings.model_dump(mode="json")), indent=2))
    typer.echo("checks:")
    results = [
        _check("data dir", lambda: str(settings.data_dir.resolve())),
        _check("whisper model", lambda: _whisper(settings)),
        _check("redis", lambda: _redis(settings)),
        _check("llm", lambda: _llm(settings)),
        _check(
            "diarization extra",
            lambda: (
                "installed"
                if importlib.util.find_spec("resemblyzer")
                else "not installed (pip install 'maie[diarization]')"
            ),
        ),
    ]
    return 0 if all(results) else 1
