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
from rq.timeouts import UnixSignalDeathPenalty

from maie.config import Settings
from maie.jobs.queue import connect, worker_queues
from maie.jobs.redis_server import answers_within
from maie.jobs.store import TaskStore, lease_key
from maie.jobs.tasks import WorkerRuntime, set_runtime
from maie.jobs.workers import WORKERS_KEY, worker_key
from maie.pipeline.context import BudgetExceeded
from maie.pipeline.registry import ModelRegistry

log = logging.getLogger(__name__)


class HardDeadline(UnixSignalDeathPenalty):
    """RQ's job alarm, raising BudgetExceeded instead of RQ's JobTimeoutException.

    JobTimeoutException is an ordinary Exception: any ``except Exception`` in a stage (a library
    wrapper, a "keep the transcript" guard) would swallow it and run on. BudgetExceeded is a
    BaseException that only the job's own handler catches. The alarm is set a margin beyond the
    budget (``jobs.queue.hard_timeout_s``); the worker's own deadline checks come first.
    """

    def handle_death_penalty(self, signum: int, frame: object) -> None:
        raise BudgetExceeded(f"job exceeded its hard timeout of {self._timeout}s")


COMMAND_POLL_S = 1.0
"""How often the thread reading rq's command channel (stop-job, shutdown) wakes: also how long stopping it
may take."""


class MaieWorker(SimpleWorker):
    """SimpleWorker runs jobs in this process (no fork per job), which is what keeps models warm."""

    death_penalty_class = HardDeadline

    def subscribe(self) -> None:
        """rq's own, with the command channel read ``COMMAND_POLL_S`` at a time instead of 60 s.

        redis-py 8.2's ``PubSubWorkerThread.stop()`` waits for the read under way to end, and once the
        channel is unsubscribed that read waits out its whole timeout: a worker stopped as a job ended
        took over 30 s to exit (seen in CI; ``maie serve``'s supervisor and the tests wait 30 s)."""
        self.log.info("Worker %s: subscribing to channel %s", self.name, self.pubsub_channel_name)
        self.pubsub = self.connection.pubsub()
        self.pubsub.subscribe(**{self.pubsub_channel_name: self.handle_payload})
        thread = self.pubsub.run_in_thread(
            sleep_time=COMMAND_POLL_S, daemon=True, exception_handler=self._pubsub_exception_handler
        )
        self.pubsub_thread = thread  # type: ignore[assignment]  # rq types it by its None default


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


REDIS_WAIT_S = 30.0
"""How long a starting worker waits for Redis to answer before it gives up (``maie serve`` starts
workers and the embedded Redis at once; its supervisor restarts a worker that gave up)."""


def run_worker(
    settings: Settings,
    *,
    burst: bool = False,
    name: str | None = None,
    models: ModelRegistry,
    warming: threading.Thread,
) -> None:
    """Wait for the warm-up, then for Redis, then take jobs until stopped. ``models`` and ``warming``: a
    registry and its warm-up (``maie.jobs.warmup.start_warm_up``), begun before this module was imported
    (``maie.jobs.warmup.launch_worker``)."""
    if not settings.redis_url:
        raise SystemExit("maie worker needs MAIE_REDIS_URL (maie serve starts its own workers)")
    client = connect(settings.redis_url)
    name = name or f"maie-{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
    runtime = WorkerRuntime(settings=settings, store=TaskStore(client), models=models, name=name)
    set_runtime(runtime)
    warming.join()  # before Redis: models load while an embedded Redis starts beside them
    if not answers_within(client, REDIS_WAIT_S):
        # One line, not redis-py's traceback (``maie serve``'s supervisor starts the worker again).
        raise SystemExit(f"worker {name}: Redis did not answer within {REDIS_WAIT_S:.0f}s")
    heartbeat = Heartbeat(runtime, name, settings.worker_heartbeat_s)
    heartbeat.beat()
    heartbeat.start()
    log.info("worker %s ready on %s", name, settings.redis_url.split("@")[-1])
    # MaieWorker is a SimpleWorker: jobs run in this process (no fork per job), which keeps models warm.
    worker = MaieWorker(worker_queues(client), connection=client, name=name)
    try:
        worker.work(burst=burst, logging_level=settings.log_level, with_scheduler=False)
    except redis.ConnectionError as exc:
        # Redis went away under the worker (stopped first at shutdown, or lost): one line, not
        # redis-py's chained traceback. A task it was running is requeued by recovery.
        log.warning("worker %s stopping: Redis is unreachable (%s)", name, exc)
    finally:
        heartbeat.stopped.set()
        try:
            client.delete(worker_key(name))
            client.srem(WORKERS_KEY, name)
        except redis.ConnectionError:
            pass  # the key expires with the heartbeat TTL anyway
