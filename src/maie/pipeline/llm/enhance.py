"""Clean transcript: punctuation, casing and disfluencies fixed by the LLM, meaning unchanged.

The text goes in chunks (turn, segment and sentence boundaries). A chunk whose output drifts from
its input (length or edit distance out of bounds, speaker labels lost, JSON instead of text, cut
off at the token limit) keeps its raw text and is counted in ``chunks_kept_raw``. Looping
sentences or phrases the input did not have are cut from a chunk's output before that check
(``LLM_LOOP_CUT``); when every chunk is kept raw the task says so (``ENHANCE_UNCHANGED``).
"""

from __future__ import annotations

import re

from rapidfuzz.distance import Levenshtein

from maie.errors import ErrorCode, failures_as
from maie.pipeline.context import Enhancement, LlmUsage, TaskContext
from maie.pipeline.llm.client import LlmClient, Message, add_reply
from maie.pipeline.llm.factory import get_llm, report_progress, stage_params
from maie.pipeline.llm.loops import cut_text
from maie.pipeline.llm.text import Utterance, chunk_turns, merge_turns, render, transcript_turns
from maie.schemas import TaskError, TaskStatus

MIN_LENGTH_RATIO = 0.6
"""Cleaned/raw length (letters and digits only) below this: the model dropped content."""
MAX_LENGTH_RATIO = 1.3
"""Above this: the model added content (commentary, invention, repetition)."""
MAX_WORD_EDIT = 0.35
"""Normalised edit distance of the words (casing and punctuation ignored) above this: meaning changed."""

SYSTEM_PROMPT = (
    "You correct speech-recognition transcripts. Add punctuation and capital letters, remove filler "
    "words (um, uh, you know) and repeated false starts. Keep every other word, in the same order and "
    "the same language. Do not summarise, explain, answer or translate. Keep speaker labels such as "
    '"S1:" at the start of their lines. Reply with the corrected transcript only.'
)
# One worked example: small models follow a demonstration better than rules.
_EXAMPLE: list[Message] = [
    {"role": "user", "content": "um so i i think we should uh ship it on monday right"},
    {"role": "assistant", "content": "So I think we should ship it on Monday, right?"},
]
_EXAMPLE_LABELLED: list[Message] = [
    {"role": "user", "content": "S1: uh did you send the report\nS2: yes yes i sent it this morning"},
    {"role": "assistant", "content": "S1: Did you send the report?\nS2: Yes, I sent it this morning."},
]
_PREAMBLE = re.compile(r"^\s*(here is|here's|corrected|the corrected|sure)[^\n]*:\s*\n", re.IGNORECASE)
_NOT_WORD = re.compile(r"[^\w\s]+")


def enhance(ctx: TaskContext) -> Enhancement:
    """Clean the task's transcript. Raises MaieError (ENHANCE_FAILED, LLM_UNAVAILABLE) on failure,
    never a bare exception, so the caller can keep the raw transcript."""
    with failures_as(ErrorCode.ENHANCE_FAILED, "clean transcript"):
        return _enhance(ctx)


def _enhance(ctx: TaskContext) -> Enhancement:
    llm_settings = ctx.settings.llm
    params = stage_params(llm_settings, "enhance")
    turns = transcript_turns(ctx)
    raw_text = render(turns)
    if not raw_text.strip():  # silence: the clean transcript of nothing is empty, no LLM needed
        return Enhancement(text="", edit_rate=0.0, chunks=0, chunks_kept_raw=0, usage=LlmUsage("", None))
    client = get_llm(ctx, "enhance")
    usage = LlmUsage(
        model="",
        base_url=client.base_url,
        params={
            "temperature": params.temperature,
            "top_k": params.top_k,
            "max_tokens": params.max_tokens,
            "chunk_chars": llm_settings.enhance_chunk_chars,
        },
    )
    chunks = chunk_turns(turns, llm_settings.enhance_chunk_chars)
    cleaned: list[Utterance] = []
    kept_raw = 0
    loops = 0
    for i, chunk in enumerate(chunks):
        report_progress(ctx, "enhance", i / len(chunks))
        result, cut = _clean_chunk(
            client, chunk, params.max_tokens, params.temperature, params.top_k, usage, ctx.deadline
        )
        loops += cut
        if result is None:
            kept_raw += 1
            cleaned.extend(chunk)
        else:
            cleaned.extend(result)
    report_progress(ctx, "enhance", 1.0)
    text = render(merge_turns(cleaned))
    enhancement = Enhancement(
        text=text,
        edit_rate=edit_rate(raw_text, text),
        chunks=len(chunks),
        chunks_kept_raw=kept_raw,
        usage=usage,
        loops_cut=loops,
    )
    stage = TaskStatus.PROCESSING_LLM.value
    if loops:
        ctx.warnings.append(
            TaskError(
                code=ErrorCode.LLM_LOOP_CUT.value,
                message=f"the clean transcript repeated itself: {loops} repeated sentences or phrases cut",
                stage=stage,
            )
        )
    if enhancement.unchanged:
        ctx.warnings.append(
            TaskError(
                code=ErrorCode.ENHANCE_UNCHANGED.value,
                message=f"the LLM's output strayed from the transcript in all {len(chunks)} chunks, so each "
                "kept its raw text: the clean transcript is the raw transcript, unchanged",
                stage=stage,
            )
        )
    return enhancement


def edit_rate(raw: str, clean: str) -> float:
    """Character edits (Levenshtein) from raw to clean transcript per raw character."""
    if not raw:
        return 0.0
    return round(Levenshtein.distance(raw, clean) / len(raw), 4)


def _clean_chunk(
    client: LlmClient,
    chunk: list[Utterance],
    max_tokens: int,
    temperature: float,
    top_k: int | None,
    usage: LlmUsage,
    deadline: float | None = None,
) -> tuple[list[Utterance] | None, int]:
    """The cleaned turns, or None when the output drifted (the caller keeps the raw chunk), and
    how many looping repeats were cut from the output."""
    labelled = any(t.speaker for t in chunk)
    source = render(chunk)
    messages: list[Message] = [
        {"role": "system", "content": SYSTEM_PROMPT},
        *(_EXAMPLE_LABELLED if labelled else _EXAMPLE),
        {"role": "user", "content": source},
    ]
    # A cleaned chunk is about as long as its input: a model that loops is cut off early (and
    # the chunk kept raw) instead of running on to max_tokens.
    budget = min(max_tokens, len(source) // 2 + 64)
    reply = client.chat(
        messages, max_tokens=budget, temperature=temperature, top_k=top_k, json_schema=None, deadline=deadline
    )
    add_reply(usage, reply)
    if reply.finish_reason == "length":
        return None, 0
    output = _unwrap(reply.text)
    cut = 0
    if labelled:
        turns = _parse_output(output, chunk)
        if turns is not None:
            cut_turns = []
            for turn, raw_turn in zip(turns, chunk, strict=True):
                text, n = cut_text(turn.text, source=raw_turn.text)
                cut += n
                cut_turns.append(Utterance(turn.speaker, text))
            turns = cut_turns
    else:
        text, cut = cut_text(" ".join(output.split()), source=source)
        turns = [Utterance(None, text)]
    if turns is None or drifted(source, render(turns)):
        return None, 0  # the raw chunk is kept: nothing of the loop reaches the result
    return turns, cut


def drifted(raw: str, clean: str) -> bool:
    """Whether a cleaned chunk strayed too far from its input to be trusted."""
    if not clean.strip() or (clean.lstrip()[:1] in "{[" and raw.lstrip()[:1] not in "{["):
        return True
    norm_raw, norm_clean = _normalise(raw), _normalise(clean)
    if not norm_raw:
        return norm_raw != norm_clean
    ratio = len(norm_clean) / len(norm_raw)
    if not MIN_LENGTH_RATIO <= ratio <= MAX_LENGTH_RATIO:
        return True
    return Levenshtein.normalized_distance(norm_raw.split(), norm_clean.split()) > MAX_WORD_EDIT


def _normalise(text: str) -> str:
    return " ".join(_NOT_WORD.sub(" ", text.casefold()).split())


def _unwrap(text: str) -> str:
    """Drop what models wrap around an answer: code fences, quotes, a "Here is ..." line."""
    text = text.strip()
    if text.startswith("```"):
        text = text.strip("`").partition("\n")[2] if "\n" in text else text.strip("`")
    text = _PREAMBLE.sub("", text, count=1).strip()
    if len(text) > 1 and text[0] == text[-1] == '"':
        text = text[1:-1].strip()
    return text


def _parse_output(output: str, chunk: list[Utterance]) -> list[Utterance] | None:
    """Turns of a labelled chunk, or None unless the same speakers come back in the same order."""
    lines = [line.strip() for line in output.splitlines() if line.strip()]
    turns: list[Utterance] = []
    for line in lines:
        label, sep, text = line.partition(":")
        if sep and label.strip() in {t.speaker for t in chunk if t.speaker}:
            turns.append(Utterance(label.strip(), " ".join(text.split())))
        elif turns:  # a turn the model wrapped onto two lines
            turns[-1] = Utterance(turns[-1].speaker, f"{turns[-1].text} {' '.join(line.split())}")
        else:
            return None
    if [t.speaker for t in turns] != [t.speaker for t in chunk]:
        return None
    return turns
