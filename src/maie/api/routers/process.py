"""Submissions: ``POST /v1/process`` (streamed audio upload) and ``POST /v1/process_text``."""

from __future__ import annotations

import asyncio
import shutil
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import av
from fastapi import APIRouter, Request
from pydantic import BaseModel, Field

from maie.api.deps import QueueDep, SettingsDep, StoreDep
from maie.api.options import build_options, check_options, parse_features, parse_options
from maie.api.ratelimit import RateLimitDep
from maie.api.uploads import check_content_length, receive_form
from maie.config import Settings
from maie.errors import ErrorCode, MaieError
from maie.jobs import queue as jobs
from maie.jobs.store import TaskStore
from maie.schemas import Accepted, Feature, TaskOptions, TaskStatus

router = APIRouter(prefix="/v1", tags=["process"])


RESERVATIONS_KEY = "maie:uploads-in-flight"
"""Uploads under way, by start time: they count against the queue depth before their task exists."""
RESERVATION_MAX_AGE_S = 3600.0


def check_capacity(queue: jobs.Queue, settings: Settings, reservation: str | None = None) -> None:
    """429 when queued + running + uploads in flight reach MAIE_MAX_QUEUE_DEPTH.

    With ``reservation`` the caller takes a slot atomically (concurrent uploads cannot all pass the
    check at once) and must release it with ``release_capacity``.
    """
    r = queue.connection
    in_flight = 0
    if reservation is not None:
        now = time.time()
        pipe = r.pipeline()
        pipe.zremrangebyscore(RESERVATIONS_KEY, 0, now - RESERVATION_MAX_AGE_S)  # uploads that died with their API
        pipe.zadd(RESERVATIONS_KEY, {reservation: now})
        pipe.zcard(RESERVATIONS_KEY)
        in_flight = pipe.execute()[-1] - 1
    if jobs.depth(queue) + in_flight >= settings.max_queue_depth:
        if reservation is not None:
            release_capacity(queue, reservation)
        raise MaieError(
            ErrorCode.QUEUE_FULL,
            f"the queue is full ({settings.max_queue_depth} tasks); retry later",
            headers={"Retry-After": "30"},
        )


def release_capacity(queue: jobs.Queue, reservation: str) -> None:
    queue.connection.zrem(RESERVATIONS_KEY, reservation)


def check_disk(settings: Settings, incoming_bytes: int) -> None:
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(settings.data_dir).free
    if free - incoming_bytes < settings.disk_floor_mb * 1024 * 1024:
        raise MaieError(ErrorCode.INSUFFICIENT_STORAGE, "not enough free disk space to accept this upload")


def check_template(request: Request, template_id: str | None) -> None:
    if template_id is not None:
        request.app.state.templates.get(template_id)  # raises TEMPLATE_NOT_FOUND


def probe_duration(path: Path) -> float | None:
    """Declared duration from the container header (cheap: no decoding). Non-audio is refused here."""
    try:
        with av.open(str(path), metadata_errors="ignore") as container:
            if not container.streams.audio:
                raise MaieError(ErrorCode.UNSUPPORTED_MEDIA_TYPE, "the file has no audio stream")
            if container.duration is not None:
                return container.duration / 1_000_000
            stream = container.streams.audio[0]
            if stream.duration is not None and stream.time_base is not None:
                return float(stream.duration * stream.time_base)
            return None
    except av.error.FFmpegError as exc:
        raise MaieError(ErrorCode.UNSUPPORTED_MEDIA_TYPE, f"not a readable audio file: {exc}") from None


def submit(
    store: TaskStore,
    queue: jobs.Queue,
    settings: Settings,
    task_id: str,
    options: TaskOptions,
    *,
    audio_path: Path | None = None,
    filename: str | None = None,
    duration_s: float | None = None,
) -> None:
    store.create(
        task_id,
        options=options.model_dump(mode="json", exclude_none=True),
        filename=filename,
        audio_path=str(audio_path) if audio_path else None,
    )
    if duration_s is not None:
        store.update(task_id, metrics={"declared_duration_s": round(duration_s, 3)})
    jobs.enqueue(queue, task_id, timeout_s=jobs.job_timeout_s(settings, duration_s))


async def accept_upload(
    request: Request,
    settings: Settings,
    store: TaskStore,
    queue: jobs.Queue,
    parse_fields: Callable[[dict[str, list[str]]], TaskOptions],
) -> tuple[str, TaskOptions, float | None]:
    """Stream a multipart upload to ``data/audio/<task_id>/`` and queue its task.

    The cheap checks (size, capacity, disk, then ``parse_fields`` on the option fields) run before any
    file byte is read when the fields come first. Whatever fails, nothing is left behind.
    """
    check_content_length(request, settings.max_upload_bytes)
    check_disk(settings, int(request.headers.get("content-length") or 0))
    task_id = str(uuid.uuid4())
    await asyncio.to_thread(check_capacity, queue, settings, task_id)
    try:
        return await _receive_and_submit(request, settings, store, queue, parse_fields, task_id)
    finally:
        await asyncio.to_thread(release_capacity, queue, task_id)


async def _receive_and_submit(
    request: Request,
    settings: Settings,
    store: TaskStore,
    queue: jobs.Queue,
    parse_fields: Callable[[dict[str, list[str]]], TaskOptions],
    task_id: str,
) -> tuple[str, TaskOptions, float | None]:
    task_dir = settings.audio_dir / task_id
    options: TaskOptions | None = None

    async def before_file(fields: dict[str, list[str]]) -> None:
        nonlocal options
        options = parse_fields(fields)
        check_template(request, options.template_id)

    form = await receive_form(
        request, dest_dir=task_dir, max_file_bytes=settings.max_upload_bytes, before_file=before_file
    )
    try:
        assert options is not None and form.file is not None
        duration = await asyncio.to_thread(probe_duration, form.file.path)
        await asyncio.to_thread(
            submit,
            store,
            queue,
            settings,
            task_id,
            options,
            audio_path=form.file.path,
            filename=form.file.filename,
            duration_s=duration,
        )
    except BaseException:
        shutil.rmtree(task_dir, ignore_errors=True)
        await asyncio.to_thread(store.delete, task_id)
        raise
    return task_id, options, duration


def multipart_body(fields: dict[str, dict]) -> dict:
    """OpenAPI for a multipart body we parse ourselves (so /docs and client generators see the fields)."""
    return {
        "requestBody": {
            "required": True,
            "content": {
                "multipart/form-data": {
                    "schema": {
                        "type": "object",
                        "required": ["file"],
                        "properties": {**fields, "file": {"type": "string", "format": "binary"}},
                    },
                    "encoding": {"features": {"style": "form", "explode": True}},
                }
            },
        }
    }


PROCESS_FIELDS: dict[str, dict] = {
    "features": {
        "type": "array",
        "items": {"type": "string", "enum": [f.value for f in Feature]},
        "description": "Repeat the field or send a comma list. Default: raw_transcript.",
    },
    "template_id": {"type": "string", "description": "Summary template (default: MAIE_DEFAULT_TEMPLATE_ID)."},
    "asr_backend": {"type": "string", "enum": ["whisper", "chunkformer"]},
    "language": {"type": "string", "description": "Language code (en, vi...); default: detect."},
    "initial_prompt": {"type": "string", "maxLength": 2000},
    "hotwords": {"type": "string", "maxLength": 2000},
    "word_timestamps": {"type": "boolean"},
    "enable_vad": {"type": "boolean"},
    "vad_threshold": {"type": "number", "minimum": 0, "maximum": 1},
    "enable_diarization": {"type": "boolean"},
    "diarize_by_channel": {"type": "boolean"},
    "min_speakers": {"type": "integer", "minimum": 1, "maximum": 32},
    "max_speakers": {"type": "integer", "minimum": 1, "maximum": 32},
    "callback_url": {"type": "string", "format": "uri", "description": "Webhook on a terminal state."},
}


@router.post(
    "/process",
    status_code=202,
    response_model=Accepted,
    summary="Upload audio and start a task",
    openapi_extra=multipart_body(PROCESS_FIELDS),
)
async def process(
    request: Request, _: RateLimitDep, settings: SettingsDep, store: StoreDep, queue: QueueDep
) -> Accepted:
    """Multipart form: option fields first, then ``file``. The file is streamed to disk as it arrives;
    fields sent before the file are validated before any audio byte is read."""
    task_id, _options, _duration = await accept_upload(
        request, settings, store, queue, lambda fields: parse_options(fields, settings)
    )
    return Accepted(task_id=task_id, status=TaskStatus.PENDING, status_url=f"/v1/status/{task_id}")


class TextRequest(BaseModel):
    text: str = Field(min_length=1, max_length=2_000_000)
    features: list[str] = Field(default_factory=lambda: [Feature.CLEAN_TRANSCRIPT.value, Feature.SUMMARY.value])
    template_id: str | None = None
    callback_url: str | None = None


@router.post("/process_text", status_code=202, response_model=Accepted, summary="Run the LLM stages on text")
def process_text(
    body: TextRequest, request: Request, _: RateLimitDep, settings: SettingsDep, store: StoreDep, queue: QueueDep
) -> Accepted:
    check_capacity(queue, settings)
    options = build_options(
        {
            "features": parse_features(body.features),
            "template_id": body.template_id,
            "text": body.text,
            "callback_url": body.callback_url,
        }
    )
    options = check_options(options, settings)
    check_template(request, options.template_id)
    task_id = str(uuid.uuid4())
    submit(store, queue, settings, task_id, options)
    return Accepted(task_id=task_id, status=TaskStatus.PENDING, status_url=f"/v1/status/{task_id}")
