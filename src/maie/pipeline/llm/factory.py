"""Pick the LLM client for a stage from the settings: a server when a base URL is set, else embedded."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from maie.config import LlmSettings
from maie.pipeline.context import TaskContext
from maie.pipeline.llm.client import LlmClient
from maie.pipeline.llm.embedded import EmbeddedClient, bundled_gguf_path, load_llama
from maie.pipeline.llm.openai_compat import OpenAICompatClient, key_fingerprint
from maie.schemas import Feature, TaskStatus

Purpose = Literal["enhance", "summary"]


@dataclass(frozen=True)
class StageParams:
    """Decoding parameters for one stage, as configured."""

    base_url: str | None
    model: str | None
    temperature: float
    top_k: int | None
    max_tokens: int


def stage_params(llm: LlmSettings, purpose: Purpose) -> StageParams:
    if purpose == "enhance":
        return StageParams(
            base_url=llm.enhance_base_url or llm.base_url,
            model=llm.enhance_model or llm.model,
            temperature=llm.enhance_temperature,
            top_k=llm.enhance_top_k,
            max_tokens=llm.enhance_max_tokens,
        )
    return StageParams(
        base_url=llm.sum_base_url or llm.base_url,
        model=llm.sum_model or llm.model,
        temperature=llm.sum_temperature,
        top_k=llm.sum_top_k,
        max_tokens=llm.sum_max_tokens,
    )


def get_llm(ctx: TaskContext, purpose: Purpose) -> LlmClient:
    """The client for ``purpose``, kept warm in the worker's model registry (one HTTP connection
    pool per server, one loaded model per GGUF file)."""
    llm = ctx.settings.llm
    params = stage_params(llm, purpose)
    if params.base_url:
        base_url = params.base_url
        key = (
            "llm-http",
            base_url,
            params.model,
            key_fingerprint(llm.api_key),
            llm.timeout_s,
            llm.max_retries,
            llm.retry_backoff_s,
            llm.server_flavour,
        )
        return ctx.models.get(
            key,
            lambda: OpenAICompatClient(
                base_url,
                model=params.model,
                api_key=llm.api_key,
                timeout_s=llm.timeout_s,
                max_retries=llm.max_retries,
                backoff_s=llm.retry_backoff_s,
                flavour=llm.server_flavour,
            ),
        )
    path = Path(params.model).expanduser() if params.model else bundled_gguf_path()
    threads = llm.n_threads or ctx.settings.cores_per_worker
    llama = ctx.models.get(("llm", str(path), llm.n_ctx, threads), lambda: load_llama(path, llm.n_ctx, threads))
    return EmbeddedClient(llama, model_name=path.stem)


def report_progress(ctx: TaskContext, purpose: Purpose, fraction: float) -> None:
    """Progress within PROCESSING_LLM: when a task asks for both, the clean transcript fills the
    first half and the summary the second. Raises Cancelled if the task was cancelled."""
    features = set(ctx.options.features)
    if {Feature.CLEAN_TRANSCRIPT, Feature.SUMMARY} <= features:
        low = 0.0 if purpose == "enhance" else 0.5
        fraction = low + 0.5 * fraction
    ctx.report(TaskStatus.PROCESSING_LLM, min(max(fraction, 0.0), 1.0))
