"""Task records in Redis: one hash per task, an index by submission time, and an event channel per task.

Every write that can race another writer is one Lua script, so deleting, cancelling, finishing and the
webhook bookkeeping never interleave into a partial record: a script runs alone on the Redis server.
Only ``create`` makes a record; every later write (``update``, ``finish``, ``force``, ``incr_attempts``,
``set_job_id``) leaves a missing record missing, so a write that lands after a delete cannot resurrect a
half record (it used to: ``force`` was a plain HSET, and every route then answered 500 on it).
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, cast

import redis
from pydantic import ValidationError
from redis.client import Pipeline
from redis.typing import EncodableT, FieldT

from maie.errors import ErrorCode, MaieError
from maie.logs import correlation_id
from maie.schemas import TERMINAL, TaskError, TaskMetrics, TaskRecord, TaskStatus

PREFIX = "maie"
JSON_FIELDS = ("error", "warnings", "results", "metrics", "versions", "options", "webhook", "speaker_names")
TASKS_INDEX = f"{PREFIX}:tasks"
"""Sorted set of task ids by submission time (retention, recent tasks)."""
ACTIVE_SET = f"{PREFIX}:active"
"""Task ids not yet terminal (recovery scans these)."""


def owner_index(owner: str) -> str:
    """Sorted set of one key's task ids by submission time (``GET /v1/tasks`` for that key)."""
    return f"{PREFIX}:tasks-of:{owner}"


# KEYS: task hash, ACTIVE_SET. ARGV: task id, whether the new status is terminal (1/0/""), field pairs.
# Returns -1 when the record is gone, 0 when it is already terminal (nothing written), 1 when written.
# Refusing a terminal record means a late progress write from a worker cannot undo a cancel, and of two
# racing finishes (worker COMPLETE vs user cancel) exactly one wins.
_UPDATE_UNLESS_TERMINAL = """
local status = redis.call('HGET', KEYS[1], 'status')
if not status then return -1 end
if status == 'COMPLETE' or status == 'FAILED' or status == 'CANCELLED' then return 0 end
for i = 3, #ARGV, 2 do redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1]) end
if ARGV[2] == '1' then redis.call('SREM', KEYS[2], ARGV[1]) end
return 1
"""

# Same KEYS/ARGV; writes even on a terminal record, but never on a missing one (returns 0 then).
# ARGV[2]: "1" new status terminal, "0" not terminal (back into ACTIVE_SET), "" no status written.
_FORCE_IF_EXISTS = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
for i = 3, #ARGV, 2 do redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1]) end
if ARGV[2] == '1' then redis.call('SREM', KEYS[2], ARGV[1])
elseif ARGV[2] == '0' then redis.call('SADD', KEYS[2], ARGV[1]) end
return 1
"""

# KEYS: task hash. ARGV: field, increment. Returns the new value, or false (nil) when the record is gone.
_INCR_IF_EXISTS = """
if redis.call('EXISTS', KEYS[1]) == 0 then return false end
return redis.call('HINCRBY', KEYS[1], ARGV[1], ARGV[2])
"""

# KEYS: task hash, segment list, events channel. ARGV: ttl, then one JSON segment per argument, each
# also wrapped as its event (``{"task_id":…, "segment":…}``) by the caller: ARGV[2..n+1] list items,
# ARGV[n+2..] events. Returns 0 (nothing written) when the task is terminal or gone: the job is over.
_ADD_SEGMENTS = """
local status = redis.call('HGET', KEYS[1], 'status')
if not status or status == 'COMPLETE' or status == 'FAILED' or status == 'CANCELLED' then return 0 end
local n = (#ARGV - 1) / 2
for i = 2, n + 1 do redis.call('RPUSH', KEYS[2], ARGV[i]) end
redis.call('EXPIRE', KEYS[2], ARGV[1])
for i = n + 2, #ARGV do redis.call('PUBLISH', KEYS[3], ARGV[i]) end
return 1
"""

# KEYS: task hash, lease, TASKS_INDEX, ACTIVE_SET, segment list. ARGV: task id, owner index prefix.
# One step: the record, its lease and every index entry go together (the owner index is found from the
# record itself, so it is read and removed in the same step).
_DELETE = """
local owner = redis.call('HGET', KEYS[1], 'owner')
if owner then redis.call('ZREM', ARGV[2] .. owner, ARGV[1]) end
local existed = redis.call('DEL', KEYS[1])
redis.call('DEL', KEYS[2])
redis.call('ZREM', KEYS[3], ARGV[1])
redis.call('SREM', KEYS[4], ARGV[1])
redis.call('DEL', KEYS[5])
return existed
"""


class TaskCorrupt(MaieError):
    """A stored record that cannot be read (no status, bad JSON, wrong types): 500 TASK_CORRUPT."""

    def __init__(self, task_id: str, reason: str) -> None:
        super().__init__(ErrorCode.TASK_CORRUPT, f"the record of task {task_id!r} is unreadable ({reason})")
        self.task_id = task_id


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def task_key(task_id: str) -> str:
    return f"{PREFIX}:task:{task_id}"


def events_channel(task_id: str) -> str:
    return f"{PREFIX}:events:{task_id}"


def segments_key(task_id: str) -> str:
    """List of the segments ASR has decided so far (JSON ``{id, start, end, text}``), while it runs: a
    stream that fell behind or came late reads them here; the channel carries each one as it comes."""
    return f"{PREFIX}:segments:{task_id}"


SEGMENTS_TTL_S = 3600
"""The live segment list outlives a worker that died mid-job by at most this long (it is deleted when
the task ends, and renewed with every segment)."""


def lease_key(task_id: str) -> str:
    """Held by the worker running the task; it expires when the worker dies."""
    return f"{PREFIX}:lease:{task_id}"


def status_event(task_id: str, status: str, stage: str | None, progress: float, error: Any) -> str:
    """The message a task's channel carries after each write (SSE relays it)."""
    return json.dumps({"task_id": task_id, "status": status, "stage": stage, "progress": progress, "error": error})


def _encode(fields: dict[str, Any]) -> dict[str, str]:
    out: dict[str, str] = {}
    for name, value in fields.items():
        if name in JSON_FIELDS:
            # exclude_unset: a part is stored with the keys it was built with (see maie.schemas)
            out[name] = json.dumps(value.model_dump(exclude_unset=True) if hasattr(value, "model_dump") else value)
        elif value is None:
            out[name] = ""
        else:
            out[name] = str(value)
    return out


def _decode(task_id: str, raw: dict[bytes, bytes]) -> TaskRecord:
    try:
        return _decode_fields(raw)
    except (ValidationError, ValueError, TypeError) as exc:  # JSONDecodeError, UnicodeDecodeError are ValueErrors
        raise TaskCorrupt(task_id, type(exc).__name__) from None


def _decode_fields(raw: dict[bytes, bytes]) -> TaskRecord:
    data: dict[str, Any] = {k.decode(): v.decode() for k, v in raw.items()}
    for name in JSON_FIELDS:
        data[name] = json.loads(data[name]) if data.get(name) else None
    for name in ("stage", "started_at", "completed_at", "filename", "submitted_at", "correlation_id", "owner"):
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
        self._force = client.register_script(_FORCE_IF_EXISTS)
        self._incr = client.register_script(_INCR_IF_EXISTS)
        self._delete = client.register_script(_DELETE)
        self._add_segments = client.register_script(_ADD_SEGMENTS)

    def create(
        self,
        task_id: str,
        *,
        owner: str,
        options: dict[str, Any],
        filename: str | None = None,
        audio_path: str | None = None,
        metrics: TaskMetrics | None = None,
        job_id: str | None = None,
        pipeline: Pipeline | None = None,
    ) -> None:
        """Write a new PENDING record, index it and announce it. With ``pipeline`` the writes are only
        queued on it (a submission writes the record, its job and its admission in one transaction);
        without it they are sent now, in one round trip."""
        fields: dict[str, Any] = {
            "task_id": task_id,
            "owner": owner,
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
        if metrics is not None:
            fields["metrics"] = metrics
        if job_id is not None:
            fields["job_id"] = job_id
        pipe = pipeline if pipeline is not None else self.redis.pipeline()
        pipe.hset(task_key(task_id), mapping=cast("Mapping[FieldT, EncodableT]", _encode(fields)))
        now = time.time()
        pipe.zadd(TASKS_INDEX, {task_id: now})
        pipe.zadd(owner_index(owner), {task_id: now})
        pipe.sadd(ACTIVE_SET, task_id)
        # A new record's event needs no read back: it is made from the fields just written.
        pipe.publish(events_channel(task_id), status_event(task_id, fields["status"], fields["stage"], 0.0, None))
        if pipeline is None:
            pipe.execute()

    def get(self, task_id: str) -> TaskRecord | None:
        """The record, None if there is none; ``TaskCorrupt`` if it is stored but unreadable."""
        raw = cast("dict[bytes, bytes]", self.redis.hgetall(task_key(task_id)))
        return _decode(task_id, raw) if raw else None

    def correlation_id(self, task_id: str) -> str | None:
        value = cast("bytes | None", self.redis.hget(task_key(task_id), "correlation_id"))
        return value.decode() if value else None

    def audio_path(self, task_id: str) -> str | None:
        value = cast("bytes | None", self.redis.hget(task_key(task_id), "audio_path"))
        return value.decode() if value else None

    def status(self, task_id: str) -> TaskStatus | None:
        """The status, None if there is no record; ``TaskCorrupt`` if the stored status is not one."""
        value = cast("bytes | None", self.redis.hget(task_key(task_id), "status"))
        if not value:
            if self.redis.exists(task_key(task_id)):
                raise TaskCorrupt(task_id, "no status")
            return None
        try:
            return TaskStatus(value.decode())
        except ValueError:
            raise TaskCorrupt(task_id, "unknown status") from None

    def update(self, task_id: str, **fields: Any) -> bool:
        """Write fields unless the task is already terminal. Returns False if it was (or is gone)."""
        written = self._update(keys=[task_key(task_id), ACTIVE_SET], args=self._script_args(task_id, fields))
        if written != 1:
            return False
        self._publish_id(task_id)
        return True

    def finish(self, task_id: str, status: TaskStatus, **fields: Any) -> bool:
        """End the task with ``status``. True if this call ended it; False if it was already terminal
        (another finish or a cancel won) or is gone, and then nothing was written."""
        ended = self.update(task_id, status=status.value, stage=status.value, completed_at=now_iso(), **fields)
        if ended:
            self.clear_segments(task_id)  # the record has the transcript now
        return ended

    def add_segments(self, task_id: str, segments: list[dict[str, Any]]) -> bool:
        """Append live segments (``{id, start, end, text}``) and publish each on the task's channel.
        False, and nothing written, when the task is already terminal (cancelled, say) or gone."""
        if not segments:
            return True
        items = [json.dumps(segment) for segment in segments]
        events = [json.dumps({"task_id": task_id, "segment": segment}) for segment in segments]
        keys = [task_key(task_id), segments_key(task_id), events_channel(task_id)]
        return bool(self._add_segments(keys=keys, args=[SEGMENTS_TTL_S, *items, *events]) == 1)

    def segments(self, task_id: str, first: int = 0) -> list[dict[str, Any]]:
        """The live segments from index ``first`` on (none once the task has ended: see its record)."""
        raw = cast("list[bytes]", self.redis.lrange(segments_key(task_id), first, -1))
        return [json.loads(item) for item in raw]

    def clear_segments(self, task_id: str) -> None:
        """Drop the live segments (a new attempt starts them again; an ended task has its record)."""
        self.redis.delete(segments_key(task_id))

    def fail(self, task_id: str, error: TaskError, **fields: Any) -> bool:
        return self.finish(task_id, TaskStatus.FAILED, error=error, **fields)

    def force(self, task_id: str, **fields: Any) -> bool:
        """Write fields even on a terminal record (webhook delivery log, recovery), never on a deleted
        one. Returns False when the record is gone (nothing written)."""
        written = self._force(keys=[task_key(task_id), ACTIVE_SET], args=self._script_args(task_id, fields))
        if written != 1:
            return False
        self._publish_id(task_id)
        return True

    @staticmethod
    def _script_args(task_id: str, fields: dict[str, Any]) -> list[str]:
        status = fields.get("status")
        terminal = "" if status is None else ("1" if TaskStatus(status) in TERMINAL else "0")
        encoded = _encode({**fields, "updated_at": time.time()})
        return [task_id, terminal, *(x for pair in encoded.items() for x in pair)]

    def set_job_id(self, task_id: str, job_id: str) -> bool:
        """Remember the RQ job of the current attempt, unless the record is gone."""
        return bool(self._force(keys=[task_key(task_id), ACTIVE_SET], args=[task_id, "", "job_id", job_id]) == 1)

    def edit(self, task_id: str, **fields: Any) -> bool:
        """Write fields of an existing record (owner edits of a finished task). Returns False if the task
        is gone: a task deleted meanwhile is never recreated as a partial record (``force``'s script)."""
        return self.force(task_id, **fields)

    def hold_lease(self, task_id: str, worker: str, ttl_s: int) -> None:
        self.redis.set(lease_key(task_id), worker, ex=max(1, ttl_s))

    def release_lease(self, task_id: str) -> None:
        self.redis.delete(lease_key(task_id))

    def has_lease(self, task_id: str) -> bool:
        return bool(self.redis.exists(lease_key(task_id)))

    def last_update(self, task_id: str) -> float:
        raw = cast("bytes | None", self.redis.hget(task_key(task_id), "updated_at"))
        return float(raw) if raw else 0.0

    def incr_attempts(self, task_id: str) -> int | None:
        """Count one more attempt; None when the record is gone (a deleted task is not run)."""
        value = self._incr(keys=[task_key(task_id)], args=["attempts", 1])
        return None if value is None else int(value)

    def delete(self, task_id: str) -> bool:
        """Remove the record, its lease and its index entries in one step. True if a record existed."""
        keys = [task_key(task_id), lease_key(task_id), TASKS_INDEX, ACTIVE_SET, segments_key(task_id)]
        return bool(self._delete(keys=keys, args=[task_id, owner_index("")]))

    def active_ids(self) -> list[str]:
        return [x.decode() for x in cast("set[bytes]", self.redis.smembers(ACTIVE_SET))]

    def ids_older_than(self, cutoff_epoch: float) -> list[str]:
        """Ids submitted before the cutoff (a task cannot have finished before it was submitted)."""
        return [x.decode() for x in cast("list[bytes]", self.redis.zrangebyscore(TASKS_INDEX, 0, cutoff_epoch))]

    def completed_epoch(self, task_id: str) -> float | None:
        """When the task ended, None if it has not (or the stored time is unreadable)."""
        raw = cast("bytes | None", self.redis.hget(task_key(task_id), "completed_at"))
        if not raw:
            return None
        try:
            return datetime.fromisoformat(raw.decode().replace("Z", "+00:00")).timestamp()
        except ValueError:
            return None

    def recent_ids(self, limit: int = 50, owner: str | None = None) -> list[str]:
        """Newest first: one key's tasks, or every task when ``owner`` is None (admins)."""
        index = TASKS_INDEX if owner is None else owner_index(owner)
        return [x.decode() for x in cast("list[bytes]", self.redis.zrevrange(index, 0, limit - 1))]

    def _publish_id(self, task_id: str) -> None:
        fields = cast(
            "list[bytes | None]", self.redis.hmget(task_key(task_id), ["status", "stage", "progress", "error"])
        )
        status, stage, progress, error = fields
        if status is None:
            return
        event = status_event(
            task_id,
            status.decode(),
            stage.decode() if stage else None,
            float(progress or 0.0),
            json.loads(error) if error else None,
        )
        self.redis.publish(events_channel(task_id), event)
