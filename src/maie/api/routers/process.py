"""Submissions: ``POST /v1/process`` (streamed audio upload) and ``POST /v1/process_text``."""

from __future__ import annotations

from typing import Any

import anyio.from_thread
from fastapi import APIRouter, Request, Response
from pydantic import BaseModel, Field

from maie.api.deps import CallerDep, QueueDep, SettingsDep, StoreDep
from maie.api.errors import UNPARSABLE_JSON, error_responses
from maie.api.options import build_options, check_options, parse_features, parse_options
from maie.api.submission import accept_upload, submit_text
from maie.api.webhook_targets import check_destination
from maie.errors import ErrorCode
from maie.schemas import Accepted, Feature, TaskStatus

router = APIRouter(prefix="/v1", tags=["process"])


def multipart_body(fields: dict[str, dict[str, Any]]) -> dict[str, Any]:
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


SUBMIT_ERRORS = (
    ErrorCode.UNAUTHORIZED,
    ErrorCode.INVALID_FIELD,
    ErrorCode.QUEUE_FULL,
    ErrorCode.RATE_LIMITED,
    ErrorCode.SERVICE_UNAVAILABLE,
)
"""What any submission can be refused with: a bad option, the queue and rate limits, Redis down."""
TEMPLATE_ERRORS = (ErrorCode.TEMPLATE_NOT_FOUND, ErrorCode.TEMPLATE_INVALID)
UPLOAD_ERRORS = (
    ErrorCode.INVALID_MULTIPART,
    ErrorCode.UPLOAD_TIMEOUT,
    ErrorCode.UPLOAD_TOO_LARGE,
    ErrorCode.UNSUPPORTED_MEDIA_TYPE,
    ErrorCode.MISSING_FILE,
    ErrorCode.LANGUAGE_UNSUPPORTED,
    ErrorCode.AUDIO_TOO_MANY_CHANNELS,
    ErrorCode.BACKEND_UNAVAILABLE,
    ErrorCode.STORAGE_UNAVAILABLE,
    ErrorCode.INSUFFICIENT_STORAGE,
)
"""What an audio upload can be refused with besides ``SUBMIT_ERRORS``: the body, the file, the storage."""

PROCESS_FIELDS: dict[str, dict[str, Any]] = {
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
    responses=error_responses(*SUBMIT_ERRORS, *TEMPLATE_ERRORS, *UPLOAD_ERRORS, ErrorCode.FEATURE_UNAVAILABLE),
)
async def process(
    request: Request, response: Response, caller: CallerDep, settings: SettingsDep, store: StoreDep, queue: QueueDep
) -> Accepted:
    """Multipart form: ``file`` and option fields in any order. The file is streamed to disk as it
    arrives; fields sent before it are validated before any audio byte is stored, fields after it when
    the body ends (a refusal then removes the stored file)."""
    upload = await accept_upload(
        request, caller, settings, store, queue, lambda fields: parse_options(fields, settings)
    )
    response.headers.update(upload.headers)
    task_id = upload.task_id
    return Accepted(task_id=task_id, status=TaskStatus.PENDING, status_url=f"/v1/status/{task_id}")


class TextRequest(BaseModel):
    text: str = Field(min_length=1, max_length=2_000_000)
    features: list[str] = Field(default_factory=lambda: [Feature.CLEAN_TRANSCRIPT.value, Feature.SUMMARY.value])
    template_id: str | None = None
    callback_url: str | None = None


@router.post(
    "/process_text",
    status_code=202,
    response_model=Accepted,
    summary="Run the LLM stages on text",
    responses=error_responses(*SUBMIT_ERRORS, *TEMPLATE_ERRORS, ErrorCode.VALIDATION_ERROR, UNPARSABLE_JSON),
)
def process_text(
    body: TextRequest,
    request: Request,
    response: Response,
    caller: CallerDep,
    settings: SettingsDep,
    store: StoreDep,
    queue: QueueDep,
) -> Accepted:
    options = build_options(
        {
            "features": parse_features(body.features),
            "template_id": body.template_id,
            "text": body.text,
            "callback_url": body.callback_url,
        }
    )
    options = check_options(options, settings)
    if options.callback_url:
        # A sync route runs in a worker thread: resolve on the event loop, which stays free meanwhile.
        anyio.from_thread.run(check_destination, options.callback_url, settings)
    task_id, headers = submit_text(request, caller, settings, store, queue, options)
    response.headers.update(headers)
    return Accepted(task_id=task_id, status=TaskStatus.PENDING, status_url=f"/v1/status/{task_id}")
