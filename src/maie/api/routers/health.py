"""Liveness and readiness."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from maie.config import Settings
from maie.jobs.workers import live_workers
from maie.schemas.http import Check, Health, Readiness, ReadyChecks

router = APIRouter(tags=["health"])


@router.get("/health", summary="Liveness: the API process answers")
def health() -> Health:
    return Health(status="ok")


async def _llm_reachable(settings: Settings) -> tuple[bool, str]:
    base = settings.llm.base_url
    if not base:
        return True, "embedded"
    import httpx  # here: the only HTTP client the API's start-up would import (~75 ms, measured)

    headers = {"Authorization": f"Bearer {settings.llm.api_key}"} if settings.llm.api_key else {}
    try:
        async with httpx.AsyncClient(timeout=3.0) as client:
            r = await client.get(base.rstrip("/") + "/models", headers=headers)
        return r.status_code < 500, f"HTTP {r.status_code}"
    except httpx.HTTPError as exc:
        return False, f"unreachable: {type(exc).__name__}"


@router.get(
    "/health/ready",
    summary="Readiness: Redis, a live worker, and the LLM server",
    response_model=Readiness,
    responses={503: {"model": Readiness, "description": "Not ready: the checks say what is missing"}},
)
async def ready(request: Request) -> JSONResponse:
    settings: Settings = request.app.state.settings
    try:
        await asyncio.wait_for(request.app.state.redis_async.ping(), timeout=2.0)
        redis_check = Check(ok=True)
        workers = await asyncio.to_thread(live_workers, request.app.state.redis)
        workers_check = Check(ok=len(workers) > 0, live=len(workers))
    except Exception as exc:
        redis_check = Check(ok=False, error=type(exc).__name__)
        workers_check = Check(ok=False, error="redis unavailable")
    ok, detail = await _llm_reachable(settings)
    checks = ReadyChecks(redis=redis_check, workers=workers_check, llm=Check(ok=ok, detail=detail))
    ready_ = all(c.ok for c in (checks.redis, checks.workers, checks.llm))
    body = Readiness(ready=ready_, checks=checks)
    return JSONResponse(body.model_dump(mode="json"), status_code=200 if ready_ else 503)
