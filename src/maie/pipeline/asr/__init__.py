"""PROCESSING_ASR stage: VAD-gated speech recognition with a pluggable backend.

Only speech reaches the recogniser: the speech regions are cut out and joined into one
speech-only signal, the backend transcribes that, and every timestamp is mapped back to the
original timeline (as faster-whisper's own ``collect_chunks``/``SpeechTimestampsMap`` do). When VAD
finds no speech the model is not even loaded. Hallucination filtering runs on every backend's output.
"""

from __future__ import annotations

import bisect
import dataclasses
import importlib
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from maie.errors import ErrorCode, MaieError
from maie.pipeline.asr.confidence import weighted_confidence
from maie.pipeline.asr.hallucination import filter_hallucinations
from maie.pipeline.context import SAMPLE_RATE, DecodedAudio, SpeechRegions, TaskContext, Transcript
from maie.pipeline.vad import detect_speech, vad_threshold
from maie.schemas import Segment, TaskStatus, Word

BACKENDS = ("whisper", "chunkformer")
BLOCK_S = 120.0
"""Most seconds of speech handed to a backend at once (see ``blocks``)."""


def backend_name(ctx: TaskContext) -> str:
    return ctx.options.asr_backend or ctx.settings.asr.default_backend


def _backend(name: str) -> Any:
    if name not in BACKENDS:
        raise MaieError(ErrorCode.INVALID_FIELD, f"unknown asr_backend {name!r}; choose one of: {', '.join(BACKENDS)}")
    # Imported on use: each backend pulls in its own heavy runtime.
    return importlib.import_module(f"maie.pipeline.asr.{name}")


class SpeechTimeline:
    """Maps times on the speech-only signal back to the original audio."""

    def __init__(self, regions: Sequence[tuple[int, int]]) -> None:
        """``regions``: sorted, non-overlapping (start, end) sample indices of the original audio."""
        self.orig_starts = [s / SAMPLE_RATE for s, _ in regions]
        self.orig_ends = [e / SAMPLE_RATE for _, e in regions]
        self.gated_starts: list[float] = []
        self.gated_ends: list[float] = []
        offset = 0
        for s, e in regions:
            self.gated_starts.append(offset / SAMPLE_RATE)
            offset += e - s
            self.gated_ends.append(offset / SAMPLE_RATE)

    def index(self, t: float, *, is_end: bool = False) -> int:
        """Region holding gated time ``t``; an end exactly on a boundary belongs to the region before."""
        i = bisect.bisect_left(self.gated_ends, t) if is_end else bisect.bisect_right(self.gated_starts, t) - 1
        return min(max(i, 0), len(self.gated_starts) - 1)

    def original(self, t: float, index: int) -> float:
        mapped = self.orig_starts[index] + t - self.gated_starts[index]
        return round(min(max(mapped, self.orig_starts[index]), self.orig_ends[index]), 3)

    def restore(self, segment: Segment) -> Segment:
        if segment.words:
            words: list[Word] = []
            for word in segment.words:
                # Both ends of a word from the region holding its middle, so it never spans a gap.
                i = self.index((word.start + word.end) / 2)
                words.append(
                    word.model_copy(update={"start": self.original(word.start, i), "end": self.original(word.end, i)})
                )
            return segment.model_copy(update={"start": words[0].start, "end": words[-1].end, "words": words})
        start = self.original(segment.start, self.index(segment.start))
        end = self.original(segment.end, self.index(segment.end, is_end=True))
        return segment.model_copy(update={"start": start, "end": max(start, end)})


def gate(samples: np.ndarray, regions: Sequence[tuple[float, float]]) -> tuple[np.ndarray, SpeechTimeline]:
    """The speech regions joined into one signal (filled into one preallocated array), and the map back."""
    spans: list[tuple[int, int]] = []
    for start, end in sorted(regions):
        s = min(max(round(start * SAMPLE_RATE), 0), len(samples))
        e = min(max(round(end * SAMPLE_RATE), 0), len(samples))
        if e <= s:
            continue
        if spans and s <= spans[-1][1]:  # overlapping or touching: merge
            spans[-1] = (spans[-1][0], max(spans[-1][1], e))
        else:
            spans.append((s, e))
    out = np.empty(sum(e - s for s, e in spans), dtype=np.float32)
    offset = 0
    for s, e in spans:
        out[offset : offset + e - s] = samples[s:e]
        offset += e - s
    return out, SpeechTimeline(spans)


def monotonic(segments: list[Segment]) -> list[Segment]:
    """Starts never go back and no segment ends before it starts."""
    fixed: list[Segment] = []
    previous = 0.0
    for segment in segments:
        start = max(segment.start, previous)
        end = max(segment.end, start)
        if (start, end) != (segment.start, segment.end):
            segment = segment.model_copy(update={"start": start, "end": end})
        fixed.append(segment)
        previous = start
    return fixed


def _empty(ctx: TaskContext, name: str) -> Transcript:
    ctx.report(TaskStatus.PROCESSING_ASR, 1.0)
    return Transcript(
        segments=[],
        language=ctx.options.language,
        language_probability=None,
        confidence=None,
        versions={
            "backend": name,
            "skipped": "no speech detected by VAD",
            "decoding": {"vad": True, "vad_threshold": vad_threshold(ctx)},
        },
    )


def blocks(regions: Sequence[tuple[float, float]], duration: float, enabled: bool) -> list[list[tuple[float, float]]]:
    """Speech regions grouped into blocks of at most BLOCK_S of speech (VAD off: plain BLOCK_S slices).

    The recognizer sees one block at a time, so its working memory (Whisper's log-mel features take
    about 60 MB per minute of input) does not grow with the length of the recording.
    """
    if not enabled:
        starts = np.arange(0.0, duration, BLOCK_S)
        return [[(float(t), float(min(t + BLOCK_S, duration)))] for t in starts]
    groups: list[list[tuple[float, float]]] = []
    current: list[tuple[float, float]] = []
    length = 0.0
    for start, end in regions:
        if current and length + (end - start) > BLOCK_S:
            groups.append(current)
            current, length = [], 0.0
        current.append((start, end))
        length += end - start
    if current:
        groups.append(current)
    return groups


def transcribe(ctx: TaskContext) -> Transcript:
    """Transcribe the speech in ``ctx.audio`` with the requested backend (whisper | chunkformer)."""
    name = backend_name(ctx)
    backend = _backend(name)
    if ctx.audio is None:
        from maie.pipeline.audio import decode_audio

        ctx.audio = decode_audio(ctx)
    if ctx.speech is None:
        ctx.speech = detect_speech(ctx)
    audio, speech = ctx.audio, ctx.speech
    if speech.enabled and not speech.regions:
        return _empty(ctx, name)

    groups = blocks(speech.regions, audio.duration_s, speech.enabled)
    total = sum(end - start for group in groups for start, end in group) or 1.0
    done = 0.0
    options = ctx.options
    merged: Transcript | None = None
    segments: list[Segment] = []
    for group in groups:
        samples, timeline = gate(audio.samples, group)
        if samples.size == 0:
            continue
        length = len(samples) / SAMPLE_RATE
        block_ctx = dataclasses.replace(
            ctx,
            options=options,
            audio=DecodedAudio(
                samples=samples,
                duration_s=length,
                source_format=audio.source_format,
                source_channels=audio.source_channels,
                declared_duration_s=None,
            ),
            speech=SpeechRegions(
                regions=list(zip(timeline.gated_starts, timeline.gated_ends, strict=True)),
                coverage=1.0,
                enabled=speech.enabled,
            ),
            report=_scaled_report(ctx, done / total, length / total),
        )
        block: Transcript = backend.transcribe(block_ctx)
        segments += [timeline.restore(s) for s in block.segments]
        done += length
        if merged is None:
            merged = block
            if options.language is None and block.language:
                # The first block's detected language holds for the rest of the recording.
                options = options.model_copy(update={"language": block.language})
        else:
            merged.processing_time_s += block.processing_time_s
            merged.load_time_s += block.load_time_s
            merged.removed_hallucinations += block.removed_hallucinations
    if merged is None:
        return _empty(ctx, name)
    ctx.report(TaskStatus.PROCESSING_ASR, 1.0)

    decoding = merged.versions.setdefault("decoding", {})
    decoding["vad"] = speech.enabled
    decoding["vad_threshold"] = vad_threshold(ctx) if speech.enabled else None
    decoding["language_requested"] = ctx.options.language
    segments, removed = filter_hallucinations(monotonic(segments), audio=audio.samples, sample_rate=SAMPLE_RATE)
    merged.segments = segments
    merged.removed_hallucinations += removed
    merged.confidence = weighted_confidence(segments)
    return merged


def _scaled_report(ctx: TaskContext, offset: float, share: float) -> Callable[[TaskStatus, float], None]:
    """A block's own 0..1 progress, placed in its share of the whole stage."""

    def report(stage: TaskStatus, fraction: float) -> None:
        ctx.report(stage, offset + share * min(max(fraction, 0.0), 1.0))

    return report
