"""Structured summary: a template's prompt, its JSON Schema enforced while decoding and validated after.

An invalid reply (truncated, or failing the schema when the server could not constrain it) is
retried with the validation error fed back. Transcripts longer than ``sum_chunk_chars`` are
summarised map-reduce: each part into the template's schema, then the partial summaries into one.
"""

from __future__ import annotations

import json
from typing import Any

from maie.errors import ErrorCode, MaieError, failures_as
from maie.pipeline.context import LlmUsage, Summary, TaskContext
from maie.pipeline.llm.client import LlmClient, Message, add_reply
from maie.pipeline.llm.factory import StageParams, get_llm, report_progress, stage_params
from maie.pipeline.llm.grammar import fit_schema
from maie.pipeline.llm.text import Turn, chunk_turns, render, transcript_turns
from maie.templates import PromptError, Template, TemplateStore, first_error

SYSTEM_PROMPT = (
    "You turn transcripts into JSON. Reply with one JSON object that follows the given JSON Schema, "
    "and nothing else. Use only facts from the transcript."
)
PARTS_HEADER = "Summaries of consecutive parts of one long transcript, in order (JSON):"
_MAX_ECHO_CHARS = 1500
"""How much of an invalid reply is shown back to the model with the error."""
BUDGET_CHARS_PER_TOKEN = (3.0, 1.0, 0.4)
"""Longest output the grammar allows on attempt 1, 2, 3+, in characters per ``max_tokens``. English
JSON runs at about 3-4 characters a token, so the first attempt rarely constrains a good model,
while one that loops inside a string is stopped before the token limit cuts its JSON off; after a
cut-off the bounds tighten until even one token per character fits."""


def summarize(ctx: TaskContext) -> Summary:
    """Summarise the task's transcript with its template. Raises MaieError (SUMMARY_FAILED,
    LLM_UNAVAILABLE) on failure, never a bare exception, so the transcript is kept."""
    with failures_as(ErrorCode.SUMMARY_FAILED, "summary"):
        return _summarize(ctx)


def _summarize(ctx: TaskContext) -> Summary:
    settings = ctx.settings
    template_id = ctx.options.template_id or settings.default_template_id
    try:
        template = TemplateStore.from_settings(settings).get(template_id)
    except MaieError as exc:
        raise MaieError(ErrorCode.SUMMARY_FAILED, exc.message) from exc
    text = summary_source(ctx)
    if not text.strip():
        raise MaieError(ErrorCode.SUMMARY_FAILED, "no transcript text to summarise")
    params = stage_params(settings.llm, "summary")
    client = get_llm(ctx, "summary")
    usage = LlmUsage(
        model="",
        base_url=client.base_url,
        params={
            "temperature": params.temperature,
            "top_k": params.top_k,
            "max_tokens": params.max_tokens,
            "max_attempts": settings.llm.sum_max_attempts,
        },
    )
    language = _language(ctx)
    run = _Run(client, template, params, settings.llm.sum_max_attempts, usage, language)

    chunk_chars = settings.llm.sum_chunk_chars
    if len(text) <= chunk_chars:
        report_progress(ctx, "summary", 0.0)
        data, attempts = run.generate(text)
    else:
        chunks = chunk_turns(_turns_for(ctx, text), chunk_chars)
        usage.params["map_reduce_parts"] = len(chunks)
        partials: list[dict[str, Any]] = []
        for i, chunk in enumerate(chunks):
            report_progress(ctx, "summary", 0.9 * i / len(chunks))
            partials.append(run.generate(render(chunk))[0])
        report_progress(ctx, "summary", 0.9)
        data, attempts = _reduce(run, partials, chunk_chars)
    report_progress(ctx, "summary", 1.0)
    return Summary(data=data, template_id=template.id, attempts=attempts, usage=usage)


def summary_source(ctx: TaskContext) -> str:
    """The clean transcript when the task made one, else the raw transcript (or given text)."""
    if ctx.enhancement is not None and ctx.enhancement.text.strip():
        return ctx.enhancement.text
    return render(transcript_turns(ctx))


def _turns_for(ctx: TaskContext, text: str) -> list[Turn]:
    if ctx.enhancement is not None and ctx.enhancement.text.strip():
        from maie.pipeline.llm.text import parse_text

        return parse_text(text)
    return transcript_turns(ctx)


def _language(ctx: TaskContext) -> str | None:
    if ctx.transcript is not None and ctx.transcript.language:
        return ctx.transcript.language
    return ctx.options.language


def _reduce(run: _Run, partials: list[dict[str, Any]], chunk_chars: int) -> tuple[dict[str, Any], int]:
    """Combine partial summaries, in groups that fit one prompt, until one is left."""
    while True:
        texts = [json.dumps(p, ensure_ascii=False) for p in partials]
        groups: list[list[str]] = [[]]
        for t in texts:
            if groups[-1] and sum(len(x) + 12 for x in groups[-1]) + len(t) > chunk_chars:
                groups.append([])
            groups[-1].append(t)
        if len(groups) == 1 or len(groups) == len(partials):
            # One prompt holds them all, or no two fit together: combine everything at once.
            return run.generate(_parts_text(texts))
        partials = [run.generate(_parts_text(g))[0] for g in groups]


def _parts_text(texts: list[str]) -> str:
    return PARTS_HEADER + "\n\n" + "\n\n".join(f"Part {i}: {t}" for i, t in enumerate(texts, 1))


class _Run:
    """Schema-valid generations for one template, with retries that show the model its error."""

    def __init__(
        self,
        client: LlmClient,
        template: Template,
        params: StageParams,
        max_attempts: int,
        usage: LlmUsage,
        language: str | None,
    ) -> None:
        self.client = client
        self.template = template
        self.params = params
        self.max_attempts = max_attempts
        self.usage = usage
        self.language = language

    def generate(self, transcript: str) -> tuple[dict[str, Any], int]:
        try:
            prompt = self.template.render(transcript, self.language)
        except PromptError as exc:
            raise MaieError(ErrorCode.SUMMARY_FAILED, f"template {self.template.id!r}: {exc}") from exc
        base: list[Message] = [
            {"role": "system", "content": SYSTEM_PROMPT},
            {"role": "user", "content": prompt},
        ]
        messages = base
        error = ""
        for attempt in range(1, self.max_attempts + 1):
            ratio = BUDGET_CHARS_PER_TOKEN[min(attempt, len(BUDGET_CHARS_PER_TOKEN)) - 1]
            reply = self.client.chat(
                messages,
                max_tokens=self.params.max_tokens,
                temperature=self.params.temperature,
                top_k=self.params.top_k,
                json_schema=fit_schema(self.template.schema, int(self.params.max_tokens * ratio)),
            )
            add_reply(self.usage, reply)
            data, error = self._check(reply.text, reply.finish_reason)
            if data is not None:
                return data, attempt
            messages = [
                *base,
                {"role": "assistant", "content": reply.text[:_MAX_ECHO_CHARS]},
                {
                    "role": "user",
                    "content": f"That answer is not valid: {error}. Reply again with only one JSON "
                    "object that matches the schema, with shorter text.",
                },
            ]
        raise MaieError(
            ErrorCode.SUMMARY_FAILED,
            f"no schema-valid summary from the LLM after {self.max_attempts} attempts: {error}",
        )

    def _check(self, text: str, finish_reason: str | None) -> tuple[dict[str, Any] | None, str]:
        try:
            data = json.loads(_strip_fences(text))  # strict: control characters in strings are errors
        except json.JSONDecodeError as exc:
            if finish_reason == "length":
                return None, f"the JSON was cut off at {self.params.max_tokens} tokens ({exc.msg})"
            return None, f"it is not JSON ({exc.msg} at character {exc.pos})"
        error = first_error(self.template.schema, data)
        if error:
            return None, f"it does not match the schema {error}"
        return data, ""


def _strip_fences(text: str) -> str:
    """Servers without constrained decoding sometimes wrap JSON in a Markdown code fence."""
    text = text.strip()
    if text.startswith("```") and text.endswith("```"):
        text = text[3:-3]
        text = text.removeprefix("json").strip()
    return text
