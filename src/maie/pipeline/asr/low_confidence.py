"""Stretches of a transcript whose recognition confidence collapsed: ``LOW_CONFIDENCE`` with time ranges.

Typical cause: speech the model cannot recognise — another language than an English-only model
knows (the German half of ``multilingual.mp3`` through tiny.en comes out as English-sounding
gibberish), or very noisy or distant speech. The text is kept (it is what the model heard) but the
task says where it should not be trusted.

Measure: the mean word probability over a sliding window of ``WINDOW_S`` seconds of words (the
pipeline always has words: it runs ASR with word timestamps). Thresholds measured with tiny.en on the
reference audio (``../shared/audio``), transcribed by the pipeline's own ASR stage:

====================================  ===========================  ==========================
file                                  lowest 10 s word-prob mean   segment confidence
====================================  ===========================  ==========================
jfk.flac                              0.94                         0.76
hotwords.mp3                          0.77                         0.69
two_speakers_sample.wav               0.78                         0.77
stereo_diarization.wav (mixed down)   0.79                         0.56
multilingual.mp3, English half        0.92 (windows before 20 s)   0.91
multilingual.mp3, German half         0.40 to 0.67 (every window)  0.58, 0.41, 0.30
====================================  ===========================  ==========================

``WORD_THRESHOLD`` 0.70 sits between the worst English (0.77) and the best German (0.67) window.
Segment confidence (``exp(avg_logprob)``, one value per 30 s decoding window) cannot separate them
(German 0.58 against stereo English 0.56): it is only the fallback for a backend without word
probabilities, with ``SEGMENT_THRESHOLD`` below the worst English value. ``MIN_STRETCH_S`` keeps one
mumbled phrase from raising the warning.
"""

from __future__ import annotations

from collections.abc import Sequence

from maie.errors import ErrorCode
from maie.schemas import Segment, TaskError, TaskStatus

WINDOW_S = 10.0
"""Length of the sliding window of words whose mean probability is measured."""
MIN_WORDS = 5
"""A window with fewer words is not judged (too little evidence either way)."""
WORD_THRESHOLD = 0.70
"""A window whose mean word probability is below this is low confidence."""
SEGMENT_THRESHOLD = 0.45
"""Without word timestamps: a segment whose confidence is below this is low confidence."""
MIN_STRETCH_S = 10.0
"""A merged low-confidence range shorter than this is not reported."""


def _merge(ranges: list[tuple[float, float, list[float]]]) -> list[tuple[float, float, list[float]]]:
    merged: list[tuple[float, float, list[float]]] = []
    for start, end, values in sorted(ranges, key=lambda r: r[0]):
        if merged and start <= merged[-1][1]:
            last = merged[-1]
            merged[-1] = (last[0], max(last[1], end), last[2] + values)
        else:
            merged.append((start, end, list(values)))
    return merged


def _word_ranges(segments: Sequence[Segment]) -> list[tuple[float, float, list[float]]] | None:
    words = [w for s in segments for w in (s.words or []) if w.probability is not None]
    if not words:
        return None
    low: list[tuple[float, float, list[float]]] = []
    last = 0
    for first, word in enumerate(words):
        last = max(last, first)
        while last + 1 < len(words) and words[last + 1].start < word.start + WINDOW_S:
            last += 1
        window = words[first : last + 1]
        if len(window) < MIN_WORDS:
            continue
        probabilities = [w.probability for w in window if w.probability is not None]
        if sum(probabilities) / len(probabilities) < WORD_THRESHOLD:
            low.append((window[0].start, window[-1].end, probabilities))
    return low


def _segment_ranges(segments: Sequence[Segment]) -> list[tuple[float, float, list[float]]]:
    return [
        (s.start, s.end, [s.confidence])
        for s in segments
        if s.confidence is not None and s.confidence < SEGMENT_THRESHOLD and s.text.strip()
    ]


def low_confidence_ranges(segments: Sequence[Segment]) -> list[dict[str, float]]:
    """``[{start, end, confidence}]`` of the long stretches where recognition confidence collapsed."""
    ranges = _word_ranges(segments)
    if ranges is None:
        ranges = _segment_ranges(segments)
    out = []
    for start, end, values in _merge(ranges):
        if end - start >= MIN_STRETCH_S:
            out.append(
                {"start": round(start, 2), "end": round(end, 2), "confidence": round(sum(values) / len(values), 3)}
            )
    return out


def _clock(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    return f"{minutes // 60}:{minutes % 60:02d}:{secs:02d}" if minutes >= 60 else f"{minutes}:{secs:02d}"


def low_confidence_warning(ranges: Sequence[dict[str, float]], model: str | None) -> TaskError:
    spans = ", ".join(f"{_clock(r['start'])}-{_clock(r['end'])}" for r in ranges)
    cause = f"; {model} knows only English" if model and model.endswith(".en") else ""
    return TaskError(
        code=ErrorCode.LOW_CONFIDENCE.value,
        message=(
            f"the speech recognition is unreliable at {spans} (another language or unclear speech{cause}): "
            "check these parts against the audio"
        ),
        stage=TaskStatus.PROCESSING_ASR.value,
    )
