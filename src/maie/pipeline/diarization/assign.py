"""Speaker turns merged into the transcript: who said each word, segments split at speaker changes,
talk time per speaker, and the speaker-attributed text for the LLM stages."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from maie.pipeline.context import SpeakerTurn
from maie.schemas import Segment, Speaker, Word

MIN_SPAN_S = 0.01
"""Zero-length words (Whisper emits some) are looked up as this long."""


class _TurnIndex:
    """Speaker with the most overlap for a time span, over turns sorted by start (may overlap)."""

    def __init__(self, turns: Sequence[SpeakerTurn]) -> None:
        ordered = sorted(turns, key=lambda t: (t[0], t[1]))
        self.starts = np.array([t[0] for t in ordered], dtype=float)
        self.ends = np.array([t[1] for t in ordered], dtype=float)
        self.speakers = [t[2] for t in ordered]
        # Running maximum of ends: scanning back from a span's end can stop once it is <= start.
        self.reach = np.maximum.accumulate(self.ends) if len(ordered) else self.ends

    def speaker(self, start: float, end: float) -> str | None:
        end = max(end, start + MIN_SPAN_S)
        overlap: dict[str, float] = {}
        index = int(np.searchsorted(self.starts, end, side="left")) - 1
        while index >= 0 and self.reach[index] > start:
            shared = min(end, self.ends[index]) - max(start, self.starts[index])
            if shared > 0:
                name = self.speakers[index]
                overlap[name] = overlap.get(name, 0.0) + shared
            index -= 1
        return max(overlap, key=overlap.__getitem__) if overlap else None

    def nearest(self, start: float, end: float) -> str | None:
        if not self.speakers:
            return None
        distance = np.maximum(self.starts - end, 0) + np.maximum(start - self.ends, 0)
        return self.speakers[int(np.argmin(distance))]


def _fill_unknown(spans: list[tuple[float, float]], labels: list[str | None], index: _TurnIndex) -> list[str | None]:
    """Unknown labels take the nearer labelled neighbour's (previous on a tie); with no labelled
    neighbour at all, the nearest turn's."""
    known = [i for i, label in enumerate(labels) if label is not None]
    if not known:
        return [index.nearest(*span) for span in spans]
    out = list(labels)
    positions = np.array(known)
    for i, label in enumerate(labels):
        if label is not None:
            continue
        after = int(np.searchsorted(positions, i))
        before_i = known[after - 1] if after > 0 else None
        after_i = known[after] if after < len(known) else None
        if before_i is None or after_i is None:
            nearest = after_i if before_i is None else before_i
            assert nearest is not None  # `known` is not empty here
            out[i] = labels[nearest]
            continue
        gap_before = spans[i][0] - spans[before_i][1]
        gap_after = spans[after_i][0] - spans[i][1]
        out[i] = labels[before_i] if gap_before <= gap_after else labels[after_i]
    return out


def _smooth(labels: list[str | None]) -> list[str | None]:
    """A lone word between two words of one other speaker is a boundary error at window resolution."""
    out = list(labels)
    for i in range(1, len(out) - 1):
        if out[i - 1] == out[i + 1] != out[i]:
            out[i] = out[i - 1]
    return out


def _join(words: list[Word], joiner: str) -> str:
    if joiner:
        return joiner.join(w.word.strip() for w in words if w.word.strip())
    return "".join(w.word for w in words).strip()


def _split(segment: Segment, words: list[Word]) -> list[Segment]:
    """The segment cut where the words' speaker changes."""
    # Whisper words carry their leading space; other backends' words are joined with one.
    joiner = "" if "".join(w.word for w in words).strip() == segment.text.strip() else " "
    runs: list[list[Word]] = []
    for word in words:
        if runs and runs[-1][-1].speaker == word.speaker:
            runs[-1].append(word)
        else:
            runs.append([word])
    if len(runs) == 1:
        return [segment.model_copy(update={"speaker": runs[0][0].speaker, "words": words})]
    pieces = []
    for number, run in enumerate(runs):
        start = segment.start if number == 0 else run[0].start
        end = segment.end if number == len(runs) - 1 else run[-1].end
        pieces.append(
            segment.model_copy(
                update={"start": start, "end": end, "text": _join(run, joiner), "speaker": run[0].speaker, "words": run}
            )
        )
    return pieces


def assign_speakers(segments: list[Segment], turns: list[SpeakerTurn]) -> list[Segment]:
    """Give every word the speaker whose turn covers most of it, split segments where the speaker
    changes, and fill words or segments no turn covers from their nearer neighbour. Segments
    without words get the speaker with the most overlap. Returns new segments; inputs are unchanged."""
    if not segments:
        return []
    index = _TurnIndex(turns)
    if not turns:
        return [s.model_copy(update={"speaker": None}) for s in segments]

    words = [(i, w) for i, s in enumerate(segments) for w in (s.words or [])]
    word_spans = [(w.start, w.end) for _, w in words]
    word_labels = _smooth(_fill_unknown(word_spans, [index.speaker(*span) for span in word_spans], index))

    bare = [i for i, s in enumerate(segments) if not s.words]
    bare_spans = [(segments[i].start, segments[i].end) for i in bare]
    bare_labels = dict(
        zip(bare, _fill_unknown(bare_spans, [index.speaker(*span) for span in bare_spans], index), strict=True)
    )

    labelled: dict[int, list[Word]] = {}
    for (segment_index, word), label in zip(words, word_labels, strict=True):
        labelled.setdefault(segment_index, []).append(word.model_copy(update={"speaker": label}))

    out: list[Segment] = []
    for i, segment in enumerate(segments):
        if i in labelled:
            out.extend(_split(segment, labelled[i]))
        else:
            out.append(segment.model_copy(update={"speaker": bare_labels[i]}))
    return out


def _union_length(spans: list[tuple[float, float]]) -> float:
    total, reach = 0.0, float("-inf")
    for start, end in sorted(spans):
        if end <= reach:
            continue
        total += end - max(start, reach)
        reach = end
    return total


def speaker_stats(items: Sequence[Segment] | Sequence[SpeakerTurn]) -> list[Speaker]:
    """Each speaker's talk time (overlapping spans of one speaker counted once), in order of first
    appearance. Accepts segments or (start, end, speaker) turns; unlabelled items are skipped."""
    spans: dict[str, list[tuple[float, float]]] = {}
    first: dict[str, float] = {}
    for item in items:
        start, end, speaker = (item.start, item.end, item.speaker) if isinstance(item, Segment) else item
        if speaker is None:
            continue
        spans.setdefault(speaker, []).append((start, end))
        first[speaker] = min(first.get(speaker, start), start)
    order = sorted(spans, key=lambda s: first[s])
    return [Speaker(id=s, talk_time_s=round(_union_length(spans[s]), 3)) for s in order]


def attributed_text(segments: Sequence[Segment]) -> str:
    """``S1: ...`` lines, consecutive segments of one speaker joined; unlabelled text stands alone."""
    lines: list[tuple[str | None, str]] = []
    for segment in segments:
        text = segment.text.strip()
        if not text:
            continue
        if lines and segment.speaker is not None and lines[-1][0] == segment.speaker:
            lines[-1] = (segment.speaker, f"{lines[-1][1]} {text}")
        else:
            lines.append((segment.speaker, text))
    return "\n".join(f"{speaker}: {text}" if speaker else text for speaker, text in lines)
