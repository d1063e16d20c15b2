"""Liveness and readiness."""

from __future__ import annotations

import asyncio

import httpx
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from maie.config import Settings
from maie.jobs.worker import live_workers

router = APIRouter(tags=["health"])


@router.get("/health", summary="Liveness: the API process answers")
def health() -> dict:
    return {"status": "ok"}


async def _llm_reachable(settings: Settings) -> tuple[bool, str]:
    base = settings.llm.base_url
    if not base:
        return True, "embedded"
    headers = {"Authorization": f"Bearer {settings.llm.api_key}"} if settings.llm.api_key else {}
    try:
        async with httpx.AsyncClient(timeout=3.0) as client:
            r = await client.get(base.rstrip("/") + "/models", headers=headers)
        return r.status_code < 500, f"HTTP {r.status_code}"
    except httpx.HTTPError as exc:
        return False, f"unreachable: {type(exc).__name__}"


@router.get("/health/ready", summary="Readiness: Redis, a live worker, and the LLM server")
async def ready(request: Request) -> JSONResponse:
    settings: Settings = request.app.state.settings
    checks: dict[str, dict] = {}
    try:
        await asyncio.wait_for(request.app.state.redis_async.ping(), timeout=2.0)
        checks["redis"] = {"ok": True}
        workers = await asyncio.to_thread(live_workers, request.app.state.redis)
        checks["workers"] = {"ok": len(workers) > 0, "live": len(workers)}
    except Exception as exc:
        checks["redis"] = {"ok": False, "error": type(exc).__name__}
        checks["workers"] = {"ok": False, "error": "redis unavailable"}
    ok, detail = await _llm_reachable(settings)
    checks["llm"] = {"ok": ok, "detail": detail}
    ready_ = all(c["ok"] for c in checks.values())
    return JSONResponse({"ready": ready_, "checks": checks}, status_code=200 if ready_ else 503)
