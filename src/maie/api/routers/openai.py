"""``POST /v1/audio/transcriptions``: OpenAI-compatible, synchronous for the caller, run by the workers."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response

from maie.api.deps import QueueDep, SettingsDep, StoreDep
from maie.api.options import ASR_BACKENDS, build_options, check_options
from maie.api.ratelimit import RateLimitDep
from maie.api.routers.process import accept_upload, multipart_body
from maie.errors import ErrorCode, MaieError
from maie.exports import render_results
from maie.jobs import queue as jobs
from maie.schemas import Feature, TaskOptions, TaskStatus

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


def options_from_openai(fields: dict[str, list[str]]) -> tuple[TaskOptions, str]:
    unknown = sorted(set(fields) - KNOWN_FIELDS)
    if unknown:
        raise MaieError(ErrorCode.INVALID_FIELD, f"{unknown[0]}: unknown field")
    response_format = _one(fields, "response_format", "json")
    if response_format not in RESPONSE_FORMATS:
        raise MaieError(ErrorCode.INVALID_FIELD, f"response_format: expected one of {', '.join(RESPONSE_FORMATS)}")
    if _one(fields, "stream") in ("true", "True", "1"):
        raise MaieError(ErrorCode.INVALID_FIELD, "stream: streaming transcription is not supported")
    temperature = _one(fields, "temperature")
    if temperature is not None:
        try:
            if not 0.0 <= float(temperature) <= 1.0:
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
        }
    )
    return options, response_format or "json"


def verbose_json(results: dict[str, Any], duration: float | None, words: bool) -> dict[str, Any]:
    segments = [
        {
            "id": i,
            "seek": 0,
            "start": s["start"],
            "end": s["end"],
            "text": s["text"],
            "tokens": [],
            "temperature": 0.0,
            "avg_logprob": 0.0,
            "compression_ratio": 0.0,
            "no_speech_prob": 0.0,
            **({"speaker": s["speaker"]} if s.get("speaker") else {}),
        }
        for i, s in enumerate(results.get("segments", []))
    ]
    out: dict[str, Any] = {
        "task": "transcribe",
        "language": results.get("language") or "",
        "duration": duration or 0.0,
        "text": results.get("raw_transcript", ""),
        "segments": segments,
    }
    if words:
        out["words"] = [
            {"word": w["word"].strip(), "start": w["start"], "end": w["end"]}
            for s in results.get("segments", [])
            for w in s.get("words") or []
        ]
    return out


OPENAI_FIELDS: dict[str, dict] = {
    "model": {"type": "string", "description": "whisper-1 (or any name) = the default backend; or chunkformer."},
    "language": {"type": "string"},
    "prompt": {"type": "string", "maxLength": 2000},
    "response_format": {"type": "string", "enum": list(RESPONSE_FORMATS)},
    "temperature": {"type": "number", "minimum": 0, "maximum": 1},
    "timestamp_granularities[]": {"type": "array", "items": {"type": "string", "enum": ["word", "segment"]}},
}


@router.post(
    "/transcriptions",
    summary="OpenAI-compatible transcription (synchronous)",
    openapi_extra=multipart_body(OPENAI_FIELDS),
)
async def transcriptions(
    request: Request, _: RateLimitDep, settings: SettingsDep, store: StoreDep, queue: QueueDep
) -> Response:
    formats: list[str] = []

    def parse_fields(fields: dict[str, list[str]]) -> TaskOptions:
        options, fmt = options_from_openai(fields)
        formats.append(fmt)
        return check_options(options, settings)

    task_id, options, duration = await accept_upload(request, settings, store, queue, parse_fields)
    fmt = formats[0]
    deadline = time.monotonic() + jobs.job_timeout_s(settings, duration) + 600
    try:
        while True:
            record = await asyncio.to_thread(store.get, task_id)
            if record is None or record.status == TaskStatus.CANCELLED:
                raise MaieError(ErrorCode.CANCELLED, "the transcription was cancelled")
            if record.status.terminal:
                break
            if time.monotonic() > deadline:
                raise MaieError(ErrorCode.TIMEOUT, "the transcription did not finish in time")
            await asyncio.sleep(0.2)
    except asyncio.CancelledError:
        # The caller went away: nobody will read this result, so free the worker.
        await asyncio.to_thread(jobs.cancel, queue, task_id)
        await asyncio.to_thread(store.finish, task_id, TaskStatus.CANCELLED)
        raise
    headers = {"X-MAIE-Task-Id": task_id}
    if record.status == TaskStatus.FAILED:
        error = record.error
        code = ErrorCode(error.code) if error and error.code in ErrorCode.__members__ else ErrorCode.ASR_FAILED
        status = 422 if code.name.startswith("AUDIO_") else 500 if code != ErrorCode.TIMEOUT else 504
        return JSONResponse(
            {"detail": error.message if error else "failed", "code": code.value}, status_code=status, headers=headers
        )
    results = record.results or {}
    if fmt == "json":
        return JSONResponse({"text": results.get("raw_transcript", "")}, headers=headers)
    if fmt == "verbose_json":
        duration_s = (record.metrics or {}).get("input_duration_s")
        return JSONResponse(verbose_json(results, duration_s, options.word_timestamps), headers=headers)
    body, media_type = render_results({"segments": results.get("segments", [])}, fmt if fmt != "text" else "txt")
    return PlainTextResponse(body, media_type=media_type, headers=headers)
