"""Task events for SSE: one Redis subscription per API process, fanned out in memory to every stream.

Each stream used to open its own pub/sub connection, so 100 streams exhausted the async pool and
readiness turned 503. Now ``EventHub.run`` (started in the app lifespan) holds one connection with
``PSUBSCRIBE maie:events:*`` and hands each message to the streams of that task: a dict
task_id -> set of ``Subscription``, each a bounded ``asyncio.Queue``. Per stream that is a queue and a
set entry, nothing on the Redis side.

Nothing here may block or grow without bound:

* a slow stream whose queue is full is not waited for: its queue is emptied and marked ``RESYNC``, so it
  re-reads the record once (the state it needs is the latest one, not every step on the way);
* when the Redis connection breaks (restart, network), the hub reconnects with backoff and, once
  subscribed again, tells every stream to ``RESYNC``: events published during the gap are lost, the
  record is not.

A channel carries two kinds of message: status snapshots (``{task_id, status, stage, progress,
error}``) and live segments (``{task_id, segment: {id, start, end, text}}``, published by the worker as
ASR decides them). ``follow`` turns them into one ordered stream per task for the SSE routes; a segment
lost to a resync is read back from the task's live segment list, so none is skipped.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import AsyncGenerator, AsyncIterator
from dataclasses import dataclass, field
from typing import Any, Final, Literal

import redis.asyncio as redis_async
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from maie.jobs.store import TaskStore, events_channel
from maie.schemas import TaskRecord, TaskStatus

log = logging.getLogger(__name__)

RESYNC: Final = "resync"
"""Queued instead of an event: re-read the record (a full queue, or events lost while Redis was away)."""
QUEUE_SIZE = 32
"""Events a stream may fall behind by before it is told to resync instead. A task emits a few a second,
and a burst of segments when Whisper finishes a 30 s window (a queue costs memory only when filled)."""
PING_S = 15.0
"""Seconds without an event after which an SSE stream sends a ``: ping`` comment."""
RESYNC_S = 30.0
"""Seconds without an event after which a stream re-reads the task record anyway (the hub already makes
every stream re-read after a lost Redis connection or a full queue)."""
PATTERN = events_channel("*")


@dataclass(eq=False)
class Subscription:
    task_id: str
    queue: asyncio.Queue[dict[str, Any] | str] = field(default_factory=lambda: asyncio.Queue(QUEUE_SIZE))

    def offer(self, item: dict[str, Any] | str) -> None:
        try:
            self.queue.put_nowait(item)
        except asyncio.QueueFull:
            # Too slow to keep up: drop what is queued and let the stream read the record once.
            while not self.queue.empty():
                self.queue.get_nowait()
            self.queue.put_nowait(RESYNC)


class EventHub:
    def __init__(self, redis_url: str) -> None:
        self.redis_url = redis_url
        self.subscriptions: dict[str, set[Subscription]] = {}
        self.connected = asyncio.Event()
        self.reconnects = 0

    def subscribe(self, task_id: str) -> Subscription:
        sub = Subscription(task_id)
        self.subscriptions.setdefault(task_id, set()).add(sub)
        return sub

    def unsubscribe(self, sub: Subscription) -> None:
        subs = self.subscriptions.get(sub.task_id)
        if subs is not None:
            subs.discard(sub)
            if not subs:
                del self.subscriptions[sub.task_id]

    @property
    def streams(self) -> int:
        return sum(len(s) for s in self.subscriptions.values())

    def _dispatch(self, message: dict[str, Any]) -> None:
        if message.get("type") != "pmessage":
            return
        channel = message["channel"].decode()
        subs = self.subscriptions.get(channel.removeprefix(PATTERN[:-1]))
        if not subs:
            return
        try:
            event = json.loads(message["data"])
        except ValueError:
            return
        for sub in subs:
            sub.offer(event)

    def _resync_all(self) -> None:
        for subs in self.subscriptions.values():
            for sub in subs:
                sub.offer(RESYNC)

    async def run(self, stop: asyncio.Event) -> None:
        """Listen until ``stop`` is set, reconnecting after any Redis failure."""
        backoff = 0.2
        while not stop.is_set():
            # No client-side retries: a broken connection must surface here, so the streams learn of it.
            client = redis_async.Redis.from_url(self.redis_url, socket_connect_timeout=2, retry=Retry(NoBackoff(), 0))
            pubsub = client.pubsub()
            try:
                await pubsub.psubscribe(PATTERN)
                self.connected.set()
                self._resync_all()  # whatever was published while we were not subscribed
                backoff = 0.2
                while not stop.is_set():
                    message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0)
                    if message is not None:
                        self._dispatch(message)
            except (OSError, redis_async.RedisError) as exc:
                self.connected.clear()
                self.reconnects += 1
                log.warning("event subscription lost (%s); reconnecting in %.1f s", type(exc).__name__, backoff)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), timeout=backoff)
                backoff = min(backoff * 2, 5.0)
            finally:
                with contextlib.suppress(Exception):
                    await pubsub.aclose()
                with contextlib.suppress(Exception):
                    await client.aclose()
        self.connected.clear()


Update = tuple[Literal["status", "segment", "ping"], dict[str, Any]]
"""What ``follow`` yields: a status snapshot, a live segment, or ``("ping", {})`` after PING_S idle."""


def snapshot(record: TaskRecord) -> dict[str, Any]:
    """The status event of a record (what ``TaskStore`` publishes on each write)."""
    return {
        "task_id": record.task_id,
        "status": record.status.value,
        "stage": record.stage,
        "progress": record.progress,
        "error": record.error.model_dump() if record.error else None,
    }


async def follow(hub: EventHub, store: TaskStore, task_id: str) -> AsyncGenerator[Update, None]:
    """One task's updates, in order, until it is terminal: first its status, then every status change
    and every live segment (each once, by id, from 0) as they are published. Ends at the terminal
    status, or at once if the task does not exist. Segments come only while the task runs; once it has
    ended, its record has the whole transcript. The subscription ends with the iterator."""
    sub = hub.subscribe(task_id)
    try:
        # Subscribe first, then read the state, so no change between the two is missed.
        record = await asyncio.to_thread(store.get, task_id)
        if record is None:
            return
        last = snapshot(record)
        yield "status", last
        if record.status.terminal:
            return
        sent = 0  # id of the next segment to pass on
        for segment in await asyncio.to_thread(store.segments, task_id):
            yield "segment", segment
            sent += 1
        resynced = time.monotonic()
        while True:
            try:
                # asyncio.timeout, not wait_for: wait_for wraps every wait in a new task (3.11), a cost
                # paid per event per stream.
                async with asyncio.timeout(PING_S):
                    item = await sub.queue.get()
            except TimeoutError:
                yield "ping", {}  # keeps proxies from closing an idle stream
                if time.monotonic() - resynced < RESYNC_S:
                    continue
                item = RESYNC  # a safety net only: the hub already resyncs after any gap it knows of
            if isinstance(item, dict) and "segment" in item:
                segment = item["segment"]
                if segment["id"] == sent:
                    yield "segment", segment
                    sent += 1
                    continue
                if segment["id"] < sent:
                    continue  # already passed on (read from the list, or an earlier attempt's)
                item = RESYNC  # some were lost on the way: read them from the list
            if item == RESYNC:
                resynced = time.monotonic()
                for segment in await asyncio.to_thread(store.segments, task_id, sent):
                    yield "segment", segment
                    sent += 1
                record = await asyncio.to_thread(store.get, task_id)
                if record is None:
                    return
                event = snapshot(record)
            else:
                assert isinstance(item, dict)
                event = item
            if event == last:
                continue
            last = event
            yield "status", event
            if TaskStatus(event["status"]).terminal:
                return
    finally:
        hub.unsubscribe(sub)


class EventStreamResponse(Response):
    """A minimal ``text/event-stream`` ASGI response: the generator's items as SSE, one task per stream.

    Why not sse_starlette's EventSourceResponse (used before): it runs four tasks per stream in an anyio
    task group (body, ping, disconnect listener, shutdown watcher), about 20 KiB a stream; at 1,000
    streams that cost is most of the API's memory. Here the generator runs in the request's own task,
    a single watcher task turns the client's ``http.disconnect`` into a cancel of it, and pings are
    items the generator yields when idle. Items: ``{"event": name, "data": text}`` or
    ``{"comment": text}``.
    """

    media_type = "text/event-stream"

    def __init__(self, items: AsyncIterator[dict[str, str]], headers: dict[str, str] | None = None) -> None:
        # Not Response.__init__: that would set Content-Length from an empty body.
        self.items = items
        self.status_code = 200
        self.background = None
        # proxies: do not buffer
        self.init_headers({"cache-control": "no-store", "x-accel-buffering": "no", **(headers or {})})

    @staticmethod
    def encode(item: dict[str, str]) -> bytes:
        if "comment" in item:
            return f": {item['comment']}\n\n".encode()
        lines = [f"event: {item['event']}"] if item.get("event") else []
        lines += [f"data: {line}" for line in item["data"].splitlines() or [""]]
        return ("\n".join(lines) + "\n\n").encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": self.raw_headers,
            }
        )
        streaming = asyncio.current_task()
        assert streaming is not None
        gone = False

        async def watch() -> None:
            nonlocal gone
            while (await receive())["type"] != "http.disconnect":
                pass
            gone = True
            streaming.cancel()

        watcher = asyncio.create_task(watch())
        try:
            async for item in self.items:
                await send({"type": "http.response.body", "body": self.encode(item), "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        except asyncio.CancelledError:
            if not gone:
                raise
            streaming.uncancel()  # our own cancel (the client left): the request simply ends
        finally:
            watcher.cancel()
            closer = getattr(self.items, "aclose", None)
            if closer is not None:
                with contextlib.suppress(Exception):
                    await closer()
