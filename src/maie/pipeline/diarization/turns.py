"""Labelled windows -> speaker turns, and the S1, S2, ... naming."""

from __future__ import annotations

import numpy as np

from maie.pipeline.context import LabelledSpan, SpeakerTurn


def windows_to_turns(
    regions: list[tuple[float, float]], spans: np.ndarray, labels: np.ndarray
) -> list[tuple[float, float, int]]:
    """Each window owns its region's time between the midpoints to its neighbours' centres; a region
    without windows (too short to embed) takes the label of the window nearest in time."""
    if len(spans) == 0:
        return []
    centers = spans.mean(axis=1)
    turns: list[tuple[float, float, int]] = []
    for start, end in regions:
        inside = np.flatnonzero((centers >= start) & (centers <= end))
        if len(inside) == 0:
            middle = (start + end) / 2
            nearest = int(np.argmin(np.abs(centers - middle)))
            _append(turns, start, end, int(labels[nearest]))
            continue
        bounds = [start, *((centers[inside[:-1]] + centers[inside[1:]]) / 2), end]
        for index, window in enumerate(inside):
            _append(turns, float(bounds[index]), float(bounds[index + 1]), int(labels[window]))
    return turns


def _append(turns: list[tuple[float, float, int]], start: float, end: float, label: int) -> None:
    if end <= start:
        return
    if turns and turns[-1][2] == label and abs(turns[-1][1] - start) < 1e-6:
        turns[-1] = (turns[-1][0], end, label)
    else:
        turns.append((start, end, label))


def name_speakers(turns: list[LabelledSpan]) -> list[SpeakerTurn]:
    """Rename speakers S1, S2, ... in order of first appearance; turns sorted by start."""
    names: dict[int | str, str] = {}
    out: list[SpeakerTurn] = []
    for start, end, label in sorted(turns, key=lambda t: (t[0], t[1])):
        name = names.setdefault(label, f"S{len(names) + 1}")
        out.append((round(float(start), 3), round(float(end), 3), name))
    return out
