"""Taking in a task: fair admission (queue capacity per key), disk check, streamed upload, probe, submit.

The one place both ``/v1/process`` and the OpenAI endpoints go through, so they admit, validate and
queue work the same way.
"""

from __future__ import annotations

import asyncio
import shutil
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, BinaryIO, cast

import av
from av.container import InputContainer
from rq import Queue
from rq.registry import StartedJobRegistry
from starlette.requests import Request

from maie.api.audit import audit
from maie.api.ratelimit import RateLimit, rate_key
from maie.api.uploads import check_content_length, receive_form
from maie.api.webhook_targets import check_destination
from maie.config import Settings
from maie.errors import ErrorCode, MaieError
from maie.jobs import queue as jobs
from maie.jobs.store import PREFIX, TaskStore, task_key
from maie.pipeline.channels import check_channels
from maie.principals import Principal
from maie.schemas import TaskMetrics, TaskOptions
from maie.storage import Storage, StoredRef, storage_for

RESERVATIONS_KEY = f"{PREFIX}:uploads-in-flight"
"""Uploads under way (all keys), by start time: they count against the queue depth before their task exists."""
RESERVATION_MAX_AGE_S = 3600.0
"""A reservation older than this belongs to an upload that died with its API process."""


def load_key(owner: str) -> str:
    """One key's share in use: its uploads in flight (score = start time) and its submitted, not yet
    finished tasks (score = minus the submit time)."""
    return f"{PREFIX}:load-of:{owner}"


# The whole admission in one script, so concurrent uploads cannot all pass the checks, and one round trip:
# the key's rate limit (a moving window of hit times), then its share of the queue, then the queue depth.
# Returns {verdict, rate hits left, rate window reset time (a string: Lua numbers become integers)}:
# verdict 0 admitted, 1 queue full (count = depth), 2 the key's share is used up, 3 rate limited.
_ADMIT = """
local now = tonumber(ARGV[2])
local max_age = tonumber(ARGV[3])
local n_lists = tonumber(ARGV[7])
local rate_amount = tonumber(ARGV[8])
local rate_window = tonumber(ARGV[9])
redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', now - rate_window)
local hits = redis.call('ZCARD', KEYS[3])
if hits >= rate_amount then
  local oldest = redis.call('ZRANGE', KEYS[3], 0, 0, 'WITHSCORES')[2]
  return {3, 0, tostring(tonumber(oldest) + rate_window)}
end
redis.call('ZADD', KEYS[3], now, ARGV[1])
redis.call('EXPIRE', KEYS[3], math.ceil(rate_window) + 1)
local left = rate_amount - hits - 1
local reset = tostring(tonumber(redis.call('ZRANGE', KEYS[3], 0, 0, 'WITHSCORES')[2]) + rate_window)
redis.call('ZREMRANGEBYSCORE', KEYS[1], 0, now - max_age)
local members = redis.call('ZRANGE', KEYS[2], 0, -1, 'WITHSCORES')
local count = 0
for i = 1, #members, 2 do
  local member, score = members[i], tonumber(members[i + 1])
  local keep = true
  if score < 0 then
    local status = redis.call('HGET', ARGV[6] .. member, 'status')
    keep = status and status ~= 'COMPLETE' and status ~= 'FAILED' and status ~= 'CANCELLED'
  elseif score < now - max_age then
    keep = false
  end
  if keep then count = count + 1 else redis.call('ZREM', KEYS[2], member) end
end
if count >= tonumber(ARGV[5]) then return {2, left, reset} end
local depth = redis.call('ZCARD', KEYS[1])
for i = 4, #KEYS do
  if i - 3 <= n_lists then depth = depth + redis.call('LLEN', KEYS[i])
  else depth = depth + redis.call('ZCARD', KEYS[i]) end
end
if depth >= tonumber(ARGV[4]) then return {1, left, reset} end
redis.call('ZADD', KEYS[1], now, ARGV[1])
redis.call('ZADD', KEYS[2], now, ARGV[1])
return {0, left, reset}
"""


def _queue_keys(queue: Queue) -> tuple[list[str], list[str]]:
    queues = jobs.worker_queues(queue.connection)
    return [q.key for q in queues], [StartedJobRegistry(queue=q).key for q in queues]


def reserve(queue: Queue, settings: Settings, owner: str, reservation: str) -> dict[str, str]:
    """Count a submission against the key's rate limit and take a queue slot for ``reservation`` (the
    future task id), in one round trip. Returns the RateLimit-* headers. Refuses with 429 RATE_LIMITED
    (MAIE_RATE_LIMIT), or QUEUE_FULL: the whole queue (queued + running + uploads in flight) is at
    MAIE_MAX_QUEUE_DEPTH, or this key holds its share (MAIE_MAX_QUEUE_DEPTH_PER_KEY). Release with
    ``release`` (failed) or submit with ``submit`` (which ends the reservation)."""
    r = queue.connection
    rate = RateLimit.from_setting(settings.rate_limit)
    lists, registries = _queue_keys(queue)
    verdict, left, reset_at = r.register_script(_ADMIT)(
        keys=[RESERVATIONS_KEY, load_key(owner), rate_key(owner), *lists, *registries],
        args=[
            reservation,
            time.time(),
            RESERVATION_MAX_AGE_S,
            settings.max_queue_depth,
            settings.queue_share_per_key,
            task_key(""),
            len(lists),
            rate.amount,
            rate.window_s,
        ],
    )
    if verdict == 3:
        raise rate.refusal(float(reset_at))
    headers = rate.headers(int(left), float(reset_at))
    if verdict == 1:
        raise MaieError(
            ErrorCode.QUEUE_FULL,
            f"the queue is full ({settings.max_queue_depth} tasks); retry later",
            headers={**headers, "Retry-After": "30"},
        )
    if verdict == 2:
        raise MaieError(
            ErrorCode.QUEUE_FULL,
            f"this key holds its share of the queue ({settings.queue_share_per_key} tasks and uploads in "
            "flight); retry when one of them has finished",
            headers={**headers, "Retry-After": "30"},
        )
    return headers


def release(queue: Queue, owner: str, reservation: str) -> None:
    """The upload failed: its slot is free again."""
    pipe = queue.connection.pipeline(transaction=False)
    pipe.zrem(RESERVATIONS_KEY, reservation)
    pipe.zrem(load_key(owner), reservation)
    pipe.execute()


@dataclass(frozen=True)
class Upload:
    """An accepted upload: its task, the options it was queued with, the declared duration, and the
    RateLimit-* headers for the answer."""

    task_id: str
    options: TaskOptions
    duration_s: float | None
    headers: dict[str, str]


def check_disk(settings: Settings, incoming_bytes: int) -> None:
    if not storage_for(settings).local:
        return  # the upload streams to S3: this machine's disk is not involved
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(settings.data_dir).free
    if free - incoming_bytes < settings.disk_floor_mb * 1024 * 1024:
        raise MaieError(ErrorCode.INSUFFICIENT_STORAGE, "not enough free disk space to accept this upload")


def check_template(request: Request, caller: Principal, options: TaskOptions) -> None:
    """The template must exist for the caller (TEMPLATE_NOT_FOUND otherwise, also for another key's);
    the worker then uses exactly the one found here."""
    if options.template_id is not None:
        options.template_scope = request.app.state.templates.get(options.template_id, caller).scope


def probe_stored(storage: Storage, ref: StoredRef, **checks: Any) -> float | None:
    """``probe_duration`` on a stored upload: the file itself, or (S3) a reader doing ranged GETs of
    256 KiB, so PyAV fetches only the bytes it looks at (an MP4 index at the end included)."""
    with storage.source(ref) as source:
        return probe_duration(source, **checks)


HEADER_PROBE: dict[str, dict[str, str]] = {"wav": {"probesize": "32", "analyzeduration": "0"}}
"""FFmpeg options for containers whose header holds the format, channels and length: FFmpeg's default
probe reads and decodes up to 5 s of a WAV's samples (6-11 ms per WAV here, against 0.3-0.5 ms with
these; same duration and channels on every reference recording)."""


def probe_duration(
    source: Path | BinaryIO,
    *,
    by_channel: bool = False,
    max_channels: int | None = None,
    sniffed: str | None = None,
) -> float | None:
    """Declared duration from the container header (cheap: no decoding). Non-audio is refused here,
    and so is a header declaring more channels than can be decoded (or diarized by channel).
    ``sniffed``: the container sniffed from the upload's first bytes, when known (see ``HEADER_PROBE``)."""
    try:
        # A path, or a reader opened for reading (mode "rb" or none): PyAV opens it as an input
        # container, but its stub types a file argument as input-or-output.
        opened = av.open(
            str(source) if isinstance(source, Path) else source,
            metadata_errors="ignore",
            options=HEADER_PROBE.get(sniffed or "", {}),
        )
        with cast("InputContainer", opened) as container:
            if not container.streams.audio:
                raise MaieError(ErrorCode.UNSUPPORTED_MEDIA_TYPE, "the file has no audio stream")
            channels = container.streams.audio[0].codec_context.channels or 1
            check_channels(channels, by_channel=by_channel, max_channels=max_channels)
            if container.duration is not None:
                return container.duration / 1_000_000
            stream = container.streams.audio[0]
            if stream.duration is not None and stream.time_base is not None:
                return float(stream.duration * stream.time_base)
            return None
    except av.error.FFmpegError as exc:
        # strerror only: the exception's text names the stored file's path, which is the server's business
        reason = exc.strerror or type(exc).__name__
        raise MaieError(ErrorCode.UNSUPPORTED_MEDIA_TYPE, f"not a readable audio file ({reason})") from None


def submit(
    store: TaskStore,
    queue: Queue,
    settings: Settings,
    task_id: str,
    options: TaskOptions,
    *,
    owner: str,
    audio_path: StoredRef | None = None,
    filename: str | None = None,
    duration_s: float | None = None,
    priority: bool = False,
) -> None:
    """Write the record, queue its job and turn the reservation into a held slot, in one transaction
    (one round trip): a worker can never see the job before the record, and no crash leaves a record
    without a job or a slot counted twice. The task then counts in the queue itself, and against its
    key until it finishes."""
    fast = priority or (duration_s is not None and duration_s < settings.fast_lane_max_s)
    pipe = queue.connection.pipeline(transaction=True)
    job = jobs.enqueue(queue, task_id, budget_s=jobs.job_budget_s(settings, duration_s), priority=fast, pipeline=pipe)
    store.create(
        task_id,
        owner=owner,
        options=options.model_dump(mode="json", exclude_none=True),
        filename=filename,
        audio_path=audio_path,
        metrics=TaskMetrics(declared_duration_s=round(duration_s, 3)) if duration_s is not None else None,
        job_id=job.id,
        pipeline=pipe,
    )
    pipe.zrem(RESERVATIONS_KEY, task_id)
    pipe.zadd(load_key(owner), {task_id: -time.time()})
    pipe.execute()


def submit_text(
    request: Request, caller: Principal, settings: Settings, store: TaskStore, queue: Queue, options: TaskOptions
) -> tuple[str, dict[str, str]]:
    """``/v1/process_text``: the same admission as an upload, then submit (no audio). Returns the task
    id and the RateLimit-* headers."""
    check_template(request, caller, options)
    task_id = str(uuid.uuid4())
    headers = reserve(queue, settings, caller.name, task_id)
    try:
        submit(store, queue, settings, task_id, options, owner=caller.name)
    except BaseException:
        release(queue, caller.name, task_id)
        store.delete(task_id)
        raise
    audit(request, caller, "submit", task_id, "ok")
    return task_id, headers


async def accept_upload(
    request: Request,
    caller: Principal,
    settings: Settings,
    store: TaskStore,
    queue: Queue,
    parse_fields: Callable[[dict[str, list[str]]], TaskOptions],
    *,
    priority: bool = False,
) -> Upload:
    """Stream a multipart upload to storage (``data/audio/<task_id>/`` or the S3 bucket) and queue its task.

    The cheap checks (size, disk, the key's and the queue's capacity, then ``parse_fields`` on the option
    fields) run before any file byte is read when the fields come first; fields after the file are
    checked when the body ends (``parse_fields`` then sees the whole form, and its last result is used).
    Whatever fails, nothing is left behind. Redis round trips: one for the admission (``reserve``), one
    for the submission (``submit``).
    """
    check_content_length(request, settings.max_upload_bytes)
    check_disk(settings, int(request.headers.get("content-length") or 0))
    task_id = str(uuid.uuid4())
    headers = await asyncio.to_thread(reserve, queue, settings, caller.name, task_id)
    try:
        options, duration = await _receive_and_submit(
            request, caller, settings, store, queue, parse_fields, task_id, priority
        )
    except BaseException:
        await asyncio.to_thread(release, queue, caller.name, task_id)
        raise
    return Upload(task_id, options, duration, headers)


async def _receive_and_submit(
    request: Request,
    caller: Principal,
    settings: Settings,
    store: TaskStore,
    queue: Queue,
    parse_fields: Callable[[dict[str, list[str]]], TaskOptions],
    task_id: str,
    priority: bool,
) -> tuple[TaskOptions, float | None]:
    storage = storage_for(settings)
    options: TaskOptions | None = None

    async def check_fields(fields: dict[str, list[str]]) -> None:
        nonlocal options
        parsed = parse_fields(fields)
        check_template(request, caller, parsed)
        if parsed.callback_url:
            await check_destination(parsed.callback_url, settings)
        options = parsed

    form = await receive_form(
        request,
        open_sink=partial(storage.open_upload, task_id),
        max_file_bytes=settings.max_upload_bytes,
        before_file=check_fields,
    )
    try:
        assert options is not None and form.file is not None
        stored, opts = form.file, options  # narrowed names: a closure does not see the assert

        def probe_and_submit() -> float | None:  # one thread hop for both: each costs a wait for a thread
            duration = probe_stored(
                storage,
                stored.ref,
                by_channel=opts.diarize_by_channel,
                max_channels=settings.diarization.max_channels,
                sniffed=stored.container,
            )
            submit(
                store,
                queue,
                settings,
                task_id,
                opts,
                owner=caller.name,
                audio_path=stored.ref,
                filename=stored.filename,
                duration_s=duration,
                priority=priority,
            )
            return duration

        duration = await asyncio.to_thread(probe_and_submit)
    except BaseException:
        await asyncio.to_thread(storage.delete, task_id)
        await asyncio.to_thread(store.delete, task_id)
        raise
    audit(request, caller, "submit", task_id, "ok")
    return opts, duration
