"""Lazy grammar sampling (``maie.pipeline.llm.lazy_grammar``) on the bundled SmolLM2 model.

The stock llama-cpp-python sampler runs the grammar over the whole vocabulary for every token; the
lazy one checks the sampled token and falls back to the whole vocabulary only when it is rejected.
Greedy decoding must give exactly the stock tokens, and sampled output must stay inside the grammar.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from llama_cpp import Llama, LlamaGrammar

from maie.pipeline.llm import bundled_gguf_path, schema_to_gbnf
from maie.pipeline.llm.embedded import load_llama
from maie.pipeline.llm.lazy_grammar import LazyGrammarSampler
from maie.templates import TemplateStore

TRANSCRIPT = (
    "And so, my fellow Americans ask not what your country can do for you, ask what you can do for your country."
)


@pytest.fixture(scope="module")
def lazy() -> Llama:
    return load_llama(bundled_gguf_path(), n_ctx=2048, n_threads=1)


@pytest.fixture(scope="module")
def stock() -> Llama:
    return Llama(model_path=str(bundled_gguf_path()), n_ctx=2048, n_threads=1, n_threads_batch=1, verbose=False)


def complete(llama: Llama, prompt: str, gbnf: str, **kwargs: object) -> str:
    out = llama.create_chat_completion(
        messages=[{"role": "user", "content": prompt}],
        grammar=LlamaGrammar.from_string(gbnf, verbose=False),
        **kwargs,  # type: ignore[arg-type]
    )
    return str(out["choices"][0]["message"]["content"])  # type: ignore[index]


@pytest.mark.parametrize(
    "template_id", ["meeting_notes_v2_en", "generic_summary_en_v2", "interview_transcript_v2_en", "meeting_notes_v2"]
)
def test_greedy_output_is_the_stock_samplers_token_for_token(lazy: Llama, stock: Llama, template_id: str) -> None:
    template = TemplateStore(Path("/nonexistent")).get(template_id)
    gbnf = schema_to_gbnf(template.schema)
    prompt = template.render(TRANSCRIPT)
    want = complete(stock, prompt, gbnf, max_tokens=60, temperature=0.0)
    got = complete(lazy, prompt, gbnf, max_tokens=60, temperature=0.0)
    assert got == want
    sampler = lazy._sampler
    assert isinstance(sampler, LazyGrammarSampler)
    # the point of it: most tokens pass the one-token check
    assert sampler.sampled >= 60 and sampler.resampled < sampler.sampled // 4


def test_a_grammar_the_model_would_never_follow_is_still_followed(lazy: Llama) -> None:
    gbnf = 'root ::= "zq" [0-9] [0-9] [0-9] "!"'
    for temperature in (0.0, 1.0):
        text = complete(lazy, "Say hello.", gbnf, max_tokens=20, temperature=temperature, seed=7)
        assert re.fullmatch(r"zq[0-9]{3}!", text), text
    # every token was rejected by the one-token check, and the end of generation came from the grammar
    assert lazy._sampler.resampled >= 3  # type: ignore[union-attr]


def test_sampled_json_stays_inside_the_grammar(lazy: Llama) -> None:
    schema = {
        "type": "object",
        "properties": {
            "poem": {"type": "string", "minLength": 20, "maxLength": 200},
            "lines": {"type": "array", "items": {"type": "string", "maxLength": 60}, "maxItems": 4},
        },
        "required": ["poem", "lines"],
        "additionalProperties": False,
    }
    gbnf = schema_to_gbnf(schema)
    for seed in (1, 2, 3):
        prompt = "Write a poem of four short lines as JSON."
        text = complete(lazy, prompt, gbnf, max_tokens=300, temperature=1.0, seed=seed)
        data = json.loads(text, strict=True)
        assert isinstance(data["poem"], str) and len(data["poem"]) >= 20


def test_stateful_samplers_keep_the_stock_chain(lazy: Llama) -> None:
    # a repeat penalty remembers the tokens it saw: a rejected token would be counted, so no lazy path
    text = complete(lazy, "Say hello.", 'root ::= "hi" | "hello"', max_tokens=5, temperature=0.0, repeat_penalty=1.1)
    assert text in {"hi", "hello"}
    assert not isinstance(lazy._sampler, LazyGrammarSampler)
    complete(lazy, "Say hello.", 'root ::= "hi" | "hello"', max_tokens=5, temperature=0.0)
    assert isinstance(lazy._sampler, LazyGrammarSampler)
