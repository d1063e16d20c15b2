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
    TEMPLATE_EXISTS = "TEMPLATE_EXISTS"
    TASK_NOT_READY = "TASK_NOT_READY"
    QUEUE_FULL = "QUEUE_FULL"
    RATE_LIMITED = "RATE_LIMITED"
    INSUFFICIENT_STORAGE = "INSUFFICIENT_STORAGE"
    BACKEND_UNAVAILABLE = "BACKEND_UNAVAILABLE"
    SERVICE_UNAVAILABLE = "SERVICE_UNAVAILABLE"
    INTERNAL_ERROR = "INTERNAL_ERROR"
    # task failures
    AUDIO_DECODE_ERROR = "AUDIO_DECODE_ERROR"
    AUDIO_NO_STREAM = "AUDIO_NO_STREAM"
    AUDIO_EMPTY = "AUDIO_EMPTY"
    AUDIO_TOO_SHORT = "AUDIO_TOO_SHORT"
    AUDIO_TOO_LONG = "AUDIO_TOO_LONG"
    AUDIO_TRUNCATED = "AUDIO_TRUNCATED"
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


HTTP_STATUS: dict[ErrorCode, int] = {
    ErrorCode.UNAUTHORIZED: 401,
    ErrorCode.TASK_NOT_FOUND: 404,
    ErrorCode.TEMPLATE_NOT_FOUND: 404,
    ErrorCode.NOT_FOUND: 404,
    ErrorCode.METHOD_NOT_ALLOWED: 405,
    ErrorCode.TASK_NOT_READY: 409,
    ErrorCode.TEMPLATE_EXISTS: 409,
    ErrorCode.TEMPLATE_READ_ONLY: 403,
    ErrorCode.UPLOAD_TOO_LARGE: 413,
    ErrorCode.UNSUPPORTED_MEDIA_TYPE: 415,
    ErrorCode.INVALID_MULTIPART: 400,
    ErrorCode.MISSING_FILE: 422,
    ErrorCode.INVALID_FIELD: 422,
    ErrorCode.VALIDATION_ERROR: 422,
    ErrorCode.TEMPLATE_INVALID: 422,
    ErrorCode.QUEUE_FULL: 429,
    ErrorCode.RATE_LIMITED: 429,
    ErrorCode.INSUFFICIENT_STORAGE: 507,
    ErrorCode.BACKEND_UNAVAILABLE: 503,
    ErrorCode.SERVICE_UNAVAILABLE: 503,
    ErrorCode.INTERNAL_ERROR: 500,
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
    are BaseExceptions."""
    try:
        yield
    except MaieError:
        raise
    except Exception as exc:
        raise MaieError(code, f"{what} failed: {exc}") from exc
