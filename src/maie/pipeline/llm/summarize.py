"""Structured summary: a template's prompt, its JSON Schema enforced while decoding and validated after.

An invalid reply (truncated, or failing the schema when the server could not constrain it) is
retried with the validation error fed back. Transcripts longer than ``sum_chunk_chars`` are
summarised map-reduce: each part into the template's schema, then the partial summaries into one.

The valid summary is then checked: repetition loops are cut (loops.py), every leaf is matched
against the transcript (grounding.py), and leaves not found there are flagged, dropped or make the
summary fail, as ``sum_ungrounded`` says, with a ``SUMMARY_UNGROUNDED`` warning.
"""

from __future__ import annotations

import copy
import json
from typing import Any

from maie.config import LlmSettings
from maie.errors import ErrorCode, MaieError, failures_as
from maie.pipeline.context import LlmUsage, Summary, TaskContext
from maie.pipeline.llm.client import LlmClient, Message, add_reply
from maie.pipeline.llm.factory import StageParams, get_llm, report_progress, stage_params
from maie.pipeline.llm.grammar import fit_schema
from maie.pipeline.llm.grounding import Grounding, ground, units_from_ctx
from maie.pipeline.llm.loops import cut_data
from maie.pipeline.llm.text import Utterance, chunk_turns, render, transcript_turns
from maie.schemas import TaskError, TaskStatus
from maie.templates import ExampleMode, PromptError, Template, TemplateStore, first_error, placeholder_example

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
        template = TemplateStore.from_settings(settings).get_scoped(template_id, ctx.options.template_scope)
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
    example = example_mode(settings.llm, client)
    usage.params["example"] = example
    run = _Run(client, template, params, settings.llm.sum_max_attempts, usage, language, example, ctx.deadline)

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
    summary = check_summary(ctx, template, data)
    report_progress(ctx, "summary", 1.0)
    summary.attempts, summary.usage = attempts, usage
    return summary


def example_mode(llm: LlmSettings, client: LlmClient) -> ExampleMode:
    """The example the prompt shows: ``auto`` is none for the embedded model, which copies any
    example it is shown (the template's, or the placeholder hints) as its answer, and the full
    example for a server, where larger models follow it as a form."""
    if llm.sum_example != "auto":
        return llm.sum_example
    return "full" if client.base_url else "none"


def check_summary(ctx: TaskContext, template: Template, data: dict[str, Any]) -> Summary:
    """Cut loops, ground every leaf in the transcript and apply ``sum_ungrounded``; warnings go to
    ``ctx.warnings``. Raises MaieError(SUMMARY_FAILED) when the policy is ``fail`` and a leaf is
    unsupported. The returned Summary's attempts and usage are for the caller to fill in."""
    stage = TaskStatus.PROCESSING_LLM.value
    cut, cuts = cut_data(data, template.schema, source=summary_source(ctx))
    if cuts and first_error(template.schema, cut) is None:
        data = cut
        total = sum(c.repeats for c in cuts)
        where = ", ".join(f"{c.path} ({c.repeats})" for c in cuts)
        ctx.warnings.append(
            TaskError(
                code=ErrorCode.LLM_LOOP_CUT.value,
                message=f"the summary repeated itself: {total} repeated sentences, phrases or list items "
                f"cut at {where}",
                stage=stage,
            )
        )
    else:
        cuts = []
    units = units_from_ctx(ctx)
    examples = [template.example, placeholder_example(template.schema)]
    grounding = ground(data, units, schema=template.schema, examples=examples)
    policy = ctx.settings.llm.sum_ungrounded
    dropped: list[str] = []
    found = grounding
    if grounding.unsupported:
        if policy == "fail":
            raise MaieError(
                ErrorCode.SUMMARY_FAILED,
                f"summary withheld: {_counts(grounding)} (MAIE_LLM__SUM_UNGROUNDED=fail)",
            )
        if policy == "drop":
            kept, dropped = drop_unsupported(data, template.schema, grounding.unsupported)
            if first_error(template.schema, kept) is None:
                data = kept
                grounding = ground(data, units, schema=template.schema, examples=examples)
            else:  # cannot happen by construction; never return an invalid summary
                dropped = []
        action = (
            f"{len(dropped)} removed, {len(grounding.unsupported)} kept and marked unsupported"
            if policy == "drop"
            else "kept and marked unsupported in summary_evidence"
        )
        ctx.warnings.append(
            TaskError(
                code=ErrorCode.SUMMARY_UNGROUNDED.value,
                message=f"{_counts(found)}: {action}",
                stage=stage,
            )
        )
    summary_grounding = {**grounding.summary(), "policy": policy}
    if policy == "drop":
        summary_grounding["dropped"] = dropped
    return Summary(
        data=data,
        template_id=template.id,
        attempts=0,
        usage=LlmUsage("", None),
        evidence=[e.model_dump() for e in grounding.evidence],
        grounding=summary_grounding,
        loops_cut=sum(c.repeats for c in cuts),
    )


def _counts(g: Grounding) -> str:
    copied = len([p for p in g.copied if p in set(g.unsupported)])
    copies = f", {copied} copied from the template's example" if copied else ""
    shown = ", ".join(g.unsupported[:8]) + (", ..." if len(g.unsupported) > 8 else "")
    return (
        f"{len(g.unsupported)} of {g.total} summary items not found in the transcript{copies} "
        f"(supported ratio {g.ratio:.2f}; {shown})"
    )


def drop_unsupported(
    data: dict[str, Any], schema: dict[str, Any], paths: list[str]
) -> tuple[dict[str, Any], list[str]]:
    """A copy of ``data`` without the unsupported leaves, as far as the schema permits (see
    ``LlmSettings.sum_ungrounded``), and the pointers of what was removed or nulled."""
    data = copy.deepcopy(data)
    done: list[str] = []
    gone: list[list[str]] = []
    # Last first: removing a list item shifts only the items after it, which are done already.
    for pointer in reversed(paths):
        parts = _parse_pointer(pointer)
        if any(parts[: len(g)] == g for g in gone):
            continue  # inside something already removed
        for depth in range(len(parts), 0, -1):
            target = parts[:depth]
            parent, parent_schema = _resolve(data, schema, target[:-1])
            if isinstance(parent, list):
                index = int(target[-1])
                if len(parent) - 1 < int(parent_schema.get("minItems", 0)):
                    continue
                del parent[index]
            elif isinstance(parent, dict):
                key = target[-1]
                if key in parent_schema.get("required", []):
                    if depth == len(parts) and _nullable(_resolve(data, schema, target)[1]):
                        parent[key] = None
                        done.append(pointer)
                        break
                    continue
                del parent[key]
            else:
                break
            gone.append(target)
            done.append(pointer)
            break
    return data, sorted(done, key=paths.index)


def _parse_pointer(pointer: str) -> list[str]:
    return [raw.replace("~1", "/").replace("~0", "~") for raw in pointer.split("/")[1:]]


def _resolve(data: Any, schema: dict[str, Any], parts: list[str]) -> tuple[Any, dict[str, Any]]:
    """The value at ``parts`` and its schema (``{}`` where the schema says nothing)."""
    for p in parts:
        if isinstance(data, list):
            data = data[int(p)]
            items = schema.get("items", {})
            schema = items if isinstance(items, dict) else {}
        else:
            data = data[p]
            props = schema.get("properties", {})
            schema = props.get(p, {}) if isinstance(props, dict) else {}
        schema = schema if isinstance(schema, dict) else {}
    return data, schema


def _nullable(schema: dict[str, Any]) -> bool:
    kind = schema.get("type")
    if kind == "null" or (isinstance(kind, list) and "null" in kind):
        return True
    return any(isinstance(s, dict) and s.get("type") == "null" for s in schema.get("anyOf", []))


def summary_source(ctx: TaskContext) -> str:
    """The clean transcript when the task made one, else the raw transcript (or given text)."""
    if ctx.enhancement is not None and ctx.enhancement.text.strip():
        return ctx.enhancement.text
    return render(transcript_turns(ctx))


def _turns_for(ctx: TaskContext, text: str) -> list[Utterance]:
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
        example: ExampleMode = "full",
        deadline: float | None = None,
    ) -> None:
        self.example = example
        self.deadline = deadline
        self.client = client
        self.template = template
        self.params = params
        self.max_attempts = max_attempts
        self.usage = usage
        self.language = language

    def generate(self, transcript: str) -> tuple[dict[str, Any], int]:
        try:
            prompt = self.template.render(transcript, self.language, self.example)
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
                deadline=self.deadline,
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
