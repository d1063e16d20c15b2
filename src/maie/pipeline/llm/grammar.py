"""JSON Schema -> GBNF for constrained decoding, with strings that are always valid JSON.

llama-cpp-python's converter (0.3.x) defines a string character as ``[^"\\]``, which lets raw
newlines and other control characters into strings: the model then writes JSON that a strict
parser rejects. We keep the converter and replace its character rules with the JSON-correct ones
(the same definition upstream llama.cpp uses), instead of loosening the parser.
"""

from __future__ import annotations

import ctypes
import json
import math
from functools import lru_cache
from typing import Any

# A JSON string character: anything but a quote, a backslash or a control character, or an escape.
JSON_CHAR_RULE = r'[^"\\\x7F\x00-\x1F] | "\\" (["\\/bfnrt] | "u" [0-9a-fA-F] [0-9a-fA-F] [0-9a-fA-F] [0-9a-fA-F])'
# What regex "." may match inside a string pattern: a JSON character that needs no escape.
JSON_DOT = r'[^"\\\x7F\x00-\x1F]'
_STOCK_DOT = r"[^\x0A\x0D]"

# Keywords that only make sense for one JSON type, so a ``type: [a, b]`` union can keep them per type.
_TYPE_KEYWORDS: dict[str, set[str]] = {
    "string": {"minLength", "maxLength", "pattern", "format", "enum", "const"},
    "array": {"items", "prefixItems", "minItems", "maxItems", "uniqueItems"},
    "object": {"properties", "required", "additionalProperties"},
    "integer": {"minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "enum", "const"},
    "number": {"minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "enum", "const"},
    "boolean": {"enum", "const"},
    "null": set(),
}
_ALL_TYPE_KEYWORDS = set().union(*_TYPE_KEYWORDS.values())


def normalize_schema(schema: Any) -> Any:
    """Rewrite ``{"type": ["string", "null"], "maxLength": 9}`` as an ``anyOf`` of single types.

    The stock converter turns a type list into a union of bare types and drops the other keywords,
    so a nullable string would lose its ``maxLength`` (and a small model could loop forever).
    An ``enum`` that already lists the allowed values (including null) is left alone.
    """
    if isinstance(schema, list):
        return [normalize_schema(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: normalize_schema(v) for k, v in schema.items()}
    types = out.get("type")
    if isinstance(types, list) and "enum" not in out and "const" not in out:
        shared = {k: v for k, v in out.items() if k != "type" and k not in _ALL_TYPE_KEYWORDS}
        variants = []
        for t in types:
            variant = {"type": t, **{k: v for k, v in out.items() if k in _TYPE_KEYWORDS.get(t, set())}}
            variants.append(variant)
        return {**shared, "anyOf": variants}
    return out


def schema_to_gbnf(schema: dict[str, Any]) -> str:
    """GBNF grammar whose sentences are exactly the JSON documents the schema describes (and parse
    with ``json.loads`` in strict mode). Properties come out in the schema's order."""
    # Key order is kept in the cache key on purpose: it is the order the model writes fields in.
    return _schema_to_gbnf_cached(json.dumps(schema, ensure_ascii=False))


@lru_cache(maxsize=64)
def _schema_to_gbnf_cached(schema_json: str) -> str:
    from llama_cpp.llama_grammar import json_schema_to_gbnf

    stock = json_schema_to_gbnf(json.dumps(normalize_schema(json.loads(schema_json))))
    return _fix_string_rules(stock)


def _fix_string_rules(gbnf: str) -> str:
    lines = []
    for line in gbnf.splitlines():
        name, sep, rule = line.partition(" ::= ")
        if sep and name == "char":
            rule = JSON_CHAR_RULE
        elif sep:
            rule = rule.replace(_STOCK_DOT, JSON_DOT)
        lines.append(f"{name}{sep}{rule}")
    return "\n".join(lines) + "\n"


def grammar_accepts(llama: Any, gbnf: str, text: str) -> bool:
    """Whether llama.cpp's grammar engine accepts ``text`` as a complete sentence of ``gbnf``.

    Walks the text token by token through a grammar sampler (the same one used while generating),
    then checks that end-of-generation is allowed. ``llama`` is a ``llama_cpp.Llama`` (a
    ``vocab_only`` instance is enough).
    """
    import llama_cpp

    vocab = llama._model.vocab
    sampler = llama_cpp.llama_sampler_init_grammar(vocab, gbnf.encode(), b"root")
    if not sampler:
        raise ValueError("llama.cpp could not parse the grammar")
    try:
        tokens = llama.tokenize(text.encode(), add_bos=False, special=False)
        for token in tokens:
            if not _allowed(llama_cpp, sampler, token):
                return False
            llama_cpp.llama_sampler_accept(sampler, token)
        return _allowed(llama_cpp, sampler, llama.token_eos())
    finally:
        llama_cpp.llama_sampler_free(sampler)


def _allowed(llama_cpp: Any, sampler: Any, token: int) -> bool:
    data = (llama_cpp.llama_token_data * 1)(llama_cpp.llama_token_data(token, 0.0, 0.0))
    candidates = llama_cpp.llama_token_data_array(data, 1, -1, False)
    llama_cpp.llama_sampler_apply(sampler, ctypes.byref(candidates))
    return not math.isinf(data[0].logit)


# -- fitting a schema into a token budget ----------------------------------------------------------

DEFAULT_MAX_LENGTH = 2000
"""Assumed for a string without ``maxLength`` (the fitted schema then sets one)."""
DEFAULT_MAX_ITEMS = 50
"""Assumed for an array without ``maxItems``."""
_SCALAR_CHARS = {"integer": 20, "number": 24, "boolean": 5, "null": 4}


def max_chars(schema: Any) -> int:
    """Longest JSON text the schema allows, in characters (with the grammar's optional spaces; a
    string character counts once, though an escape writes two or six)."""
    schema = normalize_schema(schema)
    return _max_chars(schema)


def fit_schema(schema: dict[str, Any], budget_chars: int) -> dict[str, Any]:
    """A copy of ``schema`` with ``maxLength``/``maxItems`` scaled down (never below the schema's
    minimums) until the longest allowed output is at most ``budget_chars``.

    Everything the fitted schema allows, the original allows too. Decoding with it means a model
    that loops inside a string or an array is stopped by the grammar before the token limit cuts
    the JSON off. Returns the schema unchanged when it already fits.
    """
    base = _with_defaults(normalize_schema(schema))
    if _max_chars(base) <= budget_chars:
        return base if base != normalize_schema(schema) else schema
    low, high = 0.0, 1.0
    for _ in range(20):  # bisection on one scale factor for all bounds
        mid = (low + high) / 2
        if _max_chars(_scaled(base, mid)) <= budget_chars:
            low = mid
        else:
            high = mid
    return _scaled(base, low)


def _max_chars(s: Any) -> int:
    if not isinstance(s, dict) or not s:
        return DEFAULT_MAX_LENGTH
    if "const" in s:
        return len(json.dumps(s["const"])) + 1
    if "enum" in s:
        return max((len(json.dumps(v)) for v in s["enum"]), default=4) + 1
    for key in ("anyOf", "oneOf"):
        if key in s:
            return max((_max_chars(v) for v in s[key]), default=4)
    t = s.get("type")
    if t == "object" or "properties" in s:
        props = s.get("properties", {})
        inner = sum(len(json.dumps(k)) + 3 + _max_chars(v) + 2 for k, v in props.items())
        return 3 + inner
    if t == "array":
        items = s.get("items", {})
        n = s.get("maxItems", DEFAULT_MAX_ITEMS)
        return 3 + n * (_max_chars(items) + 2)
    if t == "string":
        if s.get("format") in ("date", "time", "date-time"):
            return 40
        return 3 + s.get("maxLength", DEFAULT_MAX_LENGTH)
    return _SCALAR_CHARS.get(str(t), DEFAULT_MAX_LENGTH)


def _with_defaults(s: Any) -> Any:
    if isinstance(s, list):
        return [_with_defaults(v) for v in s]
    if not isinstance(s, dict):
        return s
    out = {k: _with_defaults(v) for k, v in s.items()}
    if out.get("type") == "string" and "enum" not in out and "const" not in out and "format" not in out:
        out.setdefault("maxLength", DEFAULT_MAX_LENGTH)
    if out.get("type") == "array" and isinstance(out.get("items"), dict):
        out.setdefault("maxItems", DEFAULT_MAX_ITEMS)
    return out


def _scaled(s: Any, factor: float) -> Any:
    if isinstance(s, list):
        return [_scaled(v, factor) for v in s]
    if not isinstance(s, dict):
        return s
    out = {k: _scaled(v, factor) for k, v in s.items()}
    if "maxLength" in out:
        out["maxLength"] = max(int(out["maxLength"] * factor), out.get("minLength", 0), 1)
    if "maxItems" in out:
        out["maxItems"] = max(int(out["maxItems"] * factor), out.get("minItems", 0))
    return out
