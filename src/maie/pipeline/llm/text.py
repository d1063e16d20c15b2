"""The transcript text the LLM stages read, and how it is cut into chunks.

A transcript is a list of utterances: (speaker or None, text). With speakers it is rendered as
``S1: ...`` lines, one per turn; without, as one paragraph. Chunks are cut at turn/segment
boundaries, and inside a turn that is too long at sentence boundaries (at word boundaries only when
a sentence itself is too long, e.g. unpunctuated ASR output).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from maie.pipeline.context import TaskContext

_SENTENCE_END = re.compile(r"(?<=[.!?…。？！])\s+")
_LABEL_LINE = re.compile(r"^\s*([A-Z][A-Za-z0-9_]*(?: \d+)?)\s*:\s+(\S.*)$")


@dataclass(frozen=True)
class Utterance:
    """What one speaker (or an unlabelled stretch) said, as text: no times. Not a diarization
    ``SpeakerTurn``, which is a stretch of time."""

    speaker: str | None
    text: str


def render(turns: list[Utterance]) -> str:
    """``S1: ...`` lines when any turn has a speaker, else one paragraph."""
    if any(t.speaker for t in turns):
        return "\n".join(f"{t.speaker}: {t.text}" if t.speaker else t.text for t in turns)
    return " ".join(t.text for t in turns)


def transcript_turns(ctx: TaskContext) -> list[Utterance]:
    """The task's transcript as turns: ASR segments (consecutive segments of one speaker merged),
    or the given text of a text-only task (``S1: ...`` lines recognised when every line has one)."""
    if ctx.transcript is not None:
        names = ctx.options.speaker_names or {}  # renamed by the owner: the LLM reads "Diane", not "S1"
        turns: list[Utterance] = []
        for seg in ctx.transcript.segments:
            text = " ".join(seg.text.split())
            if not text:
                continue
            speaker = names.get(seg.speaker, seg.speaker) if seg.speaker else None
            if speaker and turns and turns[-1].speaker == speaker:
                turns[-1] = Utterance(speaker, f"{turns[-1].text} {text}")
            else:
                turns.append(Utterance(speaker, text))
        return turns
    return parse_text(ctx.options.text or "")


def parse_text(text: str) -> list[Utterance]:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    matches = [_LABEL_LINE.match(line) for line in lines]
    if lines and all(matches):
        return [Utterance(m.group(1), " ".join(m.group(2).split())) for m in matches if m]
    return [Utterance(None, line) for line in lines]


def chunk_turns(turns: list[Utterance], max_chars: int) -> list[list[Utterance]]:
    """Group turns into chunks of at most ``max_chars`` characters of text (a single unbreakable
    word longer than that still makes its own chunk)."""
    pieces = [p for t in turns for p in _split_turn(t, max_chars)]
    chunks: list[list[Utterance]] = []
    size = 0
    for piece in pieces:
        cost = len(piece.text) + (len(piece.speaker) + 3 if piece.speaker else 1)
        if chunks and size + cost <= max_chars:
            chunks[-1].append(piece)
            size += cost
        else:
            chunks.append([piece])
            size = cost
    return chunks


def merge_turns(turns: list[Utterance]) -> list[Utterance]:
    """Join consecutive pieces of one speaker again (a long turn split across chunks)."""
    merged: list[Utterance] = []
    for t in turns:
        if merged and t.speaker and merged[-1].speaker == t.speaker:
            merged[-1] = Utterance(t.speaker, f"{merged[-1].text} {t.text}")
        else:
            merged.append(t)
    return merged


def _split_turn(turn: Utterance, max_chars: int) -> list[Utterance]:
    if len(turn.text) <= max_chars:
        return [turn]
    parts: list[str] = []
    for sentence in _SENTENCE_END.split(turn.text):
        parts.extend([sentence] if len(sentence) <= max_chars else _split_words(sentence, max_chars))
    # Re-pack sentences so a long turn becomes few, full pieces.
    packed: list[str] = []
    for part in parts:
        if packed and len(packed[-1]) + 1 + len(part) <= max_chars:
            packed[-1] = f"{packed[-1]} {part}"
        else:
            packed.append(part)
    return [Utterance(turn.speaker, p) for p in packed]


def _split_words(text: str, max_chars: int) -> list[str]:
    out: list[str] = []
    for word in text.split():
        if out and len(out[-1]) + 1 + len(word) <= max_chars:
            out[-1] = f"{out[-1]} {word}"
        else:
            out.append(word)
    return out
