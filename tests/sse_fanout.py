"""Many SSE streams on one API process, with cheap asyncio clients: shared by the soak test and bench/sse.py.

The service runs without a worker (a real one would run the task the streams watch); readiness needs a
live worker, so ``registered_worker`` keeps a worker heartbeat in Redis the way a worker does. Events are
made by writing the record with ``TaskStore`` directly, so latency is measured store update -> client.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import resource
import statistics
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import httpx
import psutil
import redis

from maie.jobs.store import TaskStore
from maie.jobs.workers import WORKERS_KEY, worker_key
from maie.schemas import TaskStatus

from service import API_KEY, Service

KiB = 1024
WARMUP = 100


def raise_open_files_limit() -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


@contextlib.contextmanager
def registered_worker(client: redis.Redis, name: str = "sse-fanout") -> Iterator[None]:
    stop = threading.Event()

    def beat() -> None:
        while not stop.is_set():
            info = {"name": name, "pid": 0, "at": time.time(), "current_task": None}
            client.set(worker_key(name), json.dumps(info), ex=10)
            client.sadd(WORKERS_KEY, name)
            stop.wait(2.0)

    thread = threading.Thread(target=beat, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()
        client.delete(worker_key(name))
        client.srem(WORKERS_KEY, name)


@dataclass
class Stream:
    events: list[tuple[float, dict]] = field(default_factory=list)
    got: asyncio.Event = field(default_factory=asyncio.Event)
    error: str | None = None


async def _stream(host: str, port: int, task_id: str, stream: Stream, opened: asyncio.Semaphore) -> None:
    try:
        async with opened:  # connection bursts are paced, not the streams themselves
            reader, writer = await asyncio.open_connection(host, port)
            writer.write(
                f"GET /v1/tasks/{task_id}/events HTTP/1.1\r\nHost: {host}\r\nX-API-Key: {API_KEY}\r\n"
                "Accept: text/event-stream\r\n\r\n".encode()
            )
            await writer.drain()
            status_line = await reader.readline()
            if b" 200 " not in status_line:
                stream.error = status_line.decode(errors="replace")
                return
        while line := await reader.readline():
            if line.startswith(b"data:"):
                event = json.loads(line[5:])
                stream.events.append((time.monotonic(), event))
                stream.got.set()
                if TaskStatus(event["status"]).terminal:
                    break
        writer.close()
    except (OSError, ValueError) as exc:
        stream.error = repr(exc)
        stream.got.set()


@dataclass
class FanoutResult:
    streams: int
    failed: int
    rss_before: int
    rss_warm: int
    rss_open: int
    warm: int
    latencies_s: list[float]
    missed: int
    ready_codes: list[int]
    open_s: float

    @property
    def kib_per_stream(self) -> float:
        return (self.rss_open - self.rss_warm) / KiB / max(1, self.streams - self.warm)

    def percentile(self, q: float) -> float:
        if not self.latencies_s:
            return float("nan")
        return statistics.quantiles(self.latencies_s, n=100, method="inclusive")[int(q) - 1]


async def run_fanout(service: Service, store: TaskStore, task_id: str, n: int, updates: int = 5) -> FanoutResult:
    """Open ``n`` streams on ``task_id`` (PENDING), make ``updates`` progress writes then a terminal one,
    and record what every stream received."""
    host, port_s = service.base_url.removeprefix("http://").split(":")
    api = psutil.Process(service.proc.pid)
    rss_before = api.memory_info().rss
    streams = [Stream() for _ in range(n)]
    gate = asyncio.Semaphore(50)
    # Memory per stream is the marginal cost: the first WARMUP streams also pay one-time costs (thread
    # pool threads and their malloc arenas, first-use caches), measured apart as rss_warm - rss_before.
    warm = min(WARMUP, n // 5)
    t0 = time.monotonic()
    tasks = [asyncio.create_task(_stream(host, int(port_s), task_id, s, gate)) for s in streams[:warm]]
    await asyncio.wait_for(asyncio.gather(*(s.got.wait() for s in streams[:warm])), timeout=120)
    await asyncio.sleep(1.0)
    rss_warm = api.memory_info().rss
    tasks += [asyncio.create_task(_stream(host, int(port_s), task_id, s, gate)) for s in streams[warm:]]
    await asyncio.wait_for(asyncio.gather(*(s.got.wait() for s in streams)), timeout=120)
    open_s = time.monotonic() - t0
    await asyncio.sleep(1.0)  # let the allocations of the last connections settle
    rss_open = api.memory_info().rss
    ready_codes: list[int] = []
    latencies: list[float] = []
    missed = 0
    async with httpx.AsyncClient(base_url=service.base_url, timeout=10) as client:
        ready_codes.append((await client.get("/health/ready")).status_code)
        for i in range(updates + 1):
            before = [len(s.events) for s in streams]
            if i < updates:
                fields = {"stage": TaskStatus.PROCESSING_ASR.value, "progress": round((i + 1) / (updates + 1), 3)}
                sent = time.monotonic()
                await asyncio.to_thread(store.update, task_id, status=TaskStatus.PROCESSING_ASR.value, **fields)
            else:
                sent = time.monotonic()
                await asyncio.to_thread(store.finish, task_id, TaskStatus.CANCELLED)
            deadline = sent + 10
            while time.monotonic() < deadline and any(
                len(s.events) <= b for s, b in zip(streams, before, strict=True) if s.error is None
            ):
                await asyncio.sleep(0.01)
            for s, b in zip(streams, before, strict=True):
                if len(s.events) > b:
                    latencies.append(s.events[b][0] - sent)
                else:
                    missed += 1
            ready_codes.append((await client.get("/health/ready")).status_code)
    await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), timeout=30)
    return FanoutResult(
        streams=n,
        failed=sum(1 for s in streams if s.error is not None),
        rss_before=rss_before,
        rss_warm=rss_warm,
        rss_open=rss_open,
        warm=warm,
        latencies_s=latencies,
        missed=missed,
        ready_codes=ready_codes,
        open_s=open_s,
    )
