"""The embedded LLM's usage is the tokens it really took, as llama-cpp-python counts them itself.

The embedded client streams (to check its deadline between tokens), and a stream carries no usage;
counting its chunks under-counted: a chunk holds back bytes that do not decode yet. Vietnamese text,
whose letters span tokens, shows it.
"""

from __future__ import annotations

from typing import Any

import pytest
from llama_cpp import Llama

from maie.pipeline.llm import bundled_gguf_path
from maie.pipeline.llm.embedded import EmbeddedClient, load_llama

PROMPTS = [
    "Dịch sang tiếng Việt: the meeting starts at nine and ends at noon.",
    "Viết một câu về thời tiết hôm nay ở Hà Nội.",
    "Say hello.",
]


@pytest.fixture(scope="module")
def llama() -> Llama:
    return load_llama(bundled_gguf_path(), n_ctx=2048, n_threads=1)


def _stock_usage(llama: Llama, prompt: str, max_tokens: int) -> tuple[dict[str, Any], str, int]:
    """llama-cpp-python's own usage (not streamed), its text, and how many content chunks the stream has.

    Each generation starts from an empty cache (``reset``): one that reuses the previous call's prompt
    prefix computes the rest in other batches, and greedy decoding then parted at a near-tie ("Say
    hello." gave 26 tokens alone, 32 after another call; llama-cpp-python 0.3.36)."""
    messages: Any = [{"role": "user", "content": prompt}]
    llama.reset()
    out: Any = llama.create_chat_completion(messages=messages, max_tokens=max_tokens, temperature=0.0)
    llama.reset()
    stream: Any = llama.create_chat_completion(messages=messages, max_tokens=max_tokens, temperature=0.0, stream=True)
    chunks = sum(1 for chunk in stream if chunk["choices"][0].get("delta", {}).get("content"))
    llama.reset()
    return out["usage"], out["choices"][0]["message"]["content"], chunks


@pytest.mark.parametrize("max_tokens", [40, 200])  # stopped by the limit, and by the model
def test_usage_counts_tokens_not_chunks(llama: Llama, max_tokens: int) -> None:
    client = EmbeddedClient(llama, "smollm2")
    chunk_count_was_wrong = False
    for prompt in PROMPTS:
        want, text, chunks = _stock_usage(llama, prompt, max_tokens)
        reply = client.chat(
            [{"role": "user", "content": prompt}], max_tokens=max_tokens, temperature=0.0, top_k=None, json_schema=None
        )
        assert reply.text == text  # the same generation, so the same count is due
        assert (reply.prompt_tokens, reply.completion_tokens) == (want["prompt_tokens"], want["completion_tokens"])
        chunk_count_was_wrong |= chunks != want["completion_tokens"]
    assert chunk_count_was_wrong  # the case this guards against really happened


def test_usage_of_a_grammar_constrained_reply(llama: Llama) -> None:
    client = EmbeddedClient(llama, "smollm2")
    schema = {"type": "object", "properties": {"tóm_tắt": {"type": "string", "maxLength": 80}}, "required": ["tóm_tắt"]}
    reply = client.chat(
        [{"role": "user", "content": "Tóm tắt bằng JSON: cuộc họp bắt đầu lúc chín giờ."}],
        max_tokens=60,
        temperature=0.0,
        top_k=None,
        json_schema=schema,
    )
    # Every generated token is counted: re-tokenizing the text gives at least as many (a token
    # boundary inside a character re-tokenizes the same way or shorter, never to fewer pieces here).
    tokens = llama.tokenize(reply.text.encode(), add_bos=False, special=False)
    assert reply.completion_tokens > 0
    assert abs(reply.completion_tokens - len(tokens)) <= 2
    assert reply.prompt_tokens == llama.maie_tokens.prompt  # type: ignore[attr-defined]
