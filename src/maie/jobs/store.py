"""Task records in Redis: one hash per task, an index by submission time, and an event channel per task."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime
from typing import Any

import redis

from maie.logs import correlation_id
from maie.schemas import TERMINAL, TaskError, TaskRecord, TaskStatus

PREFIX = "maie"
JSON_FIELDS = ("error", "warnings", "results", "metrics", "versions", "options", "webhook")
TASKS_INDEX = f"{PREFIX}:tasks"
"""Sorted set of task ids by submission time (retention, recent tasks)."""
ACTIVE_SET = f"{PREFIX}:active"
"""Task ids not yet terminal (recovery scans these)."""

# Refuses to overwrite a terminal status, so a late progress write from a worker cannot undo a cancel.
_UPDATE_UNLESS_TERMINAL = """
local status = redis.call('HGET', KEYS[1], 'status')
if not status then return -1 end
if status == 'COMPLETE' or status == 'FAILED' or status == 'CANCELLED' then return 0 end
for i = 1, #ARGV, 2 do redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1]) end
return 1
"""


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def task_key(task_id: str) -> str:
    return f"{PREFIX}:task:{task_id}"


def events_channel(task_id: str) -> str:
    return f"{PREFIX}:events:{task_id}"


def lease_key(task_id: str) -> str:
    """Held by the worker running the task; it expires when the worker dies."""
    return f"{PREFIX}:lease:{task_id}"


def _encode(fields: dict[str, Any]) -> dict[str, str]:
    out: dict[str, str] = {}
    for name, value in fields.items():
        if name in JSON_FIELDS:
            out[name] = json.dumps(value.model_dump() if hasattr(value, "model_dump") else value)
        elif value is None:
            out[name] = ""
        else:
            out[name] = str(value)
    return out


def _decode(raw: dict[bytes, bytes]) -> TaskRecord:
    data: dict[str, Any] = {k.decode(): v.decode() for k, v in raw.items()}
    for name in JSON_FIELDS:
        data[name] = json.loads(data[name]) if data.get(name) else None
    for name in ("stage", "started_at", "completed_at", "filename", "submitted_at", "correlation_id"):
        if data.get(name) == "":
            data[name] = None
    data["progress"] = float(data.get("progress") or 0.0)
    data["attempts"] = int(data.get("attempts") or 0)
    return TaskRecord.model_validate(data)


class TaskStore:
    """Reads and writes task records. Every write publishes an event for SSE listeners."""

    def __init__(self, client: redis.Redis) -> None:
        self.redis = client
        self._update = client.register_script(_UPDATE_UNLESS_TERMINAL)

    def create(
        self, task_id: str, *, options: dict[str, Any], filename: str | None = None, audio_path: str | None = None
    ) -> TaskRecord:
        fields = {
            "task_id": task_id,
            "status": TaskStatus.PENDING.value,
            "stage": TaskStatus.PENDING.value,
            "progress": 0.0,
            "submitted_at": now_iso(),
            "filename": filename,
            "options": options,
            "audio_path": audio_path,
            "attempts": 0,
            "updated_at": time.time(),
            "correlation_id": correlation_id.get(),
        }
        pipe = self.redis.pipeline()
        pipe.hset(task_key(task_id), mapping=_encode(fields))
        pipe.zadd(TASKS_INDEX, {task_id: time.time()})
        pipe.sadd(ACTIVE_SET, task_id)
        pipe.execute()
        record = self.get(task_id)
        assert record is not None
        self._publish(record)
        return record

    def get(self, task_id: str) -> TaskRecord | None:
        raw = self.redis.hgetall(task_key(task_id))
        return _decode(raw) if raw else None

    def correlation_id(self, task_id: str) -> str | None:
        value = self.redis.hget(task_key(task_id), "correlation_id")
        return value.decode() if value else None

    def audio_path(self, task_id: str) -> str | None:
        value = self.redis.hget(task_key(task_id), "audio_path")
        return value.decode() if value else None

    def status(self, task_id: str) -> TaskStatus | None:
        value = self.redis.hget(task_key(task_id), "status")
        return TaskStatus(value.decode()) if value else None

    def update(self, task_id: str, **fields: Any) -> bool:
        """Write fields unless the task is already terminal. Returns False if it was (or is gone)."""
        encoded = _encode({**fields, "updated_at": time.time()})
        args: list[str] = [x for pair in encoded.items() for x in pair]
        written = self._update(keys=[task_key(task_id)], args=args)
        if written != 1:
            return False
        status = fields.get("status")
        if status is not None and TaskStatus(status) in TERMINAL:
            self.redis.srem(ACTIVE_SET, task_id)
        self._publish_id(task_id)
        return True

    def finish(self, task_id: str, status: TaskStatus, **fields: Any) -> bool:
        return self.update(task_id, status=status.value, stage=status.value, completed_at=now_iso(), **fields)

    def fail(self, task_id: str, error: TaskError, **fields: Any) -> bool:
        return self.finish(task_id, TaskStatus.FAILED, error=error, **fields)

    def force(self, task_id: str, **fields: Any) -> None:
        """Write fields even on a terminal record (webhook delivery log, recovery)."""
        self.redis.hset(task_key(task_id), mapping=_encode(fields))
        status = fields.get("status")
        if status is not None:
            if TaskStatus(status) in TERMINAL:
                self.redis.srem(ACTIVE_SET, task_id)
            else:
                self.redis.sadd(ACTIVE_SET, task_id)
        self._publish_id(task_id)

    def hold_lease(self, task_id: str, worker: str, ttl_s: int) -> None:
        self.redis.set(lease_key(task_id), worker, ex=max(1, ttl_s))

    def release_lease(self, task_id: str) -> None:
        self.redis.delete(lease_key(task_id))

    def has_lease(self, task_id: str) -> bool:
        return bool(self.redis.exists(lease_key(task_id)))

    def last_update(self, task_id: str) -> float:
        raw = self.redis.hget(task_key(task_id), "updated_at")
        return float(raw) if raw else 0.0

    def incr_attempts(self, task_id: str) -> int:
        return int(self.redis.hincrby(task_key(task_id), "attempts", 1))

    def delete(self, task_id: str) -> None:
        pipe = self.redis.pipeline()
        pipe.delete(task_key(task_id))
        pipe.delete(lease_key(task_id))
        pipe.zrem(TASKS_INDEX, task_id)
        pipe.srem(ACTIVE_SET, task_id)
        pipe.execute()

    def active_ids(self) -> list[str]:
        return [x.decode() for x in self.redis.smembers(ACTIVE_SET)]

    def ids_older_than(self, cutoff_epoch: float) -> list[str]:
        return [x.decode() for x in self.redis.zrangebyscore(TASKS_INDEX, 0, cutoff_epoch)]

    def recent_ids(self, limit: int = 50) -> list[str]:
        return [x.decode() for x in self.redis.zrevrange(TASKS_INDEX, 0, limit - 1)]

    def _publish_id(self, task_id: str) -> None:
        status, stage, progress, error = self.redis.hmget(task_key(task_id), ["status", "stage", "progress", "error"])
        if status is None:
            return
        event = {
            "task_id": task_id,
            "status": status.decode(),
            "stage": stage.decode() if stage else None,
            "progress": float(progress or 0.0),
            "error": json.loads(error) if error else None,
        }
        self.redis.publish(events_channel(task_id), json.dumps(event))

    def _publish(self, record: TaskRecord) -> None:
        self._publish_id(record.task_id)
