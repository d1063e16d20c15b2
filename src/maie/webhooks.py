"""Webhooks: a signed POST of ``{task_id, status}`` when a task ends, retried with backoff.

Workers only put a delivery on the outbox (a Redis sorted set by due time); the API process delivers,
so a slow receiver never holds a worker.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import ipaddress
import json
import logging
import socket
import time
from typing import Any
from urllib.parse import urlsplit

import httpx

from maie.config import Settings
from maie.errors import ErrorCode, MaieError
from maie.jobs.store import PREFIX, TaskStore, now_iso

log = logging.getLogger(__name__)

OUTBOX = f"{PREFIX}:webhooks"
MAX_ATTEMPTS = 10
SIGNATURE_HEADER = "X-MAIE-Signature"
TIMESTAMP_HEADER = "X-MAIE-Timestamp"


def backoff_s(attempt: int) -> float:
    """Delay before attempt ``attempt + 1``: 1, 2, 4 ... seconds, capped at 10 minutes."""
    return float(min(2 ** (attempt - 1), 600))


def sign(secret: str, timestamp: str, body: bytes) -> str:
    """Hex HMAC-SHA256 over ``<timestamp>.<body>``; receivers recompute it to verify."""
    return hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()


def verify(secret: str, timestamp: str, body: bytes, signature: str) -> bool:
    expected = "sha256=" + sign(secret, timestamp, body)
    return hmac.compare_digest(expected, signature)


def _is_private(host: str) -> bool:
    try:
        infos = socket.getaddrinfo(host, None)
    except socket.gaierror:
        return False
    for info in infos:
        addr = ipaddress.ip_address(info[4][0])
        if addr.is_private or addr.is_loopback or addr.is_link_local or addr.is_reserved or addr.is_multicast:
            return True
    return False


def check_callback_url(url: str, settings: Settings) -> None:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise MaieError(ErrorCode.INVALID_FIELD, "callback_url: expected an http(s) URL")
    if not settings.webhook_allow_private and _is_private(parts.hostname):
        raise MaieError(
            ErrorCode.INVALID_FIELD,
            "callback_url: loopback and private addresses are refused (MAIE_WEBHOOK_ALLOW_PRIVATE=true allows them)",
        )


def schedule(store: TaskStore, task_id: str, delay_s: float = 0.0) -> None:
    store.redis.zadd(OUTBOX, {task_id: time.time() + delay_s})


def notify_if_wanted(store: TaskStore, task_id: str) -> None:
    """Called when a task turns terminal."""
    record = store.get(task_id)
    if record is not None and (record.options or {}).get("callback_url"):
        schedule(store, task_id)


async def deliver_once(store: TaskStore, settings: Settings, client: httpx.AsyncClient, task_id: str) -> None:
    record = await asyncio.to_thread(store.get, task_id)
    if record is None:
        return
    url = (record.options or {}).get("callback_url")
    if not url:
        return
    state: dict[str, Any] = record.webhook or {"url": url, "attempts": []}
    body = json.dumps({"task_id": task_id, "status": record.status.value}).encode()
    timestamp = str(int(time.time()))
    headers = {"Content-Type": "application/json", TIMESTAMP_HEADER: timestamp}
    if settings.webhook_secret:
        headers[SIGNATURE_HEADER] = "sha256=" + sign(settings.webhook_secret, timestamp, body)
    attempt: dict[str, Any] = {"at": now_iso()}
    try:
        response = await client.post(url, content=body, headers=headers)
        attempt["status_code"] = response.status_code
        ok = 200 <= response.status_code < 300
    except httpx.HTTPError as exc:
        attempt["error"] = type(exc).__name__
        ok = False
    state["attempts"].append(attempt)
    state["delivered"] = ok
    n = len(state["attempts"])
    if not ok and n < MAX_ATTEMPTS:
        state["next_attempt_in_s"] = backoff_s(n)
        await asyncio.to_thread(schedule, store, task_id, backoff_s(n))
    else:
        state.pop("next_attempt_in_s", None)
    await asyncio.to_thread(store.force, task_id, webhook=state)
    log.info("webhook for %s attempt %d: %s", task_id, n, attempt.get("status_code", attempt.get("error")))


async def run_deliverer(store: TaskStore, settings: Settings, stop: asyncio.Event) -> None:
    """Claims due deliveries (ZREM decides which API process gets one) and sends them concurrently."""
    async with httpx.AsyncClient(timeout=10.0, follow_redirects=False) as client:
        pending: set[asyncio.Task[None]] = set()
        while not stop.is_set():
            try:
                due = await asyncio.to_thread(store.redis.zrangebyscore, OUTBOX, 0, time.time(), 0, 20)
                for raw in due:
                    if await asyncio.to_thread(store.redis.zrem, OUTBOX, raw):
                        t = asyncio.create_task(deliver_once(store, settings, client, raw.decode()))
                        pending.add(t)
                        t.add_done_callback(pending.discard)
            except Exception as exc:
                log.debug("webhook outbox unavailable: %s", exc)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=0.5)
        for t in pending:
            t.cancel()
