"""HTTP bodies other than the task record: errors, lists, templates, models, health and the OpenAI shapes.

Built by the routers, so ``/openapi.json`` documents every answer (see ``maie.schemas`` for ``Omit``).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from maie.errors import ErrorCode
from maie.schemas import Omit, Schema, TaskStatus

# -- errors ----------------------------------------------------------------------------------------


class ErrorBody(Schema):
    """Every error of MAIE's own routes."""

    detail: str
    """A message for a person."""
    code: ErrorCode
    """A stable code for programs."""


class OpenAIError(Schema):
    message: str
    type: str
    """``invalid_request_error``, ``authentication_error``, ``rate_limit_error`` or ``server_error``."""
    param: str | None
    """The request field the error is about, if one is."""
    code: ErrorCode
    """MAIE's stable code."""


class OpenAIErrorBody(Schema):
    """Errors of ``/v1/audio/*`` and ``/v1/models/{id}``, in OpenAI's shape (so the SDKs show the message)."""

    error: OpenAIError


# -- tasks -----------------------------------------------------------------------------------------


class TaskListItem(Schema):
    """A task as ``GET /v1/tasks`` lists it."""

    task_id: str
    owner: str | None
    status: TaskStatus
    stage: str | None
    progress: float
    submitted_at: str | None
    completed_at: str | None
    filename: str | None
    input_duration_s: float | None
    features: list[str]
    enable_diarization: bool
    preview: str
    """The first words of the transcript."""
    warnings: list[str]
    """The codes of the task's warnings."""


class TaskDeleted(Schema):
    task_id: str
    status: str
    """``DELETED`` (a finished task), ``CANCELLED``, or the terminal state the task reached first."""
    cancelled: Omit[bool] = None
    """Whether this request cancelled a running task (absent for a finished task, deleted)."""


# -- templates -------------------------------------------------------------------------------------


class TemplateInfo(Schema):
    """A template as the list shows it."""

    id: str
    name: str
    description: str
    language: str | None
    builtin: bool
    scope: Literal["builtin", "shared", "legacy", "user"]
    owner: str | None
    """The key name of a user template's owner."""
    fields: list[str]
    """The summary's top-level fields."""


class TemplateOut(TemplateInfo):
    """A template with its prompt, JSON Schema and example."""

    prompt: str
    schema_: dict[str, Any] = Field(alias="schema")
    """The JSON Schema (type object) a summary made with this template validates against."""
    example: dict[str, Any]


class TemplateDeleted(Schema):
    id: str
    deleted: bool


# -- models ----------------------------------------------------------------------------------------


class ModelEntry(Schema):
    """One model in OpenAI's list shape, with MAIE's details."""

    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str
    backend: str | None = None
    description: str | None = None
    model: str | None = None
    multilingual: bool | None = None
    purpose: str | None = None
    """``enhance`` or ``summary`` for an LLM."""


class AsrBackendInfo(Schema):
    backend: str
    model: str | None = None
    device: str | None = None
    compute_type: str | None = None
    available: bool


class LlmInfo(Schema):
    backend: Literal["embedded", "openai-compatible"]
    base_url: str | None = None
    model: str | None = None
    available: bool | None = None
    detail: str | None = None
    """Why it is not available."""


class LlmPurposes(Schema):
    enhance: LlmInfo
    summary: LlmInfo


class FeatureInfo(Schema):
    available: bool
    detail: Omit[str] = None
    """Why it is not available."""


class LanguagesInfo(Schema):
    available: bool
    english_only: bool


class FeaturesInfo(Schema):
    """Optional features and whether they can run here."""

    diarization: FeatureInfo
    chunkformer: FeatureInfo
    languages: LanguagesInfo


class ModelList(Schema):
    """OpenAI's model list plus MAIE's details (the web UI reads these)."""

    object: Literal["list"] = "list"
    data: list[ModelEntry]
    default_backend: str
    asr: list[AsrBackendInfo]
    llm: LlmPurposes
    features: FeaturesInfo


# -- health ----------------------------------------------------------------------------------------


class Health(Schema):
    status: Literal["ok"] = "ok"


class Check(Schema):
    ok: bool
    live: Omit[int] = None
    """Live workers."""
    error: Omit[str] = None
    detail: Omit[str] = None


class ReadyChecks(Schema):
    redis: Check
    workers: Check
    llm: Check


class Readiness(Schema):
    """200 when every check is ok, else 503 with the same body."""

    ready: bool
    checks: ReadyChecks


# -- OpenAI-compatible transcription ---------------------------------------------------------------


class Transcription(Schema):
    """``response_format=json``."""

    text: str


class VerboseSegment(Schema):
    id: int
    start: float
    end: float
    text: str
    seek: Omit[int] = None
    tokens: Omit[list[int]] = None
    temperature: Omit[float] = None
    avg_logprob: Omit[float] = None
    compression_ratio: Omit[float] = None
    no_speech_prob: Omit[float] = None
    speaker: Omit[str] = None


class VerboseWord(Schema):
    word: str
    start: float
    end: float


class VerboseTranscription(Schema):
    """``response_format=verbose_json``."""

    task: Literal["transcribe", "translate"]
    language: str
    duration: float
    text: str
    segments: list[VerboseSegment]
    words: Omit[list[VerboseWord]] = None
    """With ``timestamp_granularities[]=word``."""
