"""The ``maie`` command: serve · worker · process · templates · doctor."""

from __future__ import annotations

import ipaddress
import json
import os
import sys
from pathlib import Path
from typing import Annotated

import typer

from maie.config import Settings, SettingsError, load_settings

app = typer.Typer(
    help="MAIE: self-hosted transcription, clean transcripts and structured summaries.",
    no_args_is_help=True,
    add_completion=False,
)


def _settings() -> Settings:
    try:
        settings = load_settings()
    except SettingsError as exc:
        typer.echo(f"maie: {exc}", err=True)
        raise typer.Exit(2) from None
    from maie.logs import configure_logging

    configure_logging(settings)
    return settings


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@app.command()
def serve(
    host: Annotated[str | None, typer.Option(help="Bind address (default MAIE_HOST).")] = None,
    port: Annotated[int | None, typer.Option(help="Port (default MAIE_PORT).")] = None,
    workers: Annotated[int, typer.Option(help="Worker processes to start; 0 = API only.")] = 1,
) -> None:
    """Start the API, plus an embedded Redis (when MAIE_REDIS_URL is unset) and worker processes."""
    import uvicorn

    from maie.api.app import create_app
    from maie.api.auth import ensure_generated_key
    from maie.jobs.redis_server import EmbeddedRedis
    from maie.jobs.supervisor import WorkerSupervisor

    settings = _settings()
    host = host or settings.host
    port = port if port is not None else settings.port
    if not _is_loopback(host) and not settings.api_keys:
        typer.echo("maie: refusing to bind a non-loopback address without MAIE_API_KEYS set", err=True)
        raise typer.Exit(2)
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    generated = ensure_generated_key(settings)
    embedded = None
    if not settings.redis_url:
        embedded = EmbeddedRedis(settings.data_dir)
        settings.redis_url = embedded.start()
        embedded.watch()
    env = {**os.environ, "MAIE_REDIS_URL": settings.redis_url, "MAIE_DATA_DIR": str(settings.data_dir.resolve())}
    supervisor = WorkerSupervisor(workers, env)
    supervisor.start()
    shown_host = "127.0.0.1" if host in ("0.0.0.0", "::") else host
    typer.echo(f"MAIE is up on http://{shown_host}:{port}  (web UI at /, API docs at /docs)")
    if generated:
        typer.echo(f"API key (generated, stored in {settings.data_dir / 'api_key'}): {generated}")
    else:
        typer.echo("API key: one of MAIE_API_KEYS")
    typer.echo(
        f"Redis: {'embedded, AOF in ' + str(embedded.dir) if embedded else 'MAIE_REDIS_URL'}; workers: {workers}"
    )
    try:
        uvicorn.run(
            create_app(settings),
            host=host,
            port=port,
            log_level=settings.log_level.lower(),
            timeout_graceful_shutdown=5,
        )
    finally:
        supervisor.stop()
        if embedded:
            embedded.stop()


@app.command()
def worker(
    burst: Annotated[bool, typer.Option(help="Exit when the queue is empty.")] = False,
) -> None:
    """Process jobs from MAIE_REDIS_URL with warm models (scaled-out deployments run many)."""
    from maie.jobs.worker import run_worker

    run_worker(_settings(), burst=burst)


@app.command()
def process(
    files: Annotated[list[Path], typer.Argument(help="Audio or video files.", exists=True, dir_okay=False)],
    features: Annotated[str, typer.Option(help="Comma list: raw_transcript, clean_transcript, summary.")] = (
        "raw_transcript"
    ),
    fmt: Annotated[str, typer.Option("--format", help="txt, srt, vtt, json or md.")] = "txt",
    output_dir: Annotated[Path | None, typer.Option("-o", "--output-dir", help="Write files here.")] = None,
    template_id: Annotated[str | None, typer.Option(help="Summary template.")] = None,
    language: Annotated[str | None, typer.Option(help="Language code; default: auto.")] = None,
    word_timestamps: Annotated[bool, typer.Option(help="Word-level timestamps.")] = False,
    diarize: Annotated[bool, typer.Option(help="Speaker diarization.")] = False,
) -> None:
    """Run the pipeline in this process on local files (no server, no Redis)."""
    from maie.local import process_files

    settings = _settings()
    if fmt not in ("txt", "srt", "vtt", "json", "md"):
        typer.echo("maie: --format must be txt, srt, vtt, json or md", err=True)
        raise typer.Exit(2)
    code = process_files(
        settings,
        files,
        features=features,
        fmt=fmt,
        output_dir=output_dir,
        template_id=template_id,
        language=language,
        word_timestamps=word_timestamps,
        diarize=diarize,
    )
    raise typer.Exit(code)


templates_app = typer.Typer(help="List and show summary templates.", no_args_is_help=True)
app.add_typer(templates_app, name="templates")


@templates_app.command("list")
def templates_list() -> None:
    """List templates (built-in and user)."""
    from maie.templates import TemplateStore

    for t in TemplateStore.from_settings(_settings()).list():
        typer.echo(f"{t.id:32} {t.language or '':4} {'built-in' if t.builtin else 'user':9} {t.name}")


@templates_app.command("show")
def templates_show(template_id: str) -> None:
    """Print a template's schema."""
    from maie.templates import TemplateStore

    typer.echo(json.dumps(TemplateStore.from_settings(_settings()).schema(template_id), indent=2, ensure_ascii=False))


@app.command()
def doctor() -> None:
    """Check settings, models, Redis and the LLM; print what is in force."""
    from maie.doctor import run_doctor

    raise typer.Exit(run_doctor(_settings()))


from maie.client_cli import submit  # noqa: E402 - registered after the in-process commands

app.command(help="Send files to a running MAIE server and wait for the results (with a progress bar).")(submit)


def main() -> None:  # pragma: no cover - console entry
    sys.exit(app())
