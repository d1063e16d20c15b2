"""The webhook outbox: a Redis sorted set of task ids by due time.

Workers (and the API, on cancel) only put a delivery here; the API process takes due ones and sends them
(``maie.api.webhook_delivery``), so a slow receiver never holds a worker.
"""

from __future__ import annotations

import time
from typing import cast

from maie.jobs.store import PREFIX, TaskStore

OUTBOX = f"{PREFIX}:webhooks"


def schedule(store: TaskStore, task_id: str, delay_s: float = 0.0) -> None:
    store.redis.zadd(OUTBOX, {task_id: time.time() + delay_s})


def notify_if_wanted(store: TaskStore, task_id: str) -> None:
    """Called when a task turns terminal."""
    record = store.get(task_id)
    if record is not None and (record.options or {}).get("callback_url"):
        schedule(store, task_id)


def claim_due(store: TaskStore, limit: int = 20) -> list[str]:
    """Task ids whose delivery is due, each removed from the outbox by this caller: ZREM decides which
    API process gets a delivery when several poll the same outbox."""
    claimed = []
    for raw in cast(list[bytes], store.redis.zrangebyscore(OUTBOX, 0, time.time(), 0, limit)):
        if store.redis.zrem(OUTBOX, raw):
            claimed.append(raw.decode())
    return claimed
