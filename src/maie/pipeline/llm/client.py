"""The one interface both LLM backends (OpenAI-compatible server, embedded llama-cpp) implement."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from maie.pipeline.context import LlmUsage

Message = dict[str, str]
"""``{"role": "system" | "user" | "assistant", "content": "..."}``."""


@dataclass(frozen=True)
class LlmReply:
    text: str
    model: str
    """The model as the backend reports it (the response's ``model`` field)."""
    prompt_tokens: int
    completion_tokens: int
    time_s: float
    finish_reason: str | None = None
    """``stop`` or ``length`` (the reply hit ``max_tokens``)."""


@runtime_checkable
class LlmClient(Protocol):
    base_url: str | None
    """Server address, or None for the embedded model."""

    def chat(
        self,
        messages: list[Message],
        *,
        max_tokens: int,
        temperature: float,
        top_k: int | None,
        json_schema: dict[str, Any] | None,
        deadline: float | None = None,
    ) -> LlmReply:
        """One chat completion. With ``json_schema`` the reply is constrained to that schema where
        the backend supports it. Raises MaieError: LLM_UNAVAILABLE when the backend cannot be
        reached or keeps failing, PIPELINE_ERROR for a reply that cannot be used; BudgetExceeded
        once ``deadline`` (a ``time.monotonic()`` value) has passed, checked while it generates."""
        ...


def add_reply(usage: LlmUsage, reply: LlmReply) -> None:
    """Count one reply into a stage's usage; the model is the one the backend last reported."""
    usage.model = reply.model
    usage.prompt_tokens += reply.prompt_tokens
    usage.completion_tokens += reply.completion_tokens
    usage.time_s = round(usage.time_s + reply.time_s, 4)
