"""Transcript-level confidence from segment confidences (backend-agnostic)."""

from __future__ import annotations

from maie.schemas import Segment


def weighted_confidence(segments: list[Segment]) -> float | None:
    """Duration-weighted mean of the segment confidences."""
    pairs = [(s.end - s.start, s.confidence) for s in segments if s.confidence is not None]
    total = sum(d for d, _ in pairs)
    if not pairs:
        return None
    if total <= 0:
        return sum(c for _, c in pairs) / len(pairs)
    return sum(d * c for d, c in pairs) / total
