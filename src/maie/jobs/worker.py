"""``maie worker``: one process, warm models, one job at a time."""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
import uuid

import redis
from rq import SimpleWorker

from maie.config import Settings
from maie.jobs.queue import connect, get_queue
from maie.jobs.store import PREFIX, TaskStore, lease_key
from maie.jobs.tasks import WorkerRuntime, set_runtime
from maie.pipeline.context import TaskContext
from maie.pipeline.registry import ModelRegistry
from maie.schemas import TaskOptions

log = logging.getLogger(__name__)

WORKERS_KEY = f"{PREFIX}:workers"


def worker_key(name: str) -> str:
    return f"{PREFIX}:worker:{name}"


def live_workers(client: redis.Redis) -> list[dict]:
    """Workers whose heartbeat has not expired."""
    names = [n.decode() for n in client.smembers(WORKERS_KEY)]
    if not names:
        return []
    out = []
    for name, raw in zip(names, client.mget([worker_key(n) for n in names]), strict=True):
        if raw is None:
            client.srem(WORKERS_KEY, name)
        else:
            out.append(json.loads(raw))
    return out


def warm_up(runtime: WorkerRuntime) -> None:
    """Load the default ASR model before the first job, so the first upload is not the slow one."""
    from maie.pipeline.asr.whisper import get_model, resolve_spec

    ctx = TaskContext(task_id="warm-up", options=TaskOptions(), settings=runtime.settings, models=runtime.models)
    try:
        get_model(ctx, resolve_spec(ctx))
    except Exception as exc:
        log.warning("could not preload the ASR model: %s", exc)


class Heartbeat(threading.Thread):
    """Tells the API this worker is alive, and holds a lease on the task it is running.

    A task whose lease expires was lost with its worker (SIGKILL, OOM, power): recovery requeues it.
    """

    def __init__(self, runtime: WorkerRuntime, name: str, interval_s: float) -> None:
        super().__init__(daemon=True, name="maie-heartbeat")
        self.runtime, self.name, self.interval_s = runtime, name, interval_s
        self.stopped = threading.Event()

    def beat(self) -> None:
        r = self.runtime.store.redis
        ttl = max(1, int(self.interval_s * 3))
        info = {
            "name": self.name,
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "task": self.runtime.current_task,
            "at": time.time(),
        }
        pipe = r.pipeline()
        pipe.set(worker_key(self.name), json.dumps(info), ex=ttl)
        pipe.sadd(WORKERS_KEY, self.name)
        if self.runtime.current_task:
            pipe.set(lease_key(self.runtime.current_task), self.name, ex=ttl)
        pipe.execute()

    def run(self) -> None:
        while not self.stopped.is_set():
            try:
                self.beat()
            except Exception as exc:
                log.warning("heartbeat failed: %s", exc)
            self.stopped.wait(self.interval_s)


def run_worker(settings: Settings, *, burst: bool = False, name: str | None = None) -> None:
    if not settings.redis_url:
        raise SystemExit("maie worker needs MAIE_REDIS_URL (maie serve starts its own workers)")
    client = connect(settings.redis_url)
    name = name or f"maie-{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
    runtime = WorkerRuntime(settings=settings, store=TaskStore(client), models=ModelRegistry(), name=name)
    set_runtime(runtime)
    heartbeat = Heartbeat(runtime, name, settings.worker_heartbeat_s)
    heartbeat.beat()
    heartbeat.start()
    warm_up(runtime)
    log.info("worker %s ready on %s", name, settings.redis_url.split("@")[-1])
    # SimpleWorker runs jobs in this process (no fork per job), which is what keeps models warm.
    worker = SimpleWorker([get_queue(client)], connection=client, name=name)
    try:
        worker.work(burst=burst, logging_level=settings.log_level, with_scheduler=False)
    finally:
        heartbeat.stopped.set()
        client.delete(worker_key(name))
        client.srem(WORKERS_KEY, name)
