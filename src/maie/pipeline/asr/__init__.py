"""PROCESSING_ASR stage: VAD-gated speech recognition with a pluggable backend.

Only speech reaches the recogniser: the speech regions are cut out and joined into one
speech-only signal, the backend transcribes that, and every timestamp is mapped back to the
original timeline (as faster-whisper's own ``collect_chunks``/``SpeechTimestampsMap`` do). When VAD
finds no speech the model is not even loaded. Hallucination filtering runs on every backend's output.

Long audio goes to the backend in blocks of at most ``settings.asr.block_s`` seconds. A stretch
longer than that (the whole file with VAD off, or one long VAD region) is cut at its quietest point
near the block's end, never at a fixed time: a word cut in two would come back twice or stretched.
The blocks are independent: a backend that can (``parallel_blocks``) decodes several at once, each
in its own thread, and the results are put back in block order, so the output does not depend on
which block finished first. Segments are passed on (``ctx.on_segments``) as soon as they are final:
those of the earliest unfinished block as they are decoded, a later block's when every block
before it is done. Backends implement ``maie.pipeline.asr.backend``.
"""

from __future__ import annotations

import bisect
import importlib
import logging
import queue
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from typing import cast

import numpy as np

from maie.errors import ErrorCode, MaieError
from maie.pipeline.asr.backend import AsrBackend, AsrRequest, LoadedModel
from maie.pipeline.asr.confidence import weighted_confidence
from maie.pipeline.asr.cuts import CUT_SEARCH_S, blocks, quietest_point, split_at_pauses
from maie.pipeline.asr.hallucination import HallucinationFilter
from maie.pipeline.context import SAMPLE_RATE, SegmentSignals, TaskContext, Transcript
from maie.pipeline.vad import vad_threshold
from maie.schemas import Segment, TaskStatus, Word

log = logging.getLogger(__name__)

__all__ = ["CUT_SEARCH_S", "blocks", "gate", "quietest_point", "split_at_pauses", "transcribe"]

BACKENDS = ("whisper", "chunkformer")
MIN_PARALLEL_BLOCK_S = 30.0
"""Blocks decoded in parallel are never made shorter than this (one Whisper window)."""
BLOCKS_PER_DECODER = 4
"""With blocks decoded in parallel, a file is cut into about this many blocks per decoder."""
POLL_S = 0.5
"""While blocks decode in parallel, the job's thread reports progress at least this often."""
SUMMED_DECODING_KEYS = ("clips", "clips_redecoded", "gaps_redecoded")
"""Per-block counts in ``versions.decoding`` that the stage adds up over the blocks."""
CLAMP_TOLERANCE_S = 0.1
"""A backend time this far outside its block is rounding; further out is counted and logged."""


def backend_name(ctx: TaskContext) -> str:
    return ctx.options.asr_backend or ctx.settings.asr.default_backend


def get_backend(name: str) -> AsrBackend:
    if name not in BACKENDS:
        raise MaieError(ErrorCode.INVALID_FIELD, f"unknown asr_backend {name!r}; choose one of: {', '.join(BACKENDS)}")
    # Imported on use: each backend pulls in its own heavy runtime.
    return cast(AsrBackend, importlib.import_module(f"maie.pipeline.asr.{name}"))


class SpeechTimeline:
    """Maps times on the speech-only signal back to the original audio."""

    def __init__(self, regions: Sequence[tuple[int, int]]) -> None:
        """``regions``: sorted, non-overlapping (start, end) sample indices of the original audio."""
        self.orig_starts = [s / SAMPLE_RATE for s, _ in regions]
        self.orig_ends = [e / SAMPLE_RATE for _, e in regions]
        self.gated_starts: list[float] = []
        self.gated_ends: list[float] = []
        self.clamped = 0
        """Times further than CLAMP_TOLERANCE_S outside the block (a backend error)."""
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
        """Gated time ``t`` in region ``index`` on the original timeline.

        A time that runs over a join between two regions (a word across a removed silence) is put
        at its region's edge: the audio beyond the join is the next region's. A time outside the
        whole block is different: the backend reported a time past the audio it was given. That is
        an error, counted in ``clamped`` and logged, not silently hidden."""
        mapped = self.orig_starts[index] + t - self.gated_starts[index]
        low, high = self.orig_starts[index], self.orig_ends[index]
        if not -CLAMP_TOLERANCE_S <= t <= self.gated_ends[-1] + CLAMP_TOLERANCE_S:
            self.clamped += 1
            log.warning("ASR time %.3f s is outside the %.3f s block it came from", t, self.gated_ends[-1])
        return round(min(max(mapped, low), high), 3)

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


def monotonic_after(segment: Segment, previous_start: float) -> Segment:
    """The segment starting no earlier than ``previous_start`` (the start of the one before it) and
    ending no earlier than it starts."""
    start = max(segment.start, previous_start)
    end = max(segment.end, start)
    if (start, end) != (segment.start, segment.end):
        segment = segment.model_copy(update={"start": start, "end": end})
    return segment


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


def block_length(block_s: float, speech_s: float, parallel: int) -> float:
    """The block length used: ``block_s``, or shorter when blocks are decoded in parallel, so that a
    file gives each decoder about BLOCKS_PER_DECODER blocks (never below MIN_PARALLEL_BLOCK_S). With
    few long blocks the last one would run alone while the other decoders idle."""
    if parallel <= 1:
        return block_s
    return min(block_s, max(MIN_PARALLEL_BLOCK_S, speech_s / (BLOCKS_PER_DECODER * parallel)))


BlockResult = tuple[Transcript, SpeechTimeline] | None
"""A block's transcript and the map from its speech-only timeline back to the recording (None: the
block held no samples)."""
OnSegment = Callable[[Segment, SegmentSignals | None, SpeechTimeline], None]
"""A block's segment as the backend decodes it, with the block's time map."""
Decode = Callable[[int, str | None, Callable[[float], None], Callable[[], None], OnSegment], BlockResult]


class _InOrder:
    """Puts the blocks' segments out in recording order, each once it is final: time-mapped, made
    monotonic and through the hallucination filter, then handed to ``ctx.on_segments``.

    A block's segments arrive as its backend decodes them (``segment``) and then all of them with
    the block's result (``done``: the ones not already handed over). Only the earliest unfinished
    block's go out at once; a later block's wait until every block before it is done. Called from
    the job's thread only."""

    def __init__(self, ctx: TaskContext, hallucinations: HallucinationFilter) -> None:
        self.ctx = ctx
        self.hallucinations = hallucinations
        self.cursor = 0
        """The earliest block not yet done."""
        self.kept: list[Segment] = []
        self.previous_start = 0.0
        self.streamed: dict[int, int] = {}
        self.waiting: dict[int, list[tuple[Segment, SegmentSignals | None, SpeechTimeline]]] = {}
        self.finished: dict[int, BlockResult] = {}

    def segment(self, index: int, segment: Segment, signal: SegmentSignals | None, timeline: SpeechTimeline) -> None:
        if index == self.cursor:
            self._accept(index, segment, signal, timeline)
        else:
            self.waiting.setdefault(index, []).append((segment, signal, timeline))

    def done(self, index: int, result: BlockResult) -> None:
        self.finished[index] = result
        while self.cursor in self.finished:
            finished = self.finished.pop(self.cursor)
            if finished is not None:
                block, timeline = finished
                signals = (
                    block.signals if block.signals is not None and len(block.signals) == len(block.segments) else None
                )
                for k in range(self.streamed.get(self.cursor, 0), len(block.segments)):
                    self._accept(self.cursor, block.segments[k], signals[k] if signals is not None else None, timeline)
            self.cursor += 1
            for waiting in self.waiting.pop(self.cursor, []):
                self._accept(self.cursor, *waiting)

    def flush(self) -> None:
        self._pass_on(self.hallucinations.flush())

    def _accept(self, index: int, segment: Segment, signal: SegmentSignals | None, timeline: SpeechTimeline) -> None:
        self.streamed[index] = self.streamed.get(index, 0) + 1
        restored = monotonic_after(timeline.restore(segment), self.previous_start)
        self.previous_start = restored.start
        self._pass_on(self.hallucinations.feed(restored, signal))

    def _pass_on(self, decided: list[Segment]) -> None:
        if decided:
            self.kept.extend(decided)
            self.ctx.on_segments(decided)


def transcribe(ctx: TaskContext) -> Transcript:
    """The ASR stage: transcribe the speech in ``ctx.audio`` (found by VAD in ``ctx.speech``) with the
    requested backend, block by block (several at once when the backend can), and map every time
    back to the recording."""
    name = backend_name(ctx)
    backend = get_backend(name)
    audio, speech = ctx.audio, ctx.speech
    if audio is None or speech is None:
        raise MaieError(ErrorCode.PIPELINE_ERROR, "ASR ran before the audio was decoded and VAD ran")
    if speech.enabled and not speech.regions:
        return _empty(ctx, name)

    spec = backend.resolve_spec(ctx.settings)
    loaded_now: list[bool] = []

    def load() -> object:
        loaded_now.append(True)
        return backend.load(spec)

    model = LoadedModel(spec, ctx.models.get(spec.key, load))
    parallel = backend.parallel_blocks(model)
    speech_s = sum(end - start for start, end in speech.regions)
    block_s = block_length(ctx.settings.asr.block_s, speech_s, parallel)
    groups = blocks(audio.samples, speech.regions, block_s)
    total = sum(end - start for group in groups for start, end in group) or 1.0
    shares = [sum(end - start for start, end in group) / total for group in groups]
    offsets = [sum(shares[:i]) for i in range(len(groups))]
    options = ctx.options
    language = backend.known_language(model, options.language)
    threshold = vad_threshold(ctx) if speech.enabled else None

    def decode(
        index: int,
        language: str | None,
        progress: Callable[[float], None],
        check: Callable[[], None],
        on_segment: OnSegment,
    ) -> BlockResult:
        """One block, in whichever thread runs it: gated here, so only blocks in flight hold a copy."""
        samples, timeline = gate(audio.samples, groups[index])
        if samples.size == 0:
            return None
        request = AsrRequest(
            language=language,
            initial_prompt=options.initial_prompt,
            hotwords=options.hotwords,
            word_timestamps=options.word_timestamps,
            vad=speech.enabled,
            vad_threshold=threshold,
            temperature=options.temperature,
            task=options.task,
            progress=progress,
            check=check,
            segment=lambda segment, signal: on_segment(segment, signal, timeline),
        )
        regions = list(zip(timeline.gated_starts, timeline.gated_ends, strict=True))
        return backend.transcribe(samples, regions, request, model), timeline

    hallucinations = HallucinationFilter(
        audio=audio.samples, sample_rate=SAMPLE_RATE, speech=speech.regions if speech.enabled else None
    )
    order = _InOrder(ctx, hallucinations)
    started = time.perf_counter()
    results: list[BlockResult] = []
    while len(results) < len(groups) and (parallel <= 1 or language is None):
        # In order, one at a time: a backend that decodes one block at a time, or until a block has
        # told the language (the first block's detected language holds for the rest of the recording).
        i = len(results)
        result = decode(
            i,
            language,
            _scaled_report(ctx, offsets[i], shares[i]),
            ctx.check_deadline,
            partial(order.segment, i),
        )
        results.append(result)
        order.done(i, result)
        if language is None and result is not None and result[0].language:
            language = result[0].language
    if len(results) < len(groups):
        results += _decode_parallel(ctx, decode, language, range(len(results), len(groups)), parallel, shares, order)
    order.flush()
    processing_s = time.perf_counter() - started

    decoded = [r for r in results if r is not None]
    if not decoded:
        return _empty(ctx, name)
    ctx.report(TaskStatus.PROCESSING_ASR, 1.0)
    merged = decoded[0][0]
    clamped = sum(timeline.clamped for _, timeline in decoded)

    decoding = merged.versions.setdefault("decoding", {})
    for key in SUMMED_DECODING_KEYS:
        counts = [b.versions.get("decoding", {}).get(key) for b, _ in decoded]
        if any(c is not None for c in counts):
            decoding[key] = sum(c or 0 for c in counts)
    decoding["vad"] = speech.enabled
    decoding["vad_threshold"] = threshold
    decoding["language_requested"] = options.language
    decoding["block_s"] = block_s
    decoding["blocks"] = len(groups)
    decoding["parallel_blocks"] = parallel
    if clamped:
        decoding["times_clamped"] = clamped
    kept = order.kept
    return Transcript(
        segments=kept,
        language=merged.language,
        language_probability=merged.language_probability,
        confidence=weighted_confidence(kept),
        versions=merged.versions,
        load_time_s=ctx.models.load_time(spec.key) if loaded_now else 0.0,
        processing_time_s=processing_s,
        removed_hallucinations=hallucinations.removed,
    )


class _Stop(BaseException):
    """Raised in a block's thread once another block failed or the task stopped: it ends at its next
    check instead of decoding on for nothing."""


def _decode_parallel(
    ctx: TaskContext,
    decode: Decode,
    language: str | None,
    todo: range,
    parallel: int,
    shares: Sequence[float],
    order: _InOrder,
) -> list[BlockResult]:
    """Blocks ``todo`` decoded ``parallel`` at a time, results in block order.

    The threads only decode; everything else stays in this (the job's) thread: segments (through
    ``order``), progress reports (the worker's reporter is where Cancelled comes from), and the
    first failure, re-raised here after the other blocks have stopped at their next check (one
    decode at most)."""
    events: queue.SimpleQueue[tuple[str, int, object]] = queue.SimpleQueue()
    stop = threading.Event()
    done = sum(shares[: todo.start])
    fractions = dict.fromkeys(todo, 0.0)
    results: dict[int, BlockResult] = {}

    def run(index: int) -> None:
        def check() -> None:
            if stop.is_set():
                raise _Stop
            ctx.check_deadline()

        def progress(fraction: float) -> None:
            check()
            events.put(("progress", index, fraction))

        def segment(segment: Segment, signal: SegmentSignals | None, timeline: SpeechTimeline) -> None:
            events.put(("segment", index, (segment, signal, timeline)))

        try:
            events.put(("done", index, decode(index, language, progress, check, segment)))
        except BaseException as exc:  # handed to the job's thread, which re-raises it
            events.put(("error", index, exc))

    pool = ThreadPoolExecutor(max_workers=parallel, thread_name_prefix="maie-asr-block")
    try:
        for index in todo:
            pool.submit(run, index)
        while len(results) < len(todo):
            try:
                kind, index, value = events.get(timeout=POLL_S)
            except queue.Empty:
                kind = "tick"  # nothing finished lately: still report, so a cancel is noticed
            if kind == "error":
                raise cast(BaseException, value)
            if kind == "segment":
                order.segment(index, *cast(tuple[Segment, SegmentSignals | None, SpeechTimeline], value))
            elif kind == "done":
                results[index] = cast(BlockResult, value)
                order.done(index, results[index])
                fractions[index] = 1.0
            elif kind == "progress":
                fractions[index] = max(fractions[index], min(max(cast(float, value), 0.0), 1.0))
            ctx.check_deadline()
            ctx.report(TaskStatus.PROCESSING_ASR, done + sum(shares[i] * f for i, f in fractions.items()))
    finally:
        stop.set()
        pool.shutdown(wait=True, cancel_futures=True)
    return [results[i] for i in todo]


def _scaled_report(ctx: TaskContext, offset: float, share: float) -> Callable[[float], None]:
    """A block's own 0..1 progress, placed in its share of the whole stage. Also where the deadline
    is checked between a backend's units of work (the reporter raises BudgetExceeded past it too,
    but a context without a worker's reporter still has a deadline)."""

    def report(fraction: float) -> None:
        ctx.check_deadline()
        ctx.report(TaskStatus.PROCESSING_ASR, offset + share * min(max(fraction, 0.0), 1.0))

    return report
