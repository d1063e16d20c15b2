"""The pipeline, top to bottom: decode → VAD → ASR → [diarize] → LLM (clean transcript, summary)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

from maie.errors import ErrorCode, MaieError
from maie.pipeline.context import TaskContext
from maie.pipeline.results import PipelineResult, build_result
from maie.schemas import Feature, TaskError, TaskStatus

T = TypeVar("T")

STAGE_SPANS: dict[TaskStatus, tuple[float, float]] = {
    TaskStatus.PREPROCESSING: (0.0, 0.1),
    TaskStatus.PROCESSING_ASR: (0.1, 0.7),
    TaskStatus.DIARIZING: (0.7, 0.8),
    TaskStatus.PROCESSING_LLM: (0.8, 1.0),
}
"""Where each stage's own 0..1 progress falls in the task's overall progress."""


def overall_progress(stage: TaskStatus, fraction: float) -> float:
    low, high = STAGE_SPANS.get(stage, (0.0, 1.0))
    return round(low + (high - low) * min(max(fraction, 0.0), 1.0), 4)


def run_pipeline(ctx: TaskContext) -> PipelineResult:
    started = time.perf_counter()
    features = set(ctx.options.features)

    if ctx.audio_path is not None:
        from maie.pipeline.asr import transcribe
        from maie.pipeline.audio import decode_audio
        from maie.pipeline.vad import detect_speech

        ctx.report(TaskStatus.PREPROCESSING, 0.0)
        ctx.audio = decode_audio(ctx)
        ctx.speech = detect_speech(ctx)

        ctx.report(TaskStatus.PROCESSING_ASR, 0.0)
        ctx.transcript = transcribe(ctx)

        if ctx.options.enable_diarization:
            ctx.report(TaskStatus.DIARIZING, 0.0)
            ctx.diarization = _optional(ctx, ErrorCode.DIARIZATION_FAILED, TaskStatus.DIARIZING, _diarize)

    if features & {Feature.CLEAN_TRANSCRIPT, Feature.SUMMARY}:
        ctx.report(TaskStatus.PROCESSING_LLM, 0.0)
        if Feature.CLEAN_TRANSCRIPT in features:
            ctx.enhancement = _optional(ctx, ErrorCode.ENHANCE_FAILED, TaskStatus.PROCESSING_LLM, _enhance)
        if Feature.SUMMARY in features:
            ctx.summary = _optional(ctx, ErrorCode.SUMMARY_FAILED, TaskStatus.PROCESSING_LLM, _summarize)

    return build_result(ctx, processing_time_s=time.perf_counter() - started)


def _diarize(ctx: TaskContext):
    from maie.pipeline.diarize import assign_speakers, diarize

    diarization = diarize(ctx)
    if ctx.transcript is not None:
        ctx.transcript.segments = assign_speakers(ctx.transcript.segments, diarization.turns)
    return diarization


def _enhance(ctx: TaskContext):
    from maie.pipeline.llm import enhance

    return enhance(ctx)


def _summarize(ctx: TaskContext):
    from maie.pipeline.llm import summarize

    return summarize(ctx)


def _optional(ctx: TaskContext, code: ErrorCode, stage: TaskStatus, run: Callable[[TaskContext], T]) -> T | None:
    """Run a stage whose failure must not throw away the transcript: record it and go on."""
    try:
        return run(ctx)
    except MaieError as exc:
        message = exc.message if exc.code == code else f"{exc.code.value}: {exc.message}"
    except ImportError as exc:
        message = f"stage not installed: {exc}"
    ctx.warnings.append(TaskError(code=code.value, message=message, stage=stage.value))
    return None
