"""JSON Schema -> GBNF: strings in constrained output are valid JSON strings.

Acceptance is checked with llama.cpp's own grammar engine (the sampler used while generating),
fed token by token, on the vocabulary of the bundled SmolLM2 model.
"""

from __future__ import annotations

import json

import pytest
from llama_cpp import Llama
from llama_cpp.llama_grammar import json_schema_to_gbnf

from maie.pipeline.llm import bundled_gguf_path, schema_to_gbnf
from maie.pipeline.llm.grammar import grammar_accepts, normalize_schema
from maie.templates import TemplateStore

TEXT_SCHEMA = {
    "type": "object",
    "properties": {"note": {"type": "string", "maxLength": 40}},
    "required": ["note"],
    "additionalProperties": False,
}


@pytest.fixture(scope="module")
def vocab() -> Llama:
    return Llama(model_path=str(bundled_gguf_path()), vocab_only=True, verbose=False)


def test_stock_converter_lets_a_raw_newline_into_strings(vocab: Llama) -> None:
    # Why the fix exists (and proof the acceptance check can say yes to a bad string).
    stock = json_schema_to_gbnf(json.dumps(TEXT_SCHEMA))
    assert grammar_accepts(vocab, stock, '{"note": "a\nb"}')


def test_raw_newline_and_control_characters_are_not_accepted(vocab: Llama) -> None:
    gbnf = schema_to_gbnf(TEXT_SCHEMA)
    assert not grammar_accepts(vocab, gbnf, '{"note": "a\nb"}')
    assert not grammar_accepts(vocab, gbnf, '{"note": "a\tb"}')
    assert not grammar_accepts(vocab, gbnf, '{"note": "a\x01b"}')
    assert not grammar_accepts(vocab, gbnf, '{"note": "a\x7fb"}')
    # escaped forms, and ordinary UTF-8, are fine
    assert grammar_accepts(vocab, gbnf, '{"note": "a\\nb\\tc \\u00e9"}')
    assert grammar_accepts(vocab, gbnf, '{"note": "tiếng Việt"}')
    # and the grammar still ends strings and objects where JSON does
    assert not grammar_accepts(vocab, gbnf, '{"note": "unterminated')
    assert not grammar_accepts(vocab, gbnf, '{"note": "' + "x" * 41 + '"}')


def test_nullable_string_keeps_its_max_length(vocab: Llama) -> None:
    schema = {
        "type": "object",
        "properties": {"owner": {"type": ["string", "null"], "maxLength": 3}},
        "required": ["owner"],
        "additionalProperties": False,
    }
    assert normalize_schema(schema)["properties"]["owner"] == {
        "anyOf": [{"type": "string", "maxLength": 3}, {"type": "null"}]
    }
    gbnf = schema_to_gbnf(schema)
    assert grammar_accepts(vocab, gbnf, '{"owner": "abc"}')
    assert grammar_accepts(vocab, gbnf, '{"owner": null}')
    assert not grammar_accepts(vocab, gbnf, '{"owner": "abcd"}')


@pytest.mark.parametrize("template_id", [t.id for t in TemplateStore("/nonexistent").list()])
def test_every_builtin_example_is_a_sentence_of_its_grammar(vocab: Llama, template_id: str) -> None:
    template = TemplateStore("/nonexistent").get(template_id)
    gbnf = schema_to_gbnf(template.schema)
    # json.dumps' default layout is the one the grammar allows (", " and ": "); property names
    # are literal UTF-8 in the grammar, string values may be UTF-8 or escaped
    assert grammar_accepts(vocab, gbnf, json.dumps(template.example, ensure_ascii=False))
    broken = dict(template.example)
    broken.pop(next(reversed(broken)))  # every property is required
    assert not grammar_accepts(vocab, gbnf, json.dumps(broken, ensure_ascii=False))


@pytest.mark.slow
def test_generated_output_parses_with_strict_json() -> None:
    llama = Llama(model_path=str(bundled_gguf_path()), n_ctx=1024, n_threads=1, n_threads_batch=1, verbose=False)
    schema = {
        "type": "object",
        "properties": {
            "poem": {"type": "string", "minLength": 20, "maxLength": 200},
            "lines": {"type": "array", "items": {"type": "string", "maxLength": 60}, "maxItems": 4},
        },
        "required": ["poem", "lines"],
        "additionalProperties": False,
    }
    from llama_cpp import LlamaGrammar

    grammar = LlamaGrammar.from_string(schema_to_gbnf(schema), verbose=False)
    for seed in (1, 2, 3):
        out = llama.create_chat_completion(
            messages=[{"role": "user", "content": "Write a poem of four short lines as JSON."}],
            max_tokens=300,
            temperature=1.0,
            seed=seed,
            grammar=grammar,
        )
        text = out["choices"][0]["message"]["content"]
        data = json.loads(text, strict=True)  # raises on a raw control character inside a string
        assert isinstance(data["poem"], str) and len(data["poem"]) >= 20


@pytest.mark.parametrize("budget", [3072, 1024, 400])
def test_fitted_schema_bounds_the_output_and_stays_within_the_original(budget: int) -> None:
    from jsonschema import Draft202012Validator

    from maie.pipeline.llm.grammar import fit_schema, max_chars

    schema = TemplateStore("/nonexistent").schema("structured_analysis_v1")
    assert max_chars(schema) > budget
    fitted = fit_schema(schema, budget)
    Draft202012Validator.check_schema(fitted)
    assert max_chars(fitted) <= budget

    def bounds(s: object, path: str = "$"):
        if isinstance(s, dict):
            for key in ("maxLength", "maxItems", "minLength", "minItems"):
                if key in s:
                    yield f"{path}.{key}", s[key]
            for k, v in s.items():
                yield from bounds(v, f"{path}/{k}")
        elif isinstance(s, list):
            for i, v in enumerate(s):
                yield from bounds(v, f"{path}[{i}]")

    original = dict(bounds(normalize_schema(schema)))
    for path, value in bounds(fitted):
        if path.endswith(("maxLength", "maxItems")):
            assert value <= original[path], path  # never looser than the template
            assert value >= original.get(path.replace(".max", ".min"), 0), path  # never below a minimum
    assert fitted["properties"]["tags"]["maxItems"] >= 1  # tags stay required and non-empty


def test_fitted_grammar_stops_a_runaway_string(vocab: Llama) -> None:
    from maie.pipeline.llm.grammar import fit_schema

    schema = {
        "type": "object",
        "properties": {"note": {"type": "string", "maxLength": 500}},
        "required": ["note"],
        "additionalProperties": False,
    }
    gbnf = schema_to_gbnf(fit_schema(schema, 60))
    assert grammar_accepts(vocab, gbnf, '{"note": "' + "ok " * 10 + '"}')
    assert not grammar_accepts(vocab, gbnf, '{"note": "' + "loop " * 20 + '"}')
