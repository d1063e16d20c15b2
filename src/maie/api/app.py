"""The app factory: ``create_app(settings)`` with a lifespan that owns the Redis clients and the webhook sender."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles

from maie import __version__
from maie.api.auth import configured_keys
from maie.api.errors import install_error_handlers
from maie.api.events import EventHub
from maie.api.metrics import install_metrics
from maie.api.routers import health, models, openai, process, tasks, templates
from maie.api.webhook_delivery import run_deliverer
from maie.config import Settings, get_settings
from maie.jobs import maintenance
from maie.jobs.queue import connect, connect_async, get_queue
from maie.jobs.store import TaskStore
from maie.logs import CorrelationMiddleware
from maie.pipeline import availability
from maie.templates import TemplateStore

log = logging.getLogger(__name__)

WEB_DIR = Path(__file__).resolve().parent.parent / "web"


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    settings: Settings = app.state.settings
    checks = availability.warm(settings)  # the optional-extra import checks, off the request path
    stop = asyncio.Event()
    background = [
        asyncio.create_task(run_deliverer(app.state.store, settings, stop)),
        asyncio.create_task(app.state.events.run(stop)),
        asyncio.create_task(maintenance.run_forever(app.state.store, app.state.queue, settings, stop)),
    ]
    try:
        yield
    finally:
        stop.set()
        checks.set()
        availability.shutdown()
        await asyncio.gather(*background)
        await app.state.redis_async.aclose()
        app.state.redis.close()


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()
    if not settings.redis_url:
        raise RuntimeError("create_app needs settings.redis_url (maie serve sets it for the embedded Redis)")
    app = FastAPI(
        title="MAIE",
        version=__version__,
        summary="Modular Audio Intelligence Engine: transcripts, clean transcripts and structured summaries",
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.api_keys = configured_keys(settings)
    app.state.redis = connect(settings.redis_url)
    app.state.redis_async = connect_async(settings.redis_url)
    app.state.events = EventHub(settings.redis_url)
    app.state.store = TaskStore(app.state.redis)
    app.state.queue = get_queue(app.state.redis)
    app.state.templates = TemplateStore.from_settings(settings)
    install_error_handlers(app)
    install_metrics(app)
    app.add_middleware(CorrelationMiddleware)
    for module in (health, process, tasks, templates, models, openai):
        app.include_router(module.router)
    if (WEB_DIR / "index.html").exists():
        app.mount("/", StaticFiles(directory=WEB_DIR, html=True), name="web")
    return app
