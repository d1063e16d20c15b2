"""Remove the typical ways Whisper-style recognisers hallucinate. Pure functions over segments.

Nothing is removed for being repeated alone: people do say the same sentence again, and a speech
read twice must come back twice. A whole segment goes only when the evidence says the model
invented it (``invented``): the recogniser's own signals (a low average log-probability together
with a high no-speech probability or a looping compression ratio), the audio under it being
near-silent, or VAD having found no speech there. Three rules:

1. **Loops inside a segment.** A word or a phrase of up to ``max_ngram`` words repeated
   ``min_repeats`` (4) or more times in a row collapses to one occurrence; the rest of the segment
   is kept ("the the the the the" -> "the"; "I'm sorry I'm sorry I'm sorry I'm sorry" -> "I'm sorry").
   Fewer repeats ("no, no, no", "very very") are left alone, and a segment is never dropped because
   of a repeat.
2. **Looping segments.** In a run of ``min_repeats`` or more consecutive segments with the same
   text, the repeats after the first are dropped when ``invented`` says so. Confident repeats over
   speech are real speech and stay.
3. **Filler phrases.** A segment whose *whole* text is a known filler/credit phrase ("Thank you.",
   "Thanks for watching!", "Subtitles by ...", "Please subscribe", "you", ...) is dropped only if it
   is also suspicious: its confidence is below ``low_confidence`` or its audio is near-silent
   (RMS below ``silence_dbfs``). With neither confidence nor audio to judge by, it is kept. The same
   phrase inside longer speech, or said clearly, stays. A segment with no words at all (only
   punctuation or music marks such as "..." or "♪") is always dropped.

Each collapsed loop and each dropped segment counts as one removal, by rule: ``loop`` (rule 1),
``repeat`` (rule 2), ``filler`` (rule 3) and ``empty`` (no words).
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence

import numpy as np

from maie.pipeline.context import SegmentSignals
from maie.schemas import Segment, Word

MIN_REPEATS = 4
MAX_NGRAM = 8
LOW_CONFIDENCE = 0.5
SILENCE_DBFS = -45.0
NO_SPEECH_PROB = 0.6
"""With ``avg_logprob`` below LOW_LOGPROB: Whisper's own "this window held no speech" rule."""
LOW_LOGPROB = -1.0
HIGH_COMPRESSION = 2.4
"""Compression ratio above which Whisper itself treats output as a decoding loop."""
MIN_SPEECH_OVERLAP = 0.2
"""Fraction of a segment VAD must have found speech under for it to count as spoken."""

FILLER_PHRASES = frozenset(
    {
        "you",
        "thank you",
        "thank you very much",
        "thanks",
        "thank you so much",
        "thank you for watching",
        "thanks for watching",
        "thank you for listening",
        "thanks for listening",
        "thank you for watching and see you next time",
        "see you next time",
        "see you in the next video",
        "please subscribe",
        "please subscribe to my channel",
        "subscribe to my channel",
        "like and subscribe",
        "please like and subscribe",
        "don't forget to like and subscribe",
        "bye",
        "bye bye",
        "okay",
        "music",
        "applause",
        "silence",
        "blank audio",
        "no speech",
        "the end",
    }
)
_CREDIT = re.compile(
    r"^(?:(?:english\s+)?(?:subtitles|subtitle|captions|captioning|transcription|transcript|"
    r"transcribed|translated|translation|subtitled|sync(?:ed)?|corrections)\b.*\bby\b|"
    r".*\bamara\.?org\b|.*\bwww\.[a-z0-9-]+\.[a-z]+)"
)
_PUNCT = re.compile(r"[^\w\s']+")
_SPACE = re.compile(r"\s+")


def normalise(text: str) -> str:
    """Lower case, punctuation and music marks removed, single spaces."""
    return _SPACE.sub(" ", _PUNCT.sub(" ", text.lower())).strip()


def is_filler_text(text: str) -> bool:
    """The whole text is a known filler, credit or non-speech phrase (or has no words at all)."""
    if _CREDIT.match(text.strip().lower()):
        return True
    norm = normalise(text)
    return norm == "" or norm in FILLER_PHRASES


def collapse_loops(
    keys: Sequence[str], min_repeats: int = MIN_REPEATS, max_ngram: int = MAX_NGRAM
) -> tuple[list[int], int]:
    """Indices of ``keys`` to keep after collapsing runs of a repeated n-gram, and how many runs.

    At each position the n-gram (1..max_ngram) repeated ``min_repeats``+ times that covers the most
    tokens wins; one occurrence of it is kept.
    """
    keep: list[int] = []
    loops = 0
    i, total = 0, len(keys)
    while i < total:
        best_n, best_count = 0, 0
        for n in range(1, max_ngram + 1):
            if i + n * min_repeats > total:
                break
            unit = list(keys[i : i + n])
            if not all(unit):
                continue
            count = 1
            while list(keys[i + count * n : i + (count + 1) * n]) == unit:
                count += 1
            if count >= min_repeats and n * count > best_n * best_count:
                best_n, best_count = n, count
        if best_n:
            keep.extend(range(i, i + best_n))
            i += best_n * best_count
            loops += 1
        else:
            keep.append(i)
            i += 1
    return keep, loops


def clean_segment(segment: Segment, min_repeats: int = MIN_REPEATS) -> tuple[Segment, int]:
    """The segment with repeated-phrase loops collapsed (words kept in step), and the loop count."""
    if segment.words:
        keep, loops = collapse_loops([normalise(w.word) for w in segment.words], min_repeats)
        if not loops:
            return segment, 0
        words: list[Word] = [segment.words[i] for i in keep]
        text = "".join(w.word for w in words).strip()
        return segment.model_copy(update={"text": text, "words": words}), loops
    tokens = segment.text.split()
    keep, loops = collapse_loops([normalise(t) for t in tokens], min_repeats)
    if not loops:
        return segment, 0
    return segment.model_copy(update={"text": " ".join(tokens[i] for i in keep)}), loops


def segment_dbfs(segment: Segment, audio: np.ndarray, sample_rate: int) -> float:
    """RMS level of the segment's audio in dBFS (-inf for digital silence)."""
    start = max(int(segment.start * sample_rate), 0)
    end = min(math.ceil(segment.end * sample_rate), len(audio))
    if end <= start:
        return -math.inf
    chunk = audio[start:end].astype(np.float64)
    rms = float(np.sqrt(np.mean(chunk * chunk)))
    return 20 * math.log10(rms) if rms > 0 else -math.inf


def is_suspicious(
    segment: Segment,
    audio: np.ndarray | None,
    sample_rate: int,
    low_confidence: float = LOW_CONFIDENCE,
    silence_dbfs: float = SILENCE_DBFS,
) -> bool:
    """Low confidence, or the segment's audio is near silence."""
    if segment.confidence is not None and segment.confidence < low_confidence:
        return True
    return audio is not None and segment_dbfs(segment, audio, sample_rate) < silence_dbfs


def speech_overlap(segment: Segment, speech: Sequence[tuple[float, float]]) -> float:
    """Fraction of the segment's time inside the VAD speech regions."""
    length = segment.end - segment.start
    if length <= 0:
        return 1.0
    inside = sum(max(0.0, min(segment.end, e) - max(segment.start, s)) for s, e in speech)
    return min(inside / length, 1.0)


def invented(
    segment: Segment,
    signal: SegmentSignals | None,
    audio: np.ndarray | None,
    sample_rate: int,
    speech: Sequence[tuple[float, float]] | None,
    silence_dbfs: float = SILENCE_DBFS,
) -> bool:
    """Whether the evidence says the model made this segment up (not whether it is repeated)."""
    # The model was unsure, and either thought the window silent or looped (its own fallback rules,
    # which already retried at higher temperatures). A high compression ratio alone is no
    # evidence: faster-whisper computes it over the whole 30 s window, and a window of a sentence
    # said three times compresses as well as a loop does.
    if (
        signal is not None
        and signal.avg_logprob < LOW_LOGPROB
        and (signal.no_speech_prob > NO_SPEECH_PROB or signal.compression_ratio > HIGH_COMPRESSION)
    ):
        return True
    if audio is not None and segment_dbfs(segment, audio, sample_rate) < silence_dbfs:
        return True
    return speech is not None and speech_overlap(segment, speech) < MIN_SPEECH_OVERLAP


class HallucinationFilter:
    """The three rules of this module applied as segments arrive, so each kept segment can be passed
    on (streamed) while recognition goes on: ``feed`` returns the segments now known to stay, ``flush``
    the rest once there are no more. Fed all at once, the result is ``filter_hallucinations``'s.

    Rules 1 and 3 look at one segment. Rule 2 looks at runs of equal text: the first of a run always
    stays, so it is passed on at once; a repeat is held back only while the run is shorter than
    ``min_repeats`` (then all stay) and decided alone once it is that long. Only equal-text neighbours
    wait, and only until the run's end or its ``min_repeats``-th segment.
    """

    def __init__(
        self,
        *,
        audio: np.ndarray | None = None,
        sample_rate: int = 16_000,
        speech: Sequence[tuple[float, float]] | None = None,
        min_repeats: int = MIN_REPEATS,
        low_confidence: float = LOW_CONFIDENCE,
        silence_dbfs: float = SILENCE_DBFS,
    ) -> None:
        self.audio, self.sample_rate, self.speech = audio, sample_rate, speech
        self.min_repeats, self.low_confidence, self.silence_dbfs = min_repeats, low_confidence, silence_dbfs
        self.removed: dict[str, int] = {}
        """Removals so far, by rule."""
        self._key: str | None = None
        self._run = 0
        self._held: list[tuple[Segment, bool]] = []
        """Repeats of the current run, each with whether the evidence says it was invented."""

    def _count(self, rule: str, n: int = 1) -> None:
        if n:
            self.removed[rule] = self.removed.get(rule, 0) + n

    def feed(self, original: Segment, signal: SegmentSignals | None = None) -> list[Segment]:
        """One more segment (in time order) and its recogniser signals; the segments now decided kept."""
        audio, rate, speech, silence = self.audio, self.sample_rate, self.speech, self.silence_dbfs
        segment, loops = clean_segment(original, self.min_repeats)
        self._count("loop", loops)
        text = segment.text.strip()
        key = normalise(text)
        if not key:
            self._count("empty")
            return []
        if is_filler_text(text) and (
            is_suspicious(segment, audio, rate, self.low_confidence, silence)
            or invented(segment, signal, audio, rate, speech, silence)
        ):
            self._count("filler")
            return []
        if segment.text != text:
            segment = segment.model_copy(update={"text": text})
        fake = invented(segment, signal, audio, rate, speech, silence)
        if key != self._key:
            out = self.flush()  # the run before ended short of a loop: all of it stays
            self._key, self._run = key, 1
            return [*out, segment]
        self._run += 1
        self._held.append((segment, fake))
        if self._run < self.min_repeats:
            return []
        # A loop of segments: each repeat goes only if the evidence says it was invented.
        kept = [repeat for repeat, invented_ in self._held if not invented_]
        self._count("repeat", len(self._held) - len(kept))
        self._held = []
        return kept

    def flush(self) -> list[Segment]:
        """The segments held back (the repeats of a run still shorter than a loop): they stay."""
        out = [segment for segment, _ in self._held]
        self._held = []
        return out


def filter_hallucinations(
    segments: Sequence[Segment],
    *,
    signals: Sequence[SegmentSignals] | None = None,
    audio: np.ndarray | None = None,
    sample_rate: int = 16_000,
    speech: Sequence[tuple[float, float]] | None = None,
    min_repeats: int = MIN_REPEATS,
    low_confidence: float = LOW_CONFIDENCE,
    silence_dbfs: float = SILENCE_DBFS,
) -> tuple[list[Segment], dict[str, int]]:
    """Apply the three rules of this module; return the cleaned segments and removals by rule.

    ``signals``: the recogniser's per-segment signals, aligned with ``segments`` (None: none given).
    ``audio``: the samples the segment times refer to, used to tell near-silence.
    ``speech``: VAD speech regions on that timeline (None: VAD was off).
    """
    if signals is not None and len(signals) != len(segments):
        raise ValueError("signals must be aligned with segments")
    stream = HallucinationFilter(
        audio=audio,
        sample_rate=sample_rate,
        speech=speech,
        min_repeats=min_repeats,
        low_confidence=low_confidence,
        silence_dbfs=silence_dbfs,
    )
    out: list[Segment] = []
    for index, segment in enumerate(segments):
        out += stream.feed(segment, signals[index] if signals is not None else None)
    return out + stream.flush(), stream.removed
