"""The pipeline, top to bottom: decode → VAD → ASR → [diarize] → LLM (clean transcript, summary)."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from typing import TypeVar

from maie.errors import ErrorCode, MaieError, failures_as
from maie.pipeline.context import BudgetExceeded, Diarization, Enhancement, Summary, TaskContext
from maie.pipeline.results import PipelineResult, build_result
from maie.schemas import Feature, LowConfidenceRange, TaskError, TaskStatus

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
    """Run the stages the task asks for. Decoding and ASR are the task: their failure (or running out
    of time in them) fails it. The later stages are optional: a failure or a timeout there is a
    warning, and the task completes with what is done."""
    started = time.perf_counter()
    features = set(ctx.options.features)
    low_confidence: list[dict[str, float]] = []

    if ctx.audio_path is not None:
        from maie.pipeline.asr import transcribe
        from maie.pipeline.audio import decode_audio
        from maie.pipeline.vad import detect_speech

        ctx.report(TaskStatus.PREPROCESSING, 0.0)
        ctx.audio = decode_audio(ctx)
        ctx.speech = detect_speech(ctx)

        ctx.report(TaskStatus.PROCESSING_ASR, 0.0)
        # ASR always produces words: diarization assigns speakers word by word (segments split where
        # the speaker changes) and LOW_CONFIDENCE reads word probabilities (segment confidence cannot
        # tell tiny.en's German gibberish from hard English). Measured on multilingual.mp3 the word
        # alignment costs no measurable CPU (10.4 s without, 9.9 s with, 3 runs each). The response
        # keeps words only if the request asked for them.
        asr_options = ctx.options.model_copy(update={"word_timestamps": True})
        ctx.transcript = transcribe(dataclasses.replace(ctx, options=asr_options))
        low_confidence = _flag_low_confidence(ctx)

        if ctx.options.enable_diarization:
            ctx.diarization = _optional(
                ctx, ErrorCode.DIARIZATION_FAILED, TaskStatus.DIARIZING, "speaker diarization", _diarize
            )
        if not ctx.options.word_timestamps:
            for segment in ctx.transcript.segments:
                segment.words = None

    if Feature.CLEAN_TRANSCRIPT in features:
        ctx.enhancement = _optional(
            ctx, ErrorCode.ENHANCE_FAILED, TaskStatus.PROCESSING_LLM, "clean transcript", _enhance
        )
    if Feature.SUMMARY in features:
        ctx.summary = _optional(ctx, ErrorCode.SUMMARY_FAILED, TaskStatus.PROCESSING_LLM, "summary", _summarize)

    result = build_result(ctx, processing_time_s=time.perf_counter() - started)
    if ctx.audio_path is not None and low_confidence:
        result.results.low_confidence = [LowConfidenceRange.model_validate(r) for r in low_confidence]
    return result


def _flag_low_confidence(ctx: TaskContext) -> list[dict[str, float]]:
    from maie.pipeline.asr.low_confidence import low_confidence_ranges, low_confidence_warning

    assert ctx.transcript is not None
    ranges = low_confidence_ranges(ctx.transcript.segments)
    if ranges:
        ctx.warnings.append(low_confidence_warning(ranges, ctx.transcript.versions.get("model")))
    return ranges


def _diarize(ctx: TaskContext) -> Diarization:
    from maie.pipeline.speakers import assign_speakers, diarize

    diarization = diarize(ctx)
    if ctx.transcript is not None:
        # Inside the stage's guard: a bug in assigning speakers costs the speakers, not the transcript.
        with failures_as(ErrorCode.DIARIZATION_FAILED, "speaker assignment"):
            segments = assign_speakers(ctx.transcript.segments, diarization.turns)
        # The runner, not the stage, puts the labelled segments in place of the ASR's.
        ctx.transcript = dataclasses.replace(ctx.transcript, segments=segments)
    return diarization


def _enhance(ctx: TaskContext) -> Enhancement:
    from maie.pipeline.llm import enhance

    return enhance(ctx)


def _summarize(ctx: TaskContext) -> Summary:
    from maie.pipeline.llm import summarize

    return summarize(ctx)


def _optional(
    ctx: TaskContext, code: ErrorCode, stage: TaskStatus, what: str, run: Callable[[TaskContext], T]
) -> T | None:
    """Run a stage whose failure must not throw away the transcript: record it and go on.

    Out of time (before or during the stage) is a ``TIMEOUT`` warning naming the stage; every later
    optional stage is then skipped the same way, and the task completes with what is done.
    """
    if ctx.expired():
        message = f"{what} skipped: the time budget was spent before it could start"
        ctx.warnings.append(TaskError(code=ErrorCode.TIMEOUT.value, message=message, stage=stage.value))
        return None
    try:
        ctx.report(stage, 0.0)
        return run(ctx)
    except BudgetExceeded:
        message = f"{what} ran past the time budget and was stopped"
        ctx.warnings.append(TaskError(code=ErrorCode.TIMEOUT.value, message=message, stage=stage.value))
        return None
    except MaieError as exc:
        message = exc.message if exc.code == code else f"{exc.code.value}: {exc.message}"
    except ImportError as exc:
        message = f"stage not installed: {exc}"
    ctx.warnings.append(TaskError(code=code.value, message=message, stage=stage.value))
    return None
