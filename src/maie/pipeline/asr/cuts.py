"""Where long audio is cut: at its quietest point near each limit, never at a fixed time (a word cut in
two would come back twice or stretched). Used for the blocks the dispatcher hands a backend and for
the 30 s clips of Whisper's batched path."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from maie.pipeline.context import SAMPLE_RATE

CUT_SEARCH_S = 10.0
"""A long stretch is cut at the quietest point within this many seconds before each block's end."""
CUT_FRAME_S = 0.02
"""Energy frame for finding that point."""
CUT_SMOOTH_FRAMES = 10
"""Frames averaged around each candidate (0.2 s): the pause between words, not the closure of a
stop consonant inside one, is what comes out quietest."""


def quietest_point(samples: np.ndarray, low: float, high: float) -> float:
    """The centre of the quietest stretch (CUT_SMOOTH_FRAMES frames of CUT_FRAME_S) in [low, high] s;
    the latest one on a tie, so blocks stay long."""
    frame = round(CUT_FRAME_S * SAMPLE_RATE)
    a, b = max(round(low * SAMPLE_RATE), 0), min(round(high * SAMPLE_RATE), len(samples))
    count = (b - a) // frame
    if count < 1:
        return high
    chunk = samples[a : a + count * frame].astype(np.float64).reshape(count, frame)
    energy = (chunk * chunk).mean(axis=1)
    width = min(CUT_SMOOTH_FRAMES, count)
    smooth = np.convolve(energy, np.ones(width) / width, mode="valid")
    best = len(smooth) - 1 - int(np.argmin(smooth[::-1]))
    return (a + (best + width / 2) * frame) / SAMPLE_RATE


def split_at_pauses(
    samples: np.ndarray, start: float, end: float, block_s: float, search_s: float = CUT_SEARCH_S
) -> list[tuple[float, float]]:
    """``[start, end]`` cut into pieces of at most ``block_s``, each cut at the quietest point in the
    last ``search_s`` before the block's end."""
    pieces: list[tuple[float, float]] = []
    position = start
    while end - position > block_s:
        target = position + block_s
        cut = quietest_point(samples, max(target - search_s, position + block_s / 2), target)
        pieces.append((position, cut))
        position = cut
    pieces.append((position, end))
    return pieces


def blocks(
    samples: np.ndarray, regions: Sequence[tuple[float, float]], block_s: float
) -> list[list[tuple[float, float]]]:
    """Speech regions grouped into blocks of at most ``block_s`` of speech; a region longer than a
    block (with VAD off, the one region is the whole recording) is first cut at its pauses.

    The recognizer sees one block at a time (or the few in flight, decoded in parallel), so its
    working memory (Whisper's log-mel features take about 60 MB per minute of input) does not grow
    with the length of the recording.
    """
    pieces = [p for start, end in regions for p in split_at_pauses(samples, start, end, block_s)]
    groups: list[list[tuple[float, float]]] = []
    current: list[tuple[float, float]] = []
    length = 0.0
    for start, end in pieces:
        if current and length + (end - start) > block_s:
            groups.append(current)
            current, length = [], 0.0
        current.append((start, end))
        length += end - start
    if current:
        groups.append(current)
    return groups
