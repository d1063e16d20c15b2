"""Long real speech whose every word is known: the reference recordings of ``../shared/audio`` whose
transcript its README gives, laid end to end in a seeded random order with pauses of varied length.

The clips: JFK's sentence, each channel of ``stereo_diarization.wav``, and the English half of
``multilingual.mp3`` (its first 29.5 s; the German starts at 31 s after digital silence). The README
gives that passage's opening words: it is the permission paragraph of the MIT licence and the notice
sentence after it, read without the parenthesis ``(the "Software")`` (there is no pause in the
recording for it: tiny.en's word timestamps run straight from "files" to "to deal").

Used by the tests and by ``bench/asr.py`` to measure word error rate against the true words (not against
another recogniser). The order and the pauses vary so that no 30 s Whisper window holds the same text
as the next, as real speech would not.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

SAMPLE_RATE = 16_000
JFK = "And so my fellow Americans, ask not what your country can do for you, ask what you can do for your country."
LEFT = "He began a confused complaint against the wizard, who had vanished behind the curtain on the left."
RIGHT = "The horizon seems extremely distant."
MIT = (
    "Permission is hereby granted, free of charge, to any person obtaining a copy of this software and associated "
    "documentation files, to deal in the Software without restriction, including without limitation the rights "
    "to use, copy, modify, merge, publish, distribute, sublicense, and/or sell copies of the Software, and to "
    "permit persons to whom the Software is furnished to do so, subject to the following conditions: The above "
    "copyright notice and this permission notice shall be included in all copies or substantial portions of the "
    "Software."
)
ENGLISH_HALF_S = 29.5
"""multilingual.mp3: the English passage ends at 29.1 s; silence until the German at 31 s."""


@dataclass(frozen=True)
class Mix:
    samples: np.ndarray
    """16 kHz mono float32."""
    reference: list[str]
    """The words spoken, in order (normalised by ``words``)."""
    clips: list[tuple[float, float, str]]
    """(start s, end s, text) of each clip, in order."""

    @property
    def duration_s(self) -> float:
        return len(self.samples) / SAMPLE_RATE


def words(text: str) -> list[str]:
    """Lower case, punctuation removed, split on spaces (the same normalisation for reference and output)."""
    return re.sub(r"[^a-z0-9' ]+", " ", text.lower()).split()


def clips(audio_dir: Path) -> list[tuple[np.ndarray, str]]:
    """The recordings with a full reference transcript, trimmed of leading and trailing silence."""
    from faster_whisper import decode_audio

    left, right = decode_audio(str(audio_dir / "stereo_diarization.wav"), sampling_rate=SAMPLE_RATE, split_stereo=True)
    jfk = decode_audio(str(audio_dir / "jfk.flac"), sampling_rate=SAMPLE_RATE)
    both_halves = decode_audio(str(audio_dir / "multilingual.mp3"), sampling_rate=SAMPLE_RATE)
    mit = both_halves[: int(ENGLISH_HALF_S * SAMPLE_RATE)]
    return [(_trim(jfk), JFK), (_trim(left), LEFT), (_trim(right), RIGHT), (_trim(mit), MIT)]


def _trim(samples: np.ndarray, floor_db: float = 35.0, pad_s: float = 0.15) -> np.ndarray:
    """Cut the silence before the first and after the last frame within ``floor_db`` of the loudest."""
    frame = SAMPLE_RATE // 50
    usable = samples[: len(samples) // frame * frame].reshape(-1, frame)
    energy = 10 * np.log10((usable.astype(np.float64) ** 2).mean(axis=1) + 1e-10)
    loud = np.flatnonzero(energy > energy.max() - floor_db)
    pad = int(pad_s * SAMPLE_RATE)
    start, end = max(loud[0] * frame - pad, 0), min((loud[-1] + 1) * frame + pad, len(samples))
    return samples[start:end].astype(np.float32)


def build(audio_dir: Path, seconds: float, seed: int = 16) -> Mix:
    """At least ``seconds`` of the clips in a seeded random order (never the same clip twice in a row),
    with a pause of 0.3 to 1.2 s between them and, one time in ten, a longer one (2 to 5 s)."""
    rng = np.random.default_rng(seed)
    sources = clips(audio_dir)
    parts: list[np.ndarray] = []
    reference: list[str] = []
    placed: list[tuple[float, float, str]] = []
    position = 0
    previous = -1
    while position < seconds * SAMPLE_RATE:
        index = int(rng.integers(len(sources) - 1))
        if index >= previous >= 0:
            index += 1  # skip the clip just played
        previous = index
        samples, text = sources[index]
        placed.append((position / SAMPLE_RATE, (position + len(samples)) / SAMPLE_RATE, text))
        parts.append(samples)
        reference += words(text)
        position += len(samples)
        pause = rng.uniform(2.0, 5.0) if rng.random() < 0.1 else rng.uniform(0.3, 1.2)
        gap = np.zeros(int(pause * SAMPLE_RATE), np.float32)
        parts.append(gap)
        position += len(gap)
    return Mix(np.concatenate(parts), reference, placed)


def wer(hypothesis: list[str], reference: list[str]) -> float:
    """Word error rate: word-level edit distance over the reference length."""
    from rapidfuzz.distance import Levenshtein

    return Levenshtein.distance(hypothesis, reference) / max(len(reference), 1)
