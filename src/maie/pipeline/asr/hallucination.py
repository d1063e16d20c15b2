"""Remove the typical ways Whisper-style recognisers hallucinate. Pure functions over segments.

Three rules, each conservative so real speech is never thrown away:

1. **Loops inside a segment.** A word or a phrase of up to ``max_ngram`` words repeated
   ``min_repeats`` (4) or more times in a row collapses to one occurrence; the rest of the segment
   is kept ("the the the the the" -> "the"; "I'm sorry I'm sorry I'm sorry I'm sorry" -> "I'm sorry").
   Fewer repeats ("no, no, no", "very very") are left alone, and a segment is never dropped because
   of a repeat.
2. **Looping segments.** ``min_repeats`` or more consecutive segments with the same text keep only
   the first.
3. **Filler phrases.** A segment whose *whole* text is a known filler/credit phrase ("Thank you.",
   "Thanks for watching!", "Subtitles by ...", "Please subscribe", "you", ...) is dropped only if it
   is also suspicious: its confidence is below ``low_confidence`` or its audio is near-silent
   (RMS below ``silence_dbfs``). With neither confidence nor audio to judge by, it is kept. The same
   phrase inside longer speech, or said clearly, stays. A segment with no words at all (only
   punctuation or music marks such as "..." or "♪") is always dropped.

Each collapsed loop and each dropped segment counts as one removal.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence

import numpy as np

from maie.schemas import Segment, Word

MIN_REPEATS = 4
MAX_NGRAM = 8
LOW_CONFIDENCE = 0.5
SILENCE_DBFS = -45.0

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


def filter_hallucinations(
    segments: Sequence[Segment],
    *,
    audio: np.ndarray | None = None,
    sample_rate: int = 16_000,
    min_repeats: int = MIN_REPEATS,
    low_confidence: float = LOW_CONFIDENCE,
    silence_dbfs: float = SILENCE_DBFS,
) -> tuple[list[Segment], int]:
    """Apply the three rules of this module; return the cleaned segments and the removal count.

    ``audio``: the samples the segment times refer to, used to tell near-silence.
    """
    removed = 0
    cleaned: list[Segment] = []
    previous_key: str | None = None
    run = 0
    for segment in segments:
        segment, loops = clean_segment(segment, min_repeats)
        removed += loops
        text = segment.text.strip()
        if not text:
            removed += 1
            continue
        if is_filler_text(text) and (
            not normalise(text) or is_suspicious(segment, audio, sample_rate, low_confidence, silence_dbfs)
        ):
            removed += 1
            continue
        key = normalise(text)
        run = run + 1 if key == previous_key else 1
        previous_key = key
        cleaned.append(segment if segment.text == text else segment.model_copy(update={"text": text}))
        if run >= min_repeats:
            # The run just reached min_repeats: drop its repeats (all but the first) ...
            if run == min_repeats:
                del cleaned[-(min_repeats - 1) :]
                removed += min_repeats - 1
            else:  # ... and every later one.
                cleaned.pop()
                removed += 1
    return cleaned, removed
