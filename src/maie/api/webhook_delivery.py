"""Webhook delivery: a signed POST of ``{task_id, status}`` when a task ends, retried with backoff.

The API process takes due deliveries from the outbox (``maie.jobs.outbox``) and sends them. Every
attempt resolves the callback host again, checks every address (``webhook_targets``), and connects to
an address it checked: the request goes to ``scheme://<address>:<port>/path`` with the ``Host`` header
and, for https, the TLS SNI name and certificate check set to the original host name. No second
resolution happens anywhere (httpx is handed an IP literal), so DNS rebinding cannot redirect a
delivery, and certificate verification still proves the receiver owns the name.

Why this way and not a custom httpcore network backend: it uses only public httpx API (the
``sni_hostname`` request extension), keeps httpx's TLS handling as is, and the address is visible in
the request itself, so a test can assert exactly where each attempt went. Connections are not kept
alive (each attempt is its own connection), so a TLS session verified for one host name is never
reused for another that resolves to the same address. Environment proxies are ignored (a proxy would
resolve the name itself), and redirects are not followed.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import ipaddress
import json
import logging
import time
from typing import TYPE_CHECKING, Any

from maie.api.webhook_targets import DestinationRefused, Resolver, resolve_target, system_resolver
from maie.config import Settings
from maie.errors import ErrorCode
from maie.jobs.outbox import claim_due, schedule
from maie.jobs.store import TaskStore, now_iso

if TYPE_CHECKING:
    import httpx

# httpx is imported when the first webhook is due, not with the API: with the CLI's rich output it is
# ~160 ms of every start (measured), and most deployments send no webhook in their first seconds.

log = logging.getLogger(__name__)

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


def new_client() -> httpx.AsyncClient:
    """The delivery client: no redirects, no environment proxies, no connection reuse (see module doc)."""
    import httpx

    return httpx.AsyncClient(
        timeout=10.0,
        follow_redirects=False,
        trust_env=False,
        limits=httpx.Limits(max_keepalive_connections=0),
    )


async def post_to_address(
    client: httpx.AsyncClient, url: str, address: str, *, content: bytes, headers: dict[str, str]
) -> httpx.Response:
    """POST ``url`` over a connection to ``address`` (already checked), as if ``url``'s host had resolved to it."""
    import httpx

    original = httpx.URL(url)
    host = original.raw_host.decode("ascii")
    netloc = original.netloc.decode("ascii").rpartition("@")[2]  # host[:port] as the client wrote it
    pinned = original.copy_with(host=address)
    extensions: dict[str, Any] = {}
    if original.scheme == "https" and not _is_ip(host):
        extensions["sni_hostname"] = host
    return await client.post(pinned, content=content, headers={**headers, "Host": netloc}, extensions=extensions)


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


async def deliver_once(
    store: TaskStore,
    settings: Settings,
    client: httpx.AsyncClient,
    task_id: str,
    *,
    resolver: Resolver = system_resolver,
) -> None:
    import httpx

    record = await asyncio.to_thread(store.get, task_id)
    if record is None:
        return
    url = (record.options or {}).get("callback_url")
    if not url:
        return
    state: dict[str, Any] = (
        record.webhook.model_dump(exclude_unset=True) if record.webhook else {"url": url, "attempts": []}
    )
    body = json.dumps({"task_id": task_id, "status": record.status.value}).encode()
    timestamp = str(int(time.time()))
    headers = {"Content-Type": "application/json", TIMESTAMP_HEADER: timestamp}
    if settings.webhook_secret:
        headers[SIGNATURE_HEADER] = "sha256=" + sign(settings.webhook_secret, timestamp, body)
    attempt: dict[str, Any] = {"at": now_iso()}
    final = False
    ok = False
    try:
        addresses = await resolve_target(url, allow_private=settings.webhook_allow_private, resolver=resolver)
    except DestinationRefused as exc:
        attempt["error"] = exc.code.value
        attempt["detail"] = exc.reason
        # A refused address is a decision, not a glitch: trying again would only knock on the same door.
        final = exc.code == ErrorCode.DESTINATION_REFUSED
        addresses = []
    for address in addresses:
        attempt["address"] = address
        try:
            response = await post_to_address(client, url, address, content=body, headers=headers)
        except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
            attempt["error"] = type(exc).__name__
            continue  # the next checked address of the same answer, if any
        except httpx.HTTPError as exc:
            attempt["error"] = type(exc).__name__
            break
        attempt.pop("error", None)
        attempt["status_code"] = response.status_code
        ok = 200 <= response.status_code < 300
        break
    state["attempts"].append(attempt)
    state["delivered"] = ok
    n = len(state["attempts"])
    if not ok and not final and n < MAX_ATTEMPTS:
        state["next_attempt_in_s"] = backoff_s(n)
        await asyncio.to_thread(schedule, store, task_id, backoff_s(n))
    else:
        state.pop("next_attempt_in_s", None)
    await asyncio.to_thread(store.force, task_id, webhook=state)
    log.info("webhook for %s attempt %d: %s", task_id, n, attempt.get("status_code", attempt.get("error")))


async def run_deliverer(
    store: TaskStore,
    settings: Settings,
    stop: asyncio.Event,
    *,
    resolver: Resolver = system_resolver,
) -> None:
    """Claims due deliveries and sends them concurrently until ``stop`` is set."""
    async with contextlib.AsyncExitStack() as stack:
        client: httpx.AsyncClient | None = None  # made with the first due delivery
        pending: set[asyncio.Task[None]] = set()
        while not stop.is_set():
            try:
                for task_id in await asyncio.to_thread(claim_due, store):
                    if client is None:  # imported off the loop: the loop keeps serving meanwhile
                        client = await stack.enter_async_context(await asyncio.to_thread(new_client))
                    t = asyncio.create_task(deliver_once(store, settings, client, task_id, resolver=resolver))
                    pending.add(t)
                    t.add_done_callback(pending.discard)
            except Exception as exc:
                log.debug("webhook outbox unavailable: %s", exc)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=0.5)
        for t in pending:
            t.cancel()
