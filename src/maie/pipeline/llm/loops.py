"""Repetition loops in LLM output, cut: small models repeat a sentence, a phrase or a list item
until the token limit (SmolLM2 wrote one interview sentence 15 times).

What counts as a loop, keeping the first occurrence each time:

* a sentence of ``MIN_SENTENCE_WORDS``+ words said again anywhere in the same text;
* a run of the same words back to back: a phrase of ``LONG_PHRASE_WORDS``+ words twice, a shorter
  one ``MIN_RUN`` times (``the the the``);
* a list item equal to an earlier item of the same list (casefolded, punctuation ignored), as long as
  the list keeps the schema's ``minItems``.

With a ``source`` (the clean transcript's input), a repeat is cut only when the output has it more
often than the source: a speaker who really said "hello hello hello" is not an LLM loop.
"""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass
from typing import Any

MIN_SENTENCE_WORDS = 3
LONG_PHRASE_WORDS = 4
MIN_RUN = 3
MAX_PHRASE_WORDS = 24

_SENTENCE = re.compile(r"[^.!?…\n]+(?:[.!?…]+|$)\s*")
_PUNCT = re.compile(r"[^\w\s]+")


@dataclass(frozen=True)
class LoopCut:
    path: str
    """JSON pointer of the cut leaf or list (empty for plain text)."""
    repeats: int
    """How many repeated copies were removed."""


def _norm(text: str) -> str:
    return " ".join(_PUNCT.sub(" ", text.casefold()).split())


class Source:
    """The text an output was made from, normalised once (a transcript can be long)."""

    def __init__(self, text: str) -> None:
        self.norm = f" {_norm(text)} "


def cut_text(text: str, source: str | Source | None = None) -> tuple[str, int]:
    """The text with repeated sentences and back-to-back repeated phrases removed, and how many
    repeats were removed."""
    if isinstance(source, str):
        source = Source(source)
    source_norm = source.norm if source is not None else None

    def allowed(unit: str, times_in_output: int) -> bool:
        """Keep a repeat the source itself has (only with a source)."""
        return source_norm is not None and source_norm.count(f" {unit} ") >= times_in_output

    removed = 0
    # 1. repeated sentences
    sentences = _SENTENCE.findall(text)
    if len(sentences) > 1:
        seen: dict[str, int] = {}
        kept: list[str] = []
        for s in sentences:
            key = _norm(s)
            if len(key.split()) >= MIN_SENTENCE_WORDS and key in seen:
                seen[key] += 1
                if not allowed(key, seen[key]):
                    removed += 1
                    continue
            else:
                seen.setdefault(key, 1)
            kept.append(s)
        if removed:
            text = "".join(kept).rstrip()
    # 2. back-to-back repeated phrases
    words = text.split()
    keys = [_norm(w) for w in words]
    out: list[str] = []
    i = 0
    cut_here = 0
    while i < len(words):
        best_n, best_k = 0, 1
        for n in range(1, min(MAX_PHRASE_WORDS, (len(words) - i) // 2) + 1):
            unit = keys[i : i + n]
            if not all(unit):
                continue
            k = 1
            while keys[i + k * n : i + (k + 1) * n] == unit:
                k += 1
            if k > 1 and (k >= MIN_RUN or n >= LONG_PHRASE_WORDS) and k * n > best_k * best_n:
                phrase = " ".join(unit)
                if not allowed(" ".join([phrase] * k), 1):
                    best_n, best_k = n, k
        if best_n:
            out.extend(words[i : i + best_n])
            cut_here += best_k - 1
            i += best_n * best_k
        else:
            out.append(words[i])
            i += 1
    if cut_here:
        removed += cut_here
        text = " ".join(out)
    return text, removed


def cut_data(
    data: dict[str, Any], schema: dict[str, Any], source: str | None = None
) -> tuple[dict[str, Any], list[LoopCut]]:
    """A copy of a summary with loops cut in every string and list (see the module docstring);
    ``source``: the transcript, whose own repeats ("hello hello hello") are kept in strings."""
    src = Source(source) if source is not None else None
    from maie.pipeline.llm.grounding import pointer

    cuts: list[LoopCut] = []

    def walk(value: Any, sch: dict[str, Any], path: list[str | int]) -> Any:
        if isinstance(value, dict):
            props = sch.get("properties", {}) if isinstance(sch, dict) else {}
            return {k: walk(v, props.get(k, {}), [*path, k]) for k, v in value.items()}
        if isinstance(value, list):
            items = sch.get("items", {}) if isinstance(sch, dict) else {}
            items = items if isinstance(items, dict) else {}
            new = [walk(v, items, [*path, i]) for i, v in enumerate(value)]
            min_items = int(sch.get("minItems", 0)) if isinstance(sch, dict) else 0
            seen: set[str] = set()
            kept: list[Any] = []
            dropped = 0
            for item in new:
                key = _norm(item) if isinstance(item, str) else repr(item)
                if key in seen and len(new) - dropped > min_items:
                    dropped += 1
                    continue
                seen.add(key)
                kept.append(item)
            if dropped:
                cuts.append(LoopCut(pointer(path), dropped))
            return kept
        if isinstance(value, str) and not (isinstance(sch, dict) and "enum" in sch):
            text, removed = cut_text(value, src)
            if removed and text.strip():
                min_len = int(sch.get("minLength", 0)) if isinstance(sch, dict) else 0
                if len(text) >= min_len:
                    cuts.append(LoopCut(pointer(path), removed))
                    return text
            return value
        return value

    return walk(copy.deepcopy(data), schema, []), cuts
