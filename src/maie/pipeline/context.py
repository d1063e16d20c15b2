"""The task context every stage reads, and the small typed results the stages return."""

from __future__ import annotations

import time
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from maie.config import Settings

# Re-exported: the stages take them from here with the rest of the task's types.
from maie.pipeline.decoded import SAMPLE_RATE as SAMPLE_RATE
from maie.pipeline.decoded import ChannelFeatures as ChannelFeatures
from maie.pipeline.decoded import DecodedAudio as DecodedAudio
from maie.pipeline.registry import ModelRegistry
from maie.schemas import Segment, Speaker, TaskError, TaskOptions, TaskStatus

T = TypeVar("T")


@dataclass
class SpeechRegions:
    """Speech found by VAD, in seconds of the decoded audio."""

    regions: list[tuple[float, float]]
    coverage: float
    """Fraction of the audio that is speech."""
    enabled: bool = True


@dataclass(frozen=True)
class SegmentSignals:
    """What the recogniser itself says about one segment (Whisper's decoding statistics)."""

    no_speech_prob: float
    """The model's probability that the window held no speech."""
    avg_logprob: float
    """Mean log-probability of the segment's tokens."""
    compression_ratio: float
    """zlib compression ratio of the text: high for looping output."""


@dataclass
class Transcript:
    segments: list[Segment]
    language: str | None
    language_probability: float | None
    confidence: float | None
    versions: dict[str, Any]
    """backend, model, device, compute_type, decoding parameters actually used."""
    load_time_s: float = 0.0
    processing_time_s: float = 0.0
    removed_hallucinations: dict[str, int] = field(default_factory=dict)
    """Segments (or loops inside one) the hallucination filter removed, by rule."""
    signals: list[SegmentSignals] | None = None
    """The backend's per-segment signals, aligned with ``segments`` until hallucination filtering
    (which consumes them); None when the backend gives none."""

    @property
    def text(self) -> str:
        return " ".join(s.text.strip() for s in self.segments if s.text.strip())


SpeakerTurn = tuple[float, float, str]
"""(start s, end s, speaker name such as "S1"): a stretch of time one speaker holds."""
LabelledSpan = tuple[float, float, int | str]
"""(start s, end s, a backend's own speaker label): a diarization backend's raw output, before the
labels are renamed S1, S2, ... into ``SpeakerTurn``s."""


@dataclass
class Diarization:
    turns: list[SpeakerTurn]
    speakers: list[Speaker]
    method: str
    processing_time_s: float = 0.0


@dataclass
class LlmUsage:
    model: str
    base_url: str | None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    time_s: float = 0.0
    params: dict[str, Any] = field(default_factory=dict)


@dataclass
class Enhancement:
    text: str
    edit_rate: float
    chunks: int
    chunks_kept_raw: int
    usage: LlmUsage
    loops_cut: int = 0
    """Repeats (looping sentences or phrases the input did not have) cut from the LLM's output."""

    @property
    def unchanged(self) -> bool:
        """Every chunk was kept raw: the "clean" transcript is the raw text."""
        return self.chunks_kept_raw == self.chunks


@dataclass
class Summary:
    data: dict[str, Any]
    template_id: str
    attempts: int
    usage: LlmUsage
    evidence: list[dict[str, Any]] = field(default_factory=list)
    """``results.summary_evidence``: one entry per checked leaf (see pipeline/llm/grounding.py)."""
    grounding: dict[str, Any] | None = None
    """``results.summary_grounding``: ``{supported, total, ratio, unsupported, ...}``."""
    loops_cut: int = 0
    """Repeated sentences, phrases and list items cut from the summary."""


class Cancelled(BaseException):
    """The task was cancelled while a stage was running.

    A BaseException (like KeyboardInterrupt): a stage's ``except Exception`` must not swallow it.
    """


class BudgetExceeded(BaseException):
    """The job ran past its time budget. A BaseException for the same reason as Cancelled.

    Raised by the worker's own deadline checks (progress reports, between Whisper segments, between
    LLM tokens) and, as the last resort, by the worker's hard alarm set a margin beyond the budget.
    """


@dataclass
class TaskContext:
    """What a stage needs: the task's options, settings, warm models and a way to report progress."""

    task_id: str
    options: TaskOptions
    settings: Settings
    models: ModelRegistry
    audio_path: Path | None = None
    report: Callable[[TaskStatus, float], None] = lambda stage, fraction: None
    """Report progress within a stage (0..1). Raises Cancelled if the task was cancelled, and
    BudgetExceeded past the deadline."""
    deadline: float | None = None
    """``time.monotonic()`` by which the task must end; None: no limit (``maie process``)."""
    on_segments: Callable[[list[Segment]], None] = lambda segments: None
    """Segments of the transcript as ASR decides them, in order, while it runs: exactly the
    transcript's segments before diarization (live text for SSE). May raise Cancelled."""
    # filled in as the stages run
    audio: DecodedAudio | None = None
    speech: SpeechRegions | None = None
    transcript: Transcript | None = None
    diarization: Diarization | None = None
    enhancement: Enhancement | None = None
    summary: Summary | None = None
    warnings: list[TaskError] = field(default_factory=list)
    """Non-fatal failures (e.g. SUMMARY_FAILED): the task still completes."""

    def remaining_s(self) -> float | None:
        """Seconds left before the deadline (negative once past it); None without a deadline."""
        return None if self.deadline is None else self.deadline - time.monotonic()

    def expired(self) -> bool:
        return self.deadline is not None and time.monotonic() >= self.deadline

    def model(self, key: Hashable, load: Callable[[], T]) -> T:
        """A warm model from the registry; a load still running at the deadline raises BudgetExceeded
        (a first load can take seconds: importing torch, reading weights)."""
        try:
            return self.models.get(key, load, wait_until=self.deadline)
        except TimeoutError:
            raise BudgetExceeded from None

    def check_deadline(self) -> None:
        """Raise BudgetExceeded once the deadline has passed: called between units of work that
        cannot report progress themselves (a Whisper segment, an LLM token)."""
        if self.expired():
            raise BudgetExceeded
