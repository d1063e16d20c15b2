"""The task context every stage reads, and the small typed results the stages return."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from maie.config import Settings
from maie.pipeline.registry import ModelRegistry
from maie.schemas import Segment, Speaker, TaskError, TaskOptions, TaskStatus

SAMPLE_RATE = 16_000


@dataclass
class DecodedAudio:
    """Audio decoded to 16 kHz mono float32."""

    samples: np.ndarray
    duration_s: float
    source_format: str
    source_channels: int
    declared_duration_s: float | None = None
    channels: list[np.ndarray] | None = None
    """Per-channel 16 kHz samples, kept only when diarizing by channel."""


@dataclass
class SpeechRegions:
    """Speech found by VAD, in seconds of the decoded audio."""

    regions: list[tuple[float, float]]
    coverage: float
    """Fraction of the audio that is speech."""
    enabled: bool = True


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
    removed_hallucinations: int = 0

    @property
    def text(self) -> str:
        return " ".join(s.text.strip() for s in self.segments if s.text.strip())


@dataclass
class Diarization:
    turns: list[tuple[float, float, str]]
    """(start, end, speaker) turns."""
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


@dataclass
class Summary:
    data: dict[str, Any]
    template_id: str
    attempts: int
    usage: LlmUsage


class Cancelled(BaseException):
    """The task was cancelled while a stage was running.

    A BaseException (like KeyboardInterrupt): a stage's ``except Exception`` must not swallow it.
    """


class BudgetExceeded(BaseException):
    """The job ran past its time budget. A BaseException for the same reason as Cancelled."""


@dataclass
class TaskContext:
    """What a stage needs: the task's options, settings, warm models and a way to report progress."""

    task_id: str
    options: TaskOptions
    settings: Settings
    models: ModelRegistry
    audio_path: Path | None = None
    report: Callable[[TaskStatus, float], None] = lambda stage, fraction: None
    """Report progress within a stage (0..1). Raises Cancelled if the task was cancelled."""
    # filled in as the stages run
    audio: DecodedAudio | None = None
    speech: SpeechRegions | None = None
    transcript: Transcript | None = None
    diarization: Diarization | None = None
    enhancement: Enhancement | None = None
    summary: Summary | None = None
    warnings: list[TaskError] = field(default_factory=list)
    """Non-fatal failures (e.g. SUMMARY_FAILED): the task still completes."""
