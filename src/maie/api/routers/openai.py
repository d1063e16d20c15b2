"""``POST /v1/audio/transcriptions`` and ``/translations``: OpenAI-compatible, synchronous for the caller
(the whole result, or with ``stream=true`` OpenAI's SSE deltas as segments are decoded), run by the
workers (in the fast lane, so an interactive request never waits behind a backlog)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from rq import Queue

from maie.api.deps import CallerDep, QueueDep, SettingsDep, StoreDep
from maie.api.errors import Responses, openai_error_body, openai_error_responses
from maie.api.events import EventHub, EventStreamResponse
from maie.api.options import ASR_BACKENDS, build_options, check_options
from maie.api.routers.process import SUBMIT_ERRORS, UPLOAD_ERRORS, multipart_body
from maie.api.submission import accept_upload
from maie.api.transcription import delta_events, failure, wait_deadline, wait_for
from maie.config import Settings
from maie.errors import ErrorCode, MaieError
from maie.exports import MEDIA_TYPES, render_results
from maie.jobs.store import TaskStore
from maie.principals import Principal
from maie.schemas import Feature, TaskOptions, TaskResults, TaskStatus
from maie.schemas.http import Transcription, VerboseSegment, VerboseTranscription, VerboseWord

router = APIRouter(prefix="/v1/audio", tags=["openai"])

RESPONSE_FORMATS = ("json", "text", "srt", "vtt", "verbose_json")
KNOWN_FIELDS = {
    "model",
    "language",
    "prompt",
    "response_format",
    "temperature",
    "timestamp_granularities[]",
    "timestamp_granularities",
    "stream",
    "chunking_strategy",
    "include[]",
}


def _one(fields: dict[str, list[str]], name: str, default: str | None = None) -> str | None:
    values = fields.get(name) or []
    return values[-1].strip() if values and values[-1].strip() else default


STREAM_FORMATS = ("json", "text")
"""The formats a stream can stand for: it carries text (deltas, then the whole text), not timed cues."""


@dataclass(frozen=True)
class OpenAiRequest:
    options: TaskOptions
    response_format: str
    stream: bool


def _flag(fields: dict[str, list[str]], name: str) -> bool:
    value = (_one(fields, name) or "false").lower()
    if value not in ("true", "false", "1", "0"):
        raise MaieError(ErrorCode.INVALID_FIELD, f"{name}: expected true or false")
    return value in ("true", "1")


def options_from_openai(fields: dict[str, list[str]], task: str = "transcribe") -> OpenAiRequest:
    unknown = sorted(set(fields) - KNOWN_FIELDS)
    if unknown:
        raise MaieError(ErrorCode.INVALID_FIELD, f"{unknown[0]}: unknown field")
    response_format = _one(fields, "response_format", "json") or "json"
    if response_format not in RESPONSE_FORMATS:
        raise MaieError(ErrorCode.INVALID_FIELD, f"response_format: expected one of {', '.join(RESPONSE_FORMATS)}")
    stream = _flag(fields, "stream")
    if stream and response_format not in STREAM_FORMATS:
        raise MaieError(
            ErrorCode.INVALID_FIELD,
            f"stream: a stream carries text; use response_format {' or '.join(STREAM_FORMATS)}, or no stream",
        )
    raw_temperature = _one(fields, "temperature")
    temperature = None
    if raw_temperature is not None:
        try:
            temperature = float(raw_temperature)
            if not 0.0 <= temperature <= 1.0:
                raise ValueError
        except ValueError:
            raise MaieError(ErrorCode.INVALID_FIELD, "temperature: expected a number from 0 to 1") from None
    granularities = fields.get("timestamp_granularities[]", []) + fields.get("timestamp_granularities", [])
    for g in granularities:
        if g not in ("word", "segment"):
            raise MaieError(ErrorCode.INVALID_FIELD, "timestamp_granularities[]: expected word or segment")
    model = _one(fields, "model", "whisper-1")
    options = build_options(
        {
            "features": [Feature.RAW_TRANSCRIPT],
            "asr_backend": model if model in ASR_BACKENDS else None,  # any other name: the configured default
            "language": _one(fields, "language"),
            "initial_prompt": _one(fields, "prompt"),
            "word_timestamps": "word" in granularities,
            "temperature": temperature,
            "task": task,
        }
    )
    return OpenAiRequest(options, response_format, stream)


DECODER_FIELDS = ("seek", "tokens", "temperature", "avg_logprob", "compression_ratio", "no_speech_prob")
"""Per-segment values from the decoder: passed on when the backend recorded them, omitted otherwise."""


def verbose_json(results: TaskResults, duration: float | None, words: bool, task: str) -> VerboseTranscription:
    segments = results.segments or []
    return VerboseTranscription.model_validate(
        {
            "task": task,
            "language": results.language or "",
            "duration": duration or 0.0,
            "text": results.raw_transcript or "",
            "segments": [
                VerboseSegment(
                    id=i,
                    start=s.start,
                    end=s.end,
                    text=s.text,
                    **{name: getattr(s, name) for name in DECODER_FIELDS},
                    speaker=s.speaker or None,
                )
                for i, s in enumerate(segments)
            ],
            "words": [
                VerboseWord(word=w.word.strip(), start=w.start, end=w.end) for s in segments for w in s.words or []
            ]
            if words
            else None,
        }
    )


OPENAI_FIELDS: dict[str, dict[str, Any]] = {
    "model": {"type": "string", "description": "whisper-1 (or any name) = the default backend; or chunkformer."},
    "language": {"type": "string"},
    "prompt": {"type": "string", "maxLength": 2000},
    "response_format": {"type": "string", "enum": list(RESPONSE_FORMATS)},
    "temperature": {"type": "number", "minimum": 0, "maximum": 1},
    "timestamp_granularities[]": {"type": "array", "items": {"type": "string", "enum": ["word", "segment"]}},
    "stream": {
        "type": "boolean",
        "description": "Server-Sent Events: transcript.text.delta per segment, then transcript.text.done "
        "(response_format json or text).",
    },
}


async def _run(
    request: Request,
    caller: Principal,
    settings: Settings,
    store: TaskStore,
    queue: Queue,
    task: str,
) -> Response:
    parsed: list[OpenAiRequest] = []

    def parse_fields(fields: dict[str, list[str]]) -> TaskOptions:
        asked = options_from_openai(fields, task)
        parsed.append(asked)  # called again with the whole form when fields follow the file: the last wins
        return check_options(asked.options, settings)

    upload = await accept_upload(request, caller, settings, store, queue, parse_fields, priority=True)
    task_id, options = upload.task_id, upload.options
    asked = parsed[-1]
    deadline = wait_deadline(settings, upload.duration_s)
    headers = {"X-MAIE-Task-Id": task_id, **upload.headers}
    if asked.stream:
        hub: EventHub = request.app.state.events
        return EventStreamResponse(delta_events(hub, queue, store, task_id, deadline), headers=headers)
    record = await wait_for(queue, store, task_id, deadline)
    if record.status != TaskStatus.COMPLETE:
        code, status, message = failure(record)
        return JSONResponse(openai_error_body(code, message, status), status_code=status, headers=headers)
    results = record.results or TaskResults()
    text = results.raw_transcript or ""
    fmt = asked.response_format
    if fmt == "json":
        return JSONResponse(Transcription(text=text).model_dump(), headers=headers)
    if fmt == "text":
        return PlainTextResponse(text, headers=headers)  # exactly json's text
    if fmt == "verbose_json":
        duration_s = record.metrics.input_duration_s if record.metrics else None
        body = verbose_json(results, duration_s, options.word_timestamps, task).model_dump()
        return JSONResponse(body, headers=headers)
    segments = [s.model_dump() for s in results.segments or []]
    body_text, media_type = render_results({"segments": segments}, fmt)
    return PlainTextResponse(body_text, media_type=media_type, headers=headers)


def _responses() -> Responses:
    """The OpenAI routes' answers: a JSON body (json, verbose_json) or text (text, srt, vtt); OpenAI errors."""
    text = {MEDIA_TYPES[fmt].split(";")[0]: {"schema": {"type": "string"}} for fmt in ("txt", "srt", "vtt")}
    text["text/event-stream"] = {"schema": {"type": "string"}}  # stream=true: transcript.text.delta/done events
    return {
        200: {
            "model": Transcription | VerboseTranscription,
            "description": "By ``response_format``: ``json``, ``verbose_json``, or text (``text``, ``srt``, ``vtt``); "
            "with ``stream=true``, Server-Sent Events",
            "content": text,
        },
        **openai_error_responses(
            *SUBMIT_ERRORS,
            *UPLOAD_ERRORS,
            ErrorCode.TRANSLATION_UNSUPPORTED,
            ErrorCode.CANCELLED,
            ErrorCode.TIMEOUT,
            failures=(
                ErrorCode.AUDIO_DECODE_ERROR,
                ErrorCode.AUDIO_EMPTY,
                ErrorCode.AUDIO_TOO_LONG,
                ErrorCode.ASR_FAILED,
                ErrorCode.MODEL_UNAVAILABLE,
                ErrorCode.TIMEOUT,
            ),
        ),
    }


@router.post(
    "/transcriptions",
    summary="OpenAI-compatible transcription (synchronous; stream=true: SSE text deltas as it is decoded)",
    openapi_extra=multipart_body(OPENAI_FIELDS),
    response_class=Response,
    responses=_responses(),
)
async def transcriptions(
    request: Request, caller: CallerDep, settings: SettingsDep, store: StoreDep, queue: QueueDep
) -> Response:
    return await _run(request, caller, settings, store, queue, "transcribe")


@router.post(
    "/translations",
    summary="OpenAI-compatible translation to English (synchronous; needs a multilingual Whisper model)",
    openapi_extra=multipart_body({k: v for k, v in OPENAI_FIELDS.items() if k != "language"}),
    response_class=Response,
    responses=_responses(),
)
async def translations(
    request: Request, caller: CallerDep, settings: SettingsDep, store: StoreDep, queue: QueueDep
) -> Response:
    return await _run(request, caller, settings, store, queue, "translate")
