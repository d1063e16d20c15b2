"""The task record and its parts: what ``GET /v1/status/{id}`` returns and what the worker writes.

Two kinds of optional field, so the JSON is the same whether a record is written or read back:

- ``Omit[...]`` fields are left out of the JSON when None (a segment's ``speaker``, a record's
  ``error``): None means "not known", never a value.
- The parts of ``results``, ``metrics`` and ``versions`` keep what was written, null included
  (``asr_confidence: null`` says the backend has no confidence): serialize them with
  ``exclude_unset=True`` (the routes and the store do), so a key that was never written stays absent.

The HTTP bodies that are not the task record (lists, templates, models, errors) are in ``maie.schemas.http``.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Any, Literal, TypeAlias, TypeVar

from pydantic import BaseModel, ConfigDict, Field

T = TypeVar("T")


def _is_none(value: object) -> bool:
    return value is None


Omit: TypeAlias = Annotated[T | None, Field(exclude_if=_is_none)]
"""An optional field that is left out of the JSON when None."""


class Schema(BaseModel):
    """Base of the documented models: attribute docstrings become the OpenAPI descriptions."""

    model_config = ConfigDict(use_attribute_docstrings=True)


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


class Word(Schema):
    start: float
    end: float
    word: str
    probability: Omit[float] = None
    speaker: Omit[str] = None


class Segment(Schema):
    start: float
    end: float
    text: str
    speaker: Omit[str] = None
    confidence: Omit[float] = None
    words: Omit[list[Word]] = None
    """Only when ``word_timestamps`` was asked for."""
    # The decoder's own values for this segment, when the backend has them (faster-whisper does).
    avg_logprob: Omit[float] = None
    compression_ratio: Omit[float] = None
    no_speech_prob: Omit[float] = None
    temperature: Omit[float] = None
    """The temperature the segment was finally decoded at (after any fallback)."""
    tokens: Omit[list[int]] = None
    seek: Omit[int] = None
    """faster-whisper's seek offset (in 10 ms frames of the speech-only audio it was given)."""


class Speaker(Schema):
    id: str
    talk_time_s: float


class TaskError(Schema):
    """A failure (``error``) or a warning (``warnings[]``)."""

    code: str
    """A stable code from the catalogue (``maie.errors.ErrorCode``)."""
    message: str
    stage: Omit[str] = None
    """The stage it happened in."""


class SummaryEvidence(Schema):
    """Where one leaf of the summary was found in the transcript."""

    path: str
    """JSON pointer (RFC 6901) of the leaf in ``results.summary``."""
    segments: list[int]
    """Indices of the supporting segments (``results.segments``; for given text, its lines and sentences)."""
    start: float | None
    end: float | None
    """Times of those segments (null for given text, which has none)."""
    score: float
    supported: bool
    copied: bool = False
    """The leaf repeats the template's example."""


class SummaryGrounding(Schema):
    """``results.summary_evidence`` totalled."""

    supported: int
    total: int
    ratio: float
    unsupported: list[str]
    """Paths of the unsupported leaves."""
    copied_from_example: list[str] = Field(default_factory=list)
    policy: Literal["flag", "drop", "fail"] | None = None
    """``MAIE_LLM__SUM_UNGROUNDED`` when the summary was checked."""
    dropped: list[str] | None = None
    """Paths removed (policy ``drop`` only)."""


class LowConfidenceRange(Schema):
    """A long stretch where recognition collapsed (``LOW_CONFIDENCE``)."""

    start: float
    end: float
    confidence: float


class TaskResults(Schema):
    """What the task produced; each key is there only when its stage ran (see the module docstring)."""

    raw_transcript: str | None = None
    """The transcript as recognised (for ``process_text``: the given text)."""
    segments: list[Segment] | None = None
    language: str | None = None
    language_probability: float | None = None
    speakers: list[Speaker] | None = None
    """With diarization: every speaker and their talk time."""
    clean_transcript: str | None = None
    clean_transcript_unchanged: bool | None = None
    """True: every chunk was kept raw, so the clean transcript is the raw one (``ENHANCE_UNCHANGED``)."""
    summary: dict[str, Any] | None = None
    """An object valid against the template's JSON Schema (``GET /v1/templates/{id}/schema``)."""
    template_id: str | None = None
    summary_evidence: list[SummaryEvidence] | None = None
    summary_grounding: SummaryGrounding | None = None
    low_confidence: list[LowConfidenceRange] | None = None


class TaskMetrics(Schema):
    """Measurements of the run; each key is there only when its stage ran."""

    declared_duration_s: float | None = None
    """The duration the file's header declares (read at submission; sets the job's time budget)."""
    processing_time_s: float | None = None
    input_duration_s: float | None = None
    rtf: float | None = None
    """Real-time factor: processing time per second of audio."""
    vad_coverage: float | None = None
    """Share of the audio that voice activity detection kept as speech."""
    vad_regions: int | None = None
    asr_time_s: float | None = None
    asr_load_time_s: float | None = None
    asr_rtf: float | None = None
    asr_confidence: float | None = None
    """Duration-weighted segment confidence (null: the backend has none)."""
    hallucinations_removed: dict[str, int] | None = None
    """Segments the hallucination filter removed, by reason."""
    diarization_time_s: float | None = None
    llm_time_s: float | None = None
    llm_prompt_tokens: int | None = None
    llm_completion_tokens: int | None = None
    edit_rate: float | None = None
    """Character edits from raw to clean transcript per raw character."""
    enhance_chunks: int | None = None
    enhance_chunks_kept_raw: int | None = None
    summary_attempts: int | None = None
    summary_grounded_ratio: float | None = None
    llm_loops_cut: int | None = None
    """Repeated sentences, phrases or list items cut from LLM output (``LLM_LOOP_CUT``)."""


class AsrVersions(Schema):
    """The ASR backend and model that ran, and how they decoded (open: each backend adds its own keys)."""

    model_config = ConfigDict(extra="allow")
    backend: str | None = None
    model: str | None = None
    device: str | None = None
    compute_type: str | None = None
    skipped: str | None = None
    """Why recognition did not run (e.g. no speech detected)."""
    decoding: dict[str, Any] | None = None
    """The backend's decoding parameters (beam size, language, VAD, temperatures...)."""


class DiarizationVersions(Schema):
    method: str


class LlmStageVersion(Schema):
    model: str | None = None
    base_url: str | None = None
    """The OpenAI-compatible server (null: the embedded model)."""
    params: dict[str, Any] | None = None
    """Sampling parameters sent to the model."""


class LlmVersions(Schema):
    """The LLM of the first LLM stage that ran, and of each stage."""

    model: str | None = None
    base_url: str | None = None
    enhance: LlmStageVersion | None = None
    summary: LlmStageVersion | None = None


class TaskVersions(Schema):
    """What produced the results: MAIE's version, the ASR, diarization and LLM that ran."""

    pipeline: str
    asr: AsrVersions | None = None
    diarization: DiarizationVersions | None = None
    llm: LlmVersions | None = None


class WebhookAttempt(Schema):
    at: str
    address: str | None = None
    """The checked address the delivery connected to."""
    error: str | None = None
    """An exception name, ``DESTINATION_REFUSED`` or ``DESTINATION_UNRESOLVED``."""
    detail: str | None = None
    status_code: int | None = None
    """The callback's HTTP status."""


class WebhookState(Schema):
    """Delivery of the ``callback_url`` notification."""

    url: str
    attempts: list[WebhookAttempt] = Field(default_factory=list)
    delivered: bool | None = None
    next_attempt_in_s: float | None = None


class TaskOptions(BaseModel):
    """Per-task processing options, validated once at submission."""

    features: list[Feature] = Field(default_factory=lambda: [Feature.RAW_TRANSCRIPT])
    template_id: str | None = None
    asr_backend: str | None = None
    language: str | None = None
    initial_prompt: str | None = Field(default=None, max_length=2000)
    hotwords: str | None = Field(default=None, max_length=2000)
    word_timestamps: bool = False
    task: Literal["transcribe", "translate"] = "transcribe"
    """Whisper's task: ``translate`` gives English text (multilingual models only)."""
    temperature: float | None = Field(default=None, ge=0.0, le=1.0)
    """First temperature of Whisper's fallback ladder (higher steps follow); unset: 0."""
    enable_vad: bool | None = None
    vad_threshold: float | None = Field(default=None, ge=0.0, le=1.0)
    enable_diarization: bool = False
    diarize_by_channel: bool = False
    min_speakers: int | None = Field(default=None, ge=1, le=32)
    max_speakers: int | None = Field(default=None, ge=1, le=32)
    callback_url: str | None = Field(default=None, max_length=2000)
    template_scope: str | None = None
    """Where ``template_id`` was found for the submitting key (set by the API, never by a client):
    ``builtin``, ``shared``, ``legacy`` or ``user:<key name>``."""
    text: str | None = None
    """Given text for ``/v1/process_text`` (no audio)."""
    speaker_names: dict[str, str] | None = None
    """Speaker ids renamed by the owner (``PATCH /v1/tasks/{id}``; set by the API, never at submit):
    a later run of the task's LLM stages reads the names instead of S1, S2."""


class TaskRecord(Schema):
    """A task: its state, and once it is done its results, metrics and versions."""

    task_id: str
    owner: Omit[str] = None
    """Name of the key that submitted the task (absent: submitted before owners were recorded)."""
    status: TaskStatus
    stage: Omit[str] = None
    progress: float = 0.0
    """0..1 over the whole task."""
    submitted_at: Omit[str] = None
    started_at: Omit[str] = None
    completed_at: Omit[str] = None
    filename: Omit[str] = None
    error: Omit[TaskError] = None
    """The first stage that failed (a failed summary on a COMPLETE task, too)."""
    warnings: Omit[list[TaskError]] = None
    """Every non-fatal failure and notice; ``error`` holds the first failure."""
    results: Omit[TaskResults] = None
    metrics: Omit[TaskMetrics] = None
    versions: Omit[TaskVersions] = None
    options: Omit[dict[str, Any]] = None
    """The options the task runs with (the fields of ``POST /v1/process``, as validated at submission)."""
    attempts: int = 0
    correlation_id: Omit[str] = None
    """The submitting request's X-Request-ID: search the logs of the API and the worker for it."""
    webhook: Omit[WebhookState] = None
    speaker_names: Omit[dict[str, str]] = None
    """Names the owner gave the speakers (``{"S1": "Diane"}``), applied to exports and later LLM runs."""


class Accepted(Schema):
    """A task was accepted: follow it at ``status_url``."""

    task_id: str
    status: TaskStatus
    status_url: str
