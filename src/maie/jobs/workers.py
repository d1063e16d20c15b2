"""Which workers are alive: the keys a worker's heartbeat writes, read by the API, metrics and doctor.

Apart from ``maie.jobs.worker`` so that reading them does not import RQ's worker and the pipeline
(numpy, faster-whisper): the API process never runs a job."""

from __future__ import annotations

import json
from typing import Any, cast

import redis

from maie.jobs.store import PREFIX

WORKERS_KEY = f"{PREFIX}:workers"


def worker_key(name: str) -> str:
    return f"{PREFIX}:worker:{name}"


def live_workers(client: redis.Redis) -> list[dict[str, Any]]:
    """Workers whose heartbeat has not expired."""
    names = [n.decode() for n in cast("set[bytes]", client.smembers(WORKERS_KEY))]
    if not names:
        return []
    out: list[dict[str, Any]] = []
    raws = cast("list[bytes | None]", client.mget([worker_key(n) for n in names]))
    for name, raw in zip(names, raws, strict=True):
        if raw is None:
            client.srem(WORKERS_KEY, name)
        else:
            out.append(json.loads(raw))
    return out
