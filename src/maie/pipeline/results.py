"""Turns a finished TaskContext into the task record's results, metrics and versions."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from maie import __version__
from maie.pipeline.context import LlmUsage, TaskContext
from maie.schemas import Feature, TaskError


@dataclass
class PipelineResult:
    results: dict[str, Any]
    metrics: dict[str, Any]
    versions: dict[str, Any]
    warnings: list[TaskError] = field(default_factory=list)


def build_result(ctx: TaskContext, *, processing_time_s: float) -> PipelineResult:
    return PipelineResult(
        results=_results(ctx),
        metrics=_metrics(ctx, processing_time_s),
        versions=_versions(ctx),
        warnings=list(ctx.warnings),
    )


def _results(ctx: TaskContext) -> dict[str, Any]:
    out: dict[str, Any] = {}
    transcript = ctx.transcript
    if transcript is not None:
        out["raw_transcript"] = transcript.text
        out["segments"] = [s.model_dump(exclude_none=True) for s in transcript.segments]
        out["language"] = transcript.language
        out["language_probability"] = transcript.language_probability
    elif ctx.options.text is not None:
        out["raw_transcript"] = ctx.options.text
    if ctx.diarization is not None:
        out["speakers"] = [s.model_dump() for s in ctx.diarization.speakers]
    if ctx.enhancement is not None:
        out["clean_transcript"] = ctx.enhancement.text
    if ctx.summary is not None:
        out["summary"] = ctx.summary.data
        out["template_id"] = ctx.summary.template_id
    return out


def _metrics(ctx: TaskContext, processing_time_s: float) -> dict[str, Any]:
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
        m["hallucinations_removed"] = t.removed_hallucinations
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
    return m


def _versions(ctx: TaskContext) -> dict[str, Any]:
    v: dict[str, Any] = {"pipeline": __version__}
    if ctx.transcript is not None:
        v["asr"] = ctx.transcript.versions
    if ctx.diarization is not None:
        v["diarization"] = {"method": ctx.diarization.method}
    llm: dict[str, Any] = {}
    if ctx.enhancement is not None:
        llm["enhance"] = _usage_version(ctx.enhancement.usage)
    if ctx.summary is not None:
        llm["summary"] = _usage_version(ctx.summary.usage)
    if llm:
        first = next(iter(llm.values()))
        v["llm"] = {"model": first["model"], "base_url": first["base_url"], **llm}
    return v


def _usage_version(u: LlmUsage) -> dict[str, Any]:
    return {"model": u.model, "base_url": u.base_url, "params": u.params}


def _llm_usages(ctx: TaskContext) -> list[LlmUsage]:
    out = []
    if ctx.enhancement is not None:
        out.append(ctx.enhancement.usage)
    if ctx.summary is not None:
        out.append(ctx.summary.usage)
    return out
