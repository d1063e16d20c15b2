"""``maie doctor``: what is in force, and whether each part this deployment needs can be reached."""

from __future__ import annotations

import importlib.util
import json
from collections.abc import Callable
from pathlib import Path

import typer

from maie.config import Settings
from maie.logs import redact
from maie.privacy import wide_modes_warning

SECRET_FIELDS = {"api_keys", "admin_keys", "api_key", "webhook_secret"}


def _redacted(value: object) -> object:
    """Secret fields masked, and passwords inside every URL (``MAIE_REDIS_URL``, ``MAIE_LLM__BASE_URL`` ...)."""
    if isinstance(value, dict):
        return {k: ("***" if k in SECRET_FIELDS and v else _redacted(v)) for k, v in value.items()}
    if isinstance(value, list):
        return [_redacted(v) for v in value]
    if isinstance(value, str):
        return redact(value)
    return value


def _check(name: str, probe: Callable[[], str]) -> bool:
    try:
        detail = probe()
    except Exception as exc:
        # Exception texts can quote a URL (redis-py, httpx): never let a password through.
        typer.echo(f"  FAIL {name}: {redact(str(exc))}")
        return False
    typer.echo(f"  ok   {name}: {redact(detail)}")
    return True


def _private(settings: Settings) -> bool:
    """Wide modes on the data dir are a warning, not a failure: the operator may have reasons (a shared group)."""
    warning = wide_modes_warning(settings.data_dir)
    if warning:
        typer.echo(f"  warn data dir modes: {warning}")
    else:
        typer.echo("  ok   data dir modes: private to the service user (0700 / 0600)")
    return True


def _whisper(settings: Settings) -> str:
    from maie.api.routers.models import whisper_model

    local = settings.asr.whisper_model
    if local and Path(local).expanduser().exists() and not (Path(local).expanduser() / "model.bin").exists():
        raise RuntimeError(f"{local} has no model.bin")
    from maie.pipeline.asr.whisper import resolve_spec

    spec = resolve_spec(settings)
    plan = f"{spec.workers} block(s) at once x {spec.cpu_threads} thread(s)"
    if spec.device == "cpu":
        plan += f" on {settings.cores_per_worker} core(s) per worker"
    return f"{whisper_model(settings).model} on {spec.device}, {plan}"


def _redis(settings: Settings) -> str:
    if not settings.redis_url:
        return "embedded (started by maie serve)"
    from maie.jobs.queue import connect
    from maie.jobs.workers import live_workers

    client = connect(settings.redis_url)
    client.ping()
    return f"{settings.redis_url}: reachable, {len(live_workers(client))} live worker(s)"


def _llm(settings: Settings) -> str:
    from maie.api.routers.models import describe_llm

    info = describe_llm(settings)
    if settings.llm.base_url:
        import httpx

        r = httpx.get(settings.llm.base_url.rstrip("/") + "/models", timeout=5)
        r.raise_for_status()
    elif importlib.util.find_spec("llama_cpp") is None:
        raise RuntimeError("llama-cpp-python is not installed")
    return json.dumps(info.model_dump(exclude_unset=True))


def run_doctor(settings: Settings) -> int:
    typer.echo("settings in force:")
    typer.echo(json.dumps(_redacted(settings.model_dump(mode="json")), indent=2))
    typer.echo("checks:")
    results = [
        _check("data dir", lambda: str(settings.data_dir.resolve())),
        _private(settings),
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
