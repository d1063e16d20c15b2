"""``/metrics`` for Prometheus: HTTP traffic from this process, queue and task figures from Redis."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator

from fastapi import APIRouter, FastAPI, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from maie.jobs import queue as jobs
from maie.jobs.stats import STAGE_BUCKETS, read_stats
from maie.jobs.workers import live_workers
from maie.schemas import TaskStatus

log = logging.getLogger(__name__)
router = APIRouter(tags=["metrics"])


class ServiceCollector(Collector):
    """Read at scrape time, so every API replica reports the same cluster-wide figures (and its own
    open SSE streams)."""

    def __init__(self, app: FastAPI) -> None:
        self.app = app

    def collect(self) -> Iterator[Metric]:
        state = self.app.state
        # This process's own figure (not cluster-wide): an open stream holds one subscription here.
        yield GaugeMetricFamily("maie_sse_streams", "SSE streams open on this API process.", value=state.events.streams)
        try:
            depth = jobs.depth(state.queue)
            active: dict[str, int] = {}
            for task_id in state.store.active_ids():
                status = state.store.status(task_id)
                if status is not None:
                    active[status.value] = active.get(status.value, 0) + 1
            totals, stages = read_stats(state.redis)
            workers = live_workers(state.redis)
        except Exception as exc:  # Redis away: report what this process knows
            log.debug("metrics without redis: %s", exc)
            yield GaugeMetricFamily("maie_redis_up", "Whether Redis answered this scrape.", value=0)
            return
        yield GaugeMetricFamily("maie_redis_up", "Whether Redis answered this scrape.", value=1)
        yield GaugeMetricFamily("maie_queue_depth", "Jobs queued or running.", value=depth)
        g = GaugeMetricFamily("maie_tasks_active", "Tasks not yet terminal, by status.", labels=["status"])
        for status in TaskStatus:
            if not status.terminal:
                g.add_metric([status.value], active.get(status.value, 0))
        yield g
        c = CounterMetricFamily("maie_tasks_finished", "Tasks that reached a terminal state.", labels=["status"])
        for status in (TaskStatus.COMPLETE, TaskStatus.FAILED, TaskStatus.CANCELLED):
            c.add_metric([status.value], totals.get(f"tasks_{status.value}", 0.0))
        yield c
        yield CounterMetricFamily(
            "maie_audio_seconds_processed", "Seconds of audio processed.", value=totals.get("audio_seconds", 0.0)
        )
        yield GaugeMetricFamily("maie_workers_live", "Workers with a live heartbeat.", value=len(workers))
        hb = GaugeMetricFamily(
            "maie_worker_heartbeat_age_seconds", "Seconds since each worker's last heartbeat.", labels=["worker"]
        )
        for w in workers:
            hb.add_metric([w["name"]], max(0.0, time.time() - w["at"]))
        yield hb
        h = HistogramMetricFamily("maie_stage_duration_seconds", "Time spent in each pipeline stage.", labels=["stage"])
        for stage, data in sorted(stages.items()):
            buckets = [(str(b), data.get(f"le_{b}", 0.0)) for b in STAGE_BUCKETS]
            buckets.append(("+Inf", data.get("count", 0.0)))
            h.add_metric([stage], buckets, sum_value=data.get("sum", 0.0))
        yield h


class HttpMetrics:
    """Plain ASGI middleware (no body buffering: uploads stream through untouched)."""

    def __init__(self, app: ASGIApp, registry: CollectorRegistry) -> None:
        self.app = app
        self.requests = Counter(
            "maie_http_requests", "HTTP requests.", ["route", "method", "status"], registry=registry
        )
        self.latency = Histogram(
            "maie_http_request_duration_seconds", "HTTP request latency.", ["route", "method"], registry=registry
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            # The route template, never the raw path: task ids would explode the label set.
            route = getattr(scope.get("route"), "path", "unmatched")
            self.requests.labels(route, scope["method"], str(status)).inc()
            self.latency.labels(route, scope["method"]).observe(time.perf_counter() - started)


def install_metrics(app: FastAPI) -> None:
    registry = CollectorRegistry()
    registry.register(ServiceCollector(app))
    app.state.metrics_registry = registry
    app.add_middleware(HttpMetrics, registry=registry)
    app.include_router(router)


@router.get("/metrics", include_in_schema=False)
def metrics(request: Request) -> Response:
    return Response(generate_latest(request.app.state.metrics_registry), media_type=CONTENT_TYPE_LATEST)
