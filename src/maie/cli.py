"""The ``maie`` command: serve · worker · process · templates · doctor."""

from __future__ import annotations

import ipaddress
import json
import logging
import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from maie.config import Settings, SettingsError, load_settings

if TYPE_CHECKING:
    from maie.jobs.redis_server import EmbeddedRedis

log = logging.getLogger("maie.cli")

app = typer.Typer(
    help="MAIE: self-hosted transcription, clean transcripts and structured summaries.",
    no_args_is_help=True,
    add_completion=False,
)


@app.callback()
def _private_files() -> None:
    # Runs before every command (no docstring: it would replace the app's help text): whatever maie or
    # its children (workers, redis-server) create is private to the service user.
    from maie.privacy import make_private

    make_private()


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


def _raise_open_files_limit(wanted: int) -> None:
    """Each HTTP connection (an SSE stream is one) is a file descriptor, and the usual soft limit is 1024:
    raise it towards ``wanted`` (up to the hard limit, which needs no privilege)."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft != resource.RLIM_INFINITY and soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))


def worker_env(settings: Settings, workers: int, environ: Mapping[str, str]) -> dict[str, str]:
    """The environment ``maie serve`` starts its workers with: its own, the Redis and data dir in use,
    and ``MAIE_WORKERS_PER_HOST=workers`` unless set, so that the workers share this machine's cores
    (each sizes its threads to ``cores // workers``) instead of each taking all of them."""
    env = {**environ, "MAIE_REDIS_URL": settings.redis_url or "", "MAIE_DATA_DIR": str(settings.data_dir.resolve())}
    if workers and not environ.get("MAIE_WORKERS_PER_HOST"):
        env["MAIE_WORKERS_PER_HOST"] = str(workers)
    return env


@app.command()
def serve(
    host: Annotated[str | None, typer.Option(help="Bind address (default MAIE_HOST).")] = None,
    port: Annotated[int | None, typer.Option(help="Port (default MAIE_PORT).")] = None,
    workers: Annotated[
        int,
        typer.Option(help="Worker processes to start; 0 = API only. They share the cores (MAIE_WORKERS_PER_HOST)."),
    ] = 1,
) -> None:
    """Start the API, plus an embedded Redis (when MAIE_REDIS_URL is unset) and worker processes."""
    from maie.jobs.redis_server import EmbeddedRedis
    from maie.jobs.supervisor import WorkerSupervisor
    from maie.privacy import ensure_data_dir, wide_modes_warning

    settings = _settings()
    host = host or settings.host
    port = port if port is not None else settings.port
    if not _is_loopback(host) and not settings.has_configured_keys and not settings.generated_key_on_public_bind:
        typer.echo("maie: refusing to bind a non-loopback address without MAIE_API_KEYS or MAIE_ADMIN_KEYS", err=True)
        raise typer.Exit(2)
    _raise_open_files_limit(settings.http_max_connections + 256)
    ensure_data_dir(settings.data_dir)
    warning = wide_modes_warning(settings.data_dir)
    if warning:
        log.warning("%s", warning)
    embedded = None
    if not settings.redis_url:
        embedded = EmbeddedRedis(settings.data_dir)
        settings.redis_url = embedded.launch()
    # Workers start while the embedded Redis starts: they load their models first, then connect.
    supervisor = WorkerSupervisor(workers, worker_env(settings, workers, os.environ))
    supervisor.start()
    try:
        _run_api(settings, host, port, workers, embedded)
    finally:
        # Workers first (they finish or hand back their job), then the Redis they were using.
        supervisor.stop()
        if embedded:
            embedded.stop()


def _run_api(settings: Settings, host: str, port: int, workers: int, embedded: EmbeddedRedis | None) -> None:
    """Wait for the embedded Redis, then run the API until it stops."""
    # Imported while the workers load their models beside it (FastAPI and the app take about 1 s).
    import uvicorn

    from maie.api.app import create_app
    from maie.api.auth import ensure_generated_key, key_file
    from maie.api.http_protocol import bounded_protocol

    generated = ensure_generated_key(settings)
    if embedded:
        embedded.wait_ready()
        embedded.watch()
    shown_host = "127.0.0.1" if host in ("0.0.0.0", "::") else host
    typer.echo(f"MAIE is up on http://{shown_host}:{port}  (web UI at /, API docs at /docs)")
    if generated:
        # Shown this once; later starts only say where it is kept.
        typer.echo(f"API key (generated now, stored in {key_file(settings)}): {generated}")
    elif not settings.has_configured_keys:
        typer.echo(f"API key: the one generated earlier, stored in {key_file(settings)}")
    else:
        typer.echo("API key: one of MAIE_API_KEYS / MAIE_ADMIN_KEYS")
    where = f"embedded, unix socket {embedded.socket_path}, AOF in {embedded.dir}" if embedded else "MAIE_REDIS_URL"
    typer.echo(f"Redis: {where}; workers: {workers}")
    uvicorn.run(
        create_app(settings),
        host=host,
        port=port,
        log_level=settings.log_level.lower(),
        # Keep configure_logging's handler: uvicorn's own dictConfig would give its loggers handlers
        # that bypass the correlation id, the JSON format and the URL-password redaction.
        log_config=None,
        timeout_graceful_shutdown=5,
        # httptools with a head size limit, a head timeout and a connection cap, checked before any
        # authentication (maie.api.http_protocol says why not h11's h11_max_incomplete_event_size).
        # uvicorn's limit_concurrency is left unset: it answers 503 only after a head was parsed, so
        # it bounds nothing an unauthenticated client holds; the connection cap does.
        http=bounded_protocol(settings),
        timeout_keep_alive=5,
    )


@app.command()
def worker(
    burst: Annotated[bool, typer.Option(help="Exit when the queue is empty.")] = False,
) -> None:
    """Process jobs from MAIE_REDIS_URL with warm models (scaled-out deployments run many)."""
    from maie.jobs.warmup import launch_worker

    launch_worker(_settings(), burst=burst)


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


models_app = typer.Typer(help="Whisper models for sites without a model hub.", no_args_is_help=True)
app.add_typer(models_app, name="models")


@models_app.command("download")
def models_download(
    name: Annotated[str, typer.Argument(help="A size (tiny.en, small, large-v3, ...) or a hub id org/name.")],
    dir: Annotated[Path, typer.Option("--dir", help="Directory to write the model into.")],
) -> None:
    """Fetch a Whisper model (CTranslate2) into DIR on a connected machine; copy DIR to the site and set
    MAIE_ASR__WHISPER_MODEL to it."""
    from maie.model_download import DownloadError, download_whisper

    try:
        path = download_whisper(name, dir)
    except DownloadError as exc:
        typer.echo(f"maie: {exc}", err=True)
        raise typer.Exit(1) from None
    typer.echo(f"downloaded {name} to {path}; on the site: MAIE_ASR__WHISPER_MODEL={path.resolve()}")


@app.command()
def doctor() -> None:
    """Check settings, models, Redis and the LLM; print what is in force."""
    from maie.doctor import run_doctor

    raise typer.Exit(run_doctor(_settings()))


from maie.client_cli import submit  # noqa: E402 - registered after the in-process commands

app.command(help="Send files to a running MAIE server and wait for the results (with a progress bar).")(submit)


def main() -> None:  # pragma: no cover - console entry
    sys.exit(app())
