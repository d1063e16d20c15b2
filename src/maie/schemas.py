"""The task record and its parts: what ``GET /v1/status/{id}`` returns and what the worker writes."""

from __future__ import annotations

from enum import StrEnum
from typing import Any

from pydantic import BaseModel, Field


class TaskStatus(StrEnum):
    """Task states, in pipeline order. The single source of stage names."""

    PENDING = "PENDING"
    PREPROCESSING = "PREPROCESSING"
    PROCESSING_ASR = "PROCESSING_ASR"
    DIARIZING = "DIARIZING"
    PROCESSING_LLM = "PROCESSING_LLM"
    COMPLETE = "COMPLETE"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"

    @property
    def terminal(self) -> bool:
        return self in TERMINAL


TERMINAL = frozenset({TaskStatus.COMPLETE, TaskStatus.FAILED, TaskStatus.CANCELLED})


class Feature(StrEnum):
    RAW_TRANSCRIPT = "raw_transcript"
    CLEAN_TRANSCRIPT = "clean_transcript"
    SUMMARY = "summary"
    ENHANCEMENT_METRICS = "enhancement_metrics"


class Word(BaseModel):
    start: float
    end: float
    word: str
    probability: float | None = None
    speaker: str | None = None


class Segment(BaseModel):
    start: float
    end: float
    text: str
    speaker: str | None = None
    confidence: float | None = None
    words: list[Word] | None = None


class Speaker(BaseModel):
    id: str
    talk_time_s: float


class TaskError(BaseModel):
    code: str
    message: str
    stage: str | None = None


class TaskOptions(BaseModel):
    """Per-task processing options, validated once at submission."""

    features: list[Feature] = Field(default_factory=lambda: [Feature.RAW_TRANSCRIPT])
    template_id: str | None = None
    asr_backend: str | None = None
    language: str | None = None
    initial_prompt: str | None = Field(default=None, max_length=2000)
    hotwords: str | None = Field(default=None, max_length=2000)
    word_timestamps: bool = False
    enable_vad: bool | None = None
    vad_threshold: float | None = Field(default=None, ge=0.0, le=1.0)
    enable_diarization: bool = False
    diarize_by_channel: bool = False
    min_speakers: int | None = Field(default=None, ge=1, le=32)
    max_speakers: int | None = Field(default=None, ge=1, le=32)
    callback_url: str | None = Field(default=None, max_length=2000)
    text: str | None = None
    """Given text for ``/v1/process_text`` (no audio)."""


class TaskRecord(BaseModel):
    task_id: str
    status: TaskStatus
    stage: str | None = None
    progress: float = 0.0
    submitted_at: str | None = None
    started_at: str | None = None
    completed_at: str | None = None
    filename: str | None = None
    error: TaskError | None = None
    warnings: list[TaskError] | None = None
    """Every non-fatal failure; ``error`` holds the first."""
    results: dict[str, Any] | None = None
    metrics: dict[str, Any] | None = None
    versions: dict[str, Any] | None = None
    options: dict[str, Any] | None = None
    attempts: int = 0
    correlation_id: str | None = None
    """The submitting request's X-Request-ID: search the logs of the API and the worker for it."""
    webhook: dict[str, Any] | None = None


class Accepted(BaseModel):
    task_id: str
    status: TaskStatus
    status_url: str
