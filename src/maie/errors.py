"""The one catalogue of error codes: HTTP errors for clients and failure codes for tasks."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from enum import StrEnum


class ErrorCode(StrEnum):
    # request errors (HTTP)
    UNAUTHORIZED = "UNAUTHORIZED"
    TASK_NOT_FOUND = "TASK_NOT_FOUND"
    TEMPLATE_NOT_FOUND = "TEMPLATE_NOT_FOUND"
    NOT_FOUND = "NOT_FOUND"
    METHOD_NOT_ALLOWED = "METHOD_NOT_ALLOWED"
    UPLOAD_TOO_LARGE = "UPLOAD_TOO_LARGE"
    UNSUPPORTED_MEDIA_TYPE = "UNSUPPORTED_MEDIA_TYPE"
    INVALID_MULTIPART = "INVALID_MULTIPART"
    MISSING_FILE = "MISSING_FILE"
    INVALID_FIELD = "INVALID_FIELD"
    VALIDATION_ERROR = "VALIDATION_ERROR"
    TEMPLATE_INVALID = "TEMPLATE_INVALID"
    TEMPLATE_READ_ONLY = "TEMPLATE_READ_ONLY"
    FORBIDDEN = "FORBIDDEN"
    TEMPLATE_EXISTS = "TEMPLATE_EXISTS"
    TASK_NOT_READY = "TASK_NOT_READY"
    RANGE_NOT_SATISFIABLE = "RANGE_NOT_SATISFIABLE"
    QUEUE_FULL = "QUEUE_FULL"
    RATE_LIMITED = "RATE_LIMITED"
    INSUFFICIENT_STORAGE = "INSUFFICIENT_STORAGE"
    STORAGE_UNAVAILABLE = "STORAGE_UNAVAILABLE"
    BACKEND_UNAVAILABLE = "BACKEND_UNAVAILABLE"
    FEATURE_UNAVAILABLE = "FEATURE_UNAVAILABLE"
    LANGUAGE_UNSUPPORTED = "LANGUAGE_UNSUPPORTED"
    TRANSLATION_UNSUPPORTED = "TRANSLATION_UNSUPPORTED"
    SERVICE_UNAVAILABLE = "SERVICE_UNAVAILABLE"
    INTERNAL_ERROR = "INTERNAL_ERROR"
    TASK_CORRUPT = "TASK_CORRUPT"
    """The task's stored record is unreadable (no status, bad JSON): an operator must look at it."""
    UPLOAD_TIMEOUT = "UPLOAD_TIMEOUT"
    """No body byte arrived for ``MAIE_UPLOAD_IDLE_TIMEOUT_S``: the upload was dropped and removed."""
    HEADERS_TOO_LARGE = "HEADERS_TOO_LARGE"
    """The request line plus headers exceed ``MAIE_HTTP_MAX_HEADER_BYTES`` (sent before authentication)."""
    REQUEST_TIMEOUT = "REQUEST_TIMEOUT"
    """The request line and headers did not arrive within ``MAIE_HTTP_HEADER_TIMEOUT_S``."""
    # task failures
    AUDIO_DECODE_ERROR = "AUDIO_DECODE_ERROR"
    AUDIO_NO_STREAM = "AUDIO_NO_STREAM"
    AUDIO_EMPTY = "AUDIO_EMPTY"
    AUDIO_TOO_SHORT = "AUDIO_TOO_SHORT"
    AUDIO_TOO_LONG = "AUDIO_TOO_LONG"
    AUDIO_TRUNCATED = "AUDIO_TRUNCATED"
    AUDIO_TOO_MANY_CHANNELS = "AUDIO_TOO_MANY_CHANNELS"
    """More channels than decoding (64) or diarizing by channel (``diarization.max_channels``) takes:
    422 at submit when the header says so, else the task's failure code."""
    ASR_FAILED = "ASR_FAILED"
    MODEL_UNAVAILABLE = "MODEL_UNAVAILABLE"
    DIARIZATION_FAILED = "DIARIZATION_FAILED"
    ENHANCE_FAILED = "ENHANCE_FAILED"
    SUMMARY_FAILED = "SUMMARY_FAILED"
    LLM_UNAVAILABLE = "LLM_UNAVAILABLE"
    TIMEOUT = "TIMEOUT"
    WORKER_LOST = "WORKER_LOST"
    CANCELLED = "CANCELLED"
    PIPELINE_ERROR = "PIPELINE_ERROR"
    # task warnings (the task completes; ``warnings[]`` says what to distrust)
    SUMMARY_UNGROUNDED = "SUMMARY_UNGROUNDED"
    """Summary items not found in the transcript (``results.summary_grounding`` lists them)."""
    ENHANCE_UNCHANGED = "ENHANCE_UNCHANGED"
    """Every clean-transcript chunk was kept raw: ``clean_transcript`` is the raw text."""
    LLM_LOOP_CUT = "LLM_LOOP_CUT"
    """Repeated sentences, phrases or list items were cut from LLM output."""
    LOW_CONFIDENCE = "LOW_CONFIDENCE"
    """Recognition collapsed over a long stretch (``results.low_confidence`` has the time ranges)."""
    # webhook delivery outcomes (the ``error`` of an attempt in a task's ``webhook.attempts``)
    DESTINATION_REFUSED = "DESTINATION_REFUSED"
    """The callback host is (or now resolves to) a non-public address: never contacted, not retried."""
    DESTINATION_UNRESOLVED = "DESTINATION_UNRESOLVED"
    """The callback host did not resolve at this attempt: retried with backoff like any failure."""


ADVISORY: frozenset[ErrorCode] = frozenset(
    {ErrorCode.SUMMARY_UNGROUNDED, ErrorCode.ENHANCE_UNCHANGED, ErrorCode.LLM_LOOP_CUT, ErrorCode.LOW_CONFIDENCE}
)
"""Warnings about results that are there but need care: listed in a task's ``warnings``, never its
``error`` (which names a stage that failed)."""

HTTP_STATUS: dict[ErrorCode, int] = {
    ErrorCode.UNAUTHORIZED: 401,
    ErrorCode.TASK_NOT_FOUND: 404,
    ErrorCode.TEMPLATE_NOT_FOUND: 404,
    ErrorCode.NOT_FOUND: 404,
    ErrorCode.METHOD_NOT_ALLOWED: 405,
    ErrorCode.TASK_NOT_READY: 409,
    ErrorCode.RANGE_NOT_SATISFIABLE: 416,
    ErrorCode.TEMPLATE_EXISTS: 409,
    ErrorCode.TEMPLATE_READ_ONLY: 403,
    ErrorCode.FORBIDDEN: 403,
    ErrorCode.UPLOAD_TOO_LARGE: 413,
    ErrorCode.UNSUPPORTED_MEDIA_TYPE: 415,
    ErrorCode.INVALID_MULTIPART: 400,
    ErrorCode.MISSING_FILE: 422,
    ErrorCode.INVALID_FIELD: 422,
    ErrorCode.VALIDATION_ERROR: 422,
    ErrorCode.TEMPLATE_INVALID: 422,
    ErrorCode.TRANSLATION_UNSUPPORTED: 422,
    ErrorCode.AUDIO_TOO_MANY_CHANNELS: 422,
    ErrorCode.QUEUE_FULL: 429,
    ErrorCode.RATE_LIMITED: 429,
    ErrorCode.INSUFFICIENT_STORAGE: 507,
    ErrorCode.STORAGE_UNAVAILABLE: 503,
    ErrorCode.BACKEND_UNAVAILABLE: 503,
    ErrorCode.FEATURE_UNAVAILABLE: 422,
    ErrorCode.LANGUAGE_UNSUPPORTED: 422,
    ErrorCode.SERVICE_UNAVAILABLE: 503,
    ErrorCode.INTERNAL_ERROR: 500,
    ErrorCode.TASK_CORRUPT: 500,
    ErrorCode.UPLOAD_TIMEOUT: 408,
    ErrorCode.HEADERS_TOO_LARGE: 431,
    ErrorCode.REQUEST_TIMEOUT: 408,
}


class MaieError(Exception):
    """An error with a stable code. Raised in the API it becomes an HTTP error; in the worker, a failure."""

    def __init__(
        self,
        code: ErrorCode,
        message: str,
        *,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.headers = headers or {}

    @property
    def status_code(self) -> int:
        return HTTP_STATUS.get(self.code, 500)


@contextmanager
def failures_as(code: ErrorCode, what: str) -> Iterator[None]:
    """Any unexpected exception inside becomes ``MaieError(code)``: a bug in an optional stage costs that
    stage, never the transcript. MaieErrors pass as they are; so do Cancelled and BudgetExceeded, which
    are BaseExceptions. (RQ's own JobTimeoutException is an Exception and would be swallowed here: the
    worker's job alarm raises BudgetExceeded instead, see ``maie.jobs.worker.HardDeadline``.)"""
    try:
        yield
    except MaieError:
        raise
    except Exception as exc:
        raise MaieError(code, f"{what} failed: {exc}") from exc
