"""Turns a finished TaskContext into the task record's results, metrics and versions.

Each part is built with only the keys its stages produced (a key passed as None is written as null):
the store writes them with ``exclude_unset``, so the record shows exactly these keys.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, TypeVar

from pydantic import BaseModel

from maie import __version__
from maie.pipeline.context import LlmUsage, TaskContext
from maie.schemas import (
    AsrVersions,
    DiarizationVersions,
    Feature,
    LlmStageVersion,
    LlmVersions,
    SummaryEvidence,
    SummaryGrounding,
    TaskError,
    TaskMetrics,
    TaskResults,
    TaskVersions,
)

M = TypeVar("M", bound=BaseModel)


def _built(model: type[M], data: dict[str, Any]) -> M:
    """``model`` with exactly the keys of ``data`` set. A key it has no field for is a bug here (reading
    the record back would drop it silently), so it raises, and the pipeline's tests fail."""
    unknown = data.keys() - model.model_fields.keys()
    if unknown:
        raise KeyError(f"{model.__name__} has no field {sorted(unknown)}")
    return model.model_validate(data)


@dataclass
class PipelineResult:
    results: TaskResults
    metrics: TaskMetrics
    versions: TaskVersions
    warnings: list[TaskError] = field(default_factory=list)


def build_result(ctx: TaskContext, *, processing_time_s: float) -> PipelineResult:
    return PipelineResult(
        results=_results(ctx),
        metrics=_metrics(ctx, processing_time_s),
        versions=_versions(ctx),
        warnings=list(ctx.warnings),
    )


def _results(ctx: TaskContext) -> TaskResults:
    out: dict[str, Any] = {}
    transcript = ctx.transcript
    if transcript is not None:
        out["raw_transcript"] = transcript.text
        out["segments"] = transcript.segments
        out["language"] = transcript.language
        out["language_probability"] = transcript.language_probability
    elif ctx.options.text is not None:
        out["raw_transcript"] = ctx.options.text
    if ctx.diarization is not None:
        out["speakers"] = ctx.diarization.speakers
    if ctx.enhancement is not None:
        out["clean_transcript"] = ctx.enhancement.text
        # True: every chunk was kept raw, so the "clean" text is the raw text (ENHANCE_UNCHANGED)
        out["clean_transcript_unchanged"] = ctx.enhancement.unchanged
    if ctx.summary is not None:
        out["summary"] = ctx.summary.data
        out["template_id"] = ctx.summary.template_id
        out["summary_evidence"] = [SummaryEvidence.model_validate(e) for e in ctx.summary.evidence]
        if ctx.summary.grounding is not None:
            out["summary_grounding"] = SummaryGrounding.model_validate(ctx.summary.grounding)
    return _built(TaskResults, out)


def _metrics(ctx: TaskContext, processing_time_s: float) -> TaskMetrics:
    m: dict[str, Any] = {"processing_time_s": round(processing_time_s, 3)}
    duration = ctx.audio.duration_s if ctx.audio is not None else None
    if duration:
        m["input_duration_s"] = round(duration, 3)
        m["rtf"] = round(processing_time_s / duration, 4)
    if ctx.speech is not None:
        m["vad_coverage"] = round(ctx.speech.coverage, 4)
        m["vad_regions"] = len(ctx.speech.regions)
    t = ctx.transcript
    if t is not None:
        m["asr_time_s"] = round(t.processing_time_s, 3)
        m["asr_load_time_s"] = round(t.load_time_s, 3)
        if duration:
            m["asr_rtf"] = round(t.processing_time_s / duration, 4)
        m["asr_confidence"] = None if t.confidence is None else round(t.confidence, 4)
        m["hallucinations_removed"] = dict(t.removed_hallucinations)
    if ctx.diarization is not None:
        m["diarization_time_s"] = round(ctx.diarization.processing_time_s, 3)
    usages = _llm_usages(ctx)
    if usages:
        m["llm_time_s"] = round(sum(u.time_s for u in usages), 3)
        m["llm_prompt_tokens"] = sum(u.prompt_tokens for u in usages)
        m["llm_completion_tokens"] = sum(u.completion_tokens for u in usages)
    e = ctx.enhancement
    if e is not None and (
        Feature.ENHANCEMENT_METRICS in ctx.options.features or Feature.CLEAN_TRANSCRIPT in ctx.options.features
    ):
        m["edit_rate"] = round(e.edit_rate, 4)
        m["enhance_chunks"] = e.chunks
        m["enhance_chunks_kept_raw"] = e.chunks_kept_raw
    if ctx.summary is not None:
        m["summary_attempts"] = ctx.summary.attempts
        if ctx.summary.grounding is not None:
            m["summary_grounded_ratio"] = ctx.summary.grounding["ratio"]
    if ctx.summary is not None or ctx.enhancement is not None:
        m["llm_loops_cut"] = (ctx.summary.loops_cut if ctx.summary else 0) + (
            ctx.enhancement.loops_cut if ctx.enhancement else 0
        )
    return _built(TaskMetrics, m)


def _versions(ctx: TaskContext) -> TaskVersions:
    v = TaskVersions(pipeline=__version__)
    if ctx.transcript is not None:
        v.asr = AsrVersions.model_validate(ctx.transcript.versions)
    if ctx.diarization is not None:
        v.diarization = DiarizationVersions(method=ctx.diarization.method)
    stages: dict[str, LlmStageVersion] = {}
    if ctx.enhancement is not None:
        stages["enhance"] = _usage_version(ctx.enhancement.usage)
    if ctx.summary is not None:
        stages["summary"] = _usage_version(ctx.summary.usage)
    if stages:
        first = next(iter(stages.values()))
        v.llm = _built(LlmVersions, {"model": first.model, "base_url": first.base_url, **stages})
    return v


def _usage_version(u: LlmUsage) -> LlmStageVersion:
    return LlmStageVersion(model=u.model, base_url=u.base_url, params=u.params)


def _llm_usages(ctx: TaskContext) -> list[LlmUsage]:
    out = []
    if ctx.enhancement is not None:
        out.append(ctx.enhancement.usage)
    if ctx.summary is not None:
        out.append(ctx.summary.usage)
    return out
