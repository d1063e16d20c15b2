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
import re
from functools import lru_cache
from typing import Any

from maie.templates.limits import MAX_GRAMMAR_CHARS
from maie.templates.schema_bounds import GrammarTooLarge

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
    with ``json.loads`` in strict mode). Properties come out in the schema's order.

    Raises GrammarTooLarge when a cheap estimate says the grammar would be over
    ``MAX_GRAMMAR_CHARS`` (before building anything: ``maxItems: 1e9`` once built 22 GB), or when the
    built grammar is."""
    estimate = estimate_gbnf_chars(schema)
    if estimate > MAX_GRAMMAR_CHARS:
        raise GrammarTooLarge(
            f"its grammar would be about {estimate:,} characters, over the limit of "
            f"{MAX_GRAMMAR_CHARS:,} (MAX_GRAMMAR_CHARS)"
        )
    # Key order is kept in the cache key on purpose: it is the order the model writes fields in.
    gbnf = _schema_to_gbnf_cached(json.dumps(schema, ensure_ascii=False))
    if len(gbnf) > MAX_GRAMMAR_CHARS:
        raise GrammarTooLarge(
            f"its grammar is {len(gbnf):,} characters, over the limit of {MAX_GRAMMAR_CHARS:,} (MAX_GRAMMAR_CHARS)"
        )
    return gbnf


def fitted_form(schema: dict[str, Any]) -> dict[str, Any]:
    """The largest schema ``fit_schema`` can hand the decoder: defaults added, nothing scaled down.
    Its grammar bounds every grammar a summary builds from ``schema``."""
    fitted: dict[str, Any] = _with_defaults(normalize_schema(schema))
    return fitted


_PRIMITIVE_CHARS = 4_000
"""The converter's fixed rules (value, object, string, number, date...) all together, with room."""
_QUANTIFIER = re.compile(r"\{\s*(\d*)\s*(?:,\s*(\d*)\s*)?\}")


def estimate_gbnf_chars(schema: Any) -> int:
    """An upper bound, cheap to compute, on the length of ``schema_to_gbnf(schema)``.

    Follows what llama-cpp-python's converter writes: one rule per schema object named by its path,
    repetitions (``minItems``/``maxItems``, ``minLength``/``maxLength``, ``{m,n}`` in a pattern)
    spelled out one reference per repetition, one rule per suffix of an object's optional
    properties, and each distinct ``$ref`` target expanded once more under its own name. Every
    walk is iterative, and a schema object is expanded at most a bounded number of times.
    """
    root = normalize_schema(schema)
    total = _PRIMITIVE_CHARS
    stack: list[tuple[Any, int]] = [(root, 4)]
    expanded_refs: set[str] = set()
    while stack:
        node, name = stack.pop()
        if not isinstance(node, dict):
            continue
        total += name + 24
        ref = node.get("$ref")
        if isinstance(ref, str) and ref not in expanded_refs:
            expanded_refs.add(ref)
            target = _local_target(root, ref)
            if target is not None:
                stack.append((target, len(ref.rsplit("/", 1)[-1]) + 2))
        if "const" in node:
            total += 4 * _json_chars(node["const"]) + 8
        enum = node.get("enum")
        if isinstance(enum, list):
            total += sum(4 * _json_chars(v) + 4 for v in enum)
        for key in ("items", "prefixItems"):
            items = node.get(key)
            if isinstance(items, dict):
                total += (_count(node, "minItems", "maxItems") + 1) * (name + 30)
                stack.append((items, name + 6))
            elif isinstance(items, list):
                total += len(items) * (name + 30)
                stack.extend((item, name + 12) for item in items)
        if "minLength" in node or "maxLength" in node:
            total += (_count(node, "minLength", "maxLength") + 1) * 8
        pattern = node.get("pattern")
        if isinstance(pattern, str):
            total += 4 * len(pattern) + 2 * name + 16
            for low, high in _QUANTIFIER.findall(pattern):
                times = max(int(low or 0), int(high or 0))
                total += (times + 1) * (4 * len(pattern) + name + 16)
        props = node.get("properties")
        if isinstance(props, dict):
            required = node.get("required")
            optional = sum(1 for k in props if not (isinstance(required, list) and k in required))
            longest = max((len(k) for k in props), default=0)
            for key, sub in props.items():
                total += 2 * name + 8 * len(key) + 48
                stack.append((sub, name + len(key) + 1))
            total += (optional + 1) ** 2 * (name + 4 * longest + 48)
        extra = node.get("additionalProperties")
        if isinstance(extra, dict):
            total += 2 * name + 64
            stack.append((extra, name + 18))
        for key in ("anyOf", "oneOf", "allOf"):
            alternatives = node.get(key)
            if isinstance(alternatives, list):
                total += len(alternatives) * (name + 16)
                stack.extend((alt, name + 14) for alt in alternatives)
        for key in ("$defs", "definitions"):
            defs = node.get(key)
            if isinstance(defs, dict):
                stack.extend((sub, len(k) + 2) for k, sub in defs.items())
        if total > 100 * MAX_GRAMMAR_CHARS:  # far over: no need to be exact
            break
    return total


def _count(node: dict[str, Any], low_key: str, high_key: str) -> int:
    low, high = node.get(low_key, 0), node.get(high_key)
    values = [v for v in (low, high) if isinstance(v, int | float) and not isinstance(v, bool)]
    return int(min(max(values, default=0), 10**12))


def _json_chars(value: Any) -> int:
    try:
        return len(json.dumps(value, ensure_ascii=False))
    except (TypeError, ValueError, RecursionError):
        return 10**9


def _local_target(root: Any, ref: str) -> Any:
    if ref == "#":
        return root
    if not ref.startswith("#/"):
        return None
    target = root
    for token in ref[2:].split("/"):
        token = token.replace("~1", "/").replace("~0", "~")
        if isinstance(target, dict) and token in target:
            target = target[token]
        elif isinstance(target, list) and token.isdigit() and int(token) < len(target):
            target = target[int(token)]
        else:
            return None
    return target


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
    scaled: dict[str, Any] = _scaled(base, low)
    return scaled


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
        n = int(s.get("maxItems", DEFAULT_MAX_ITEMS))
        return 3 + n * (_max_chars(items) + 2)
    if t == "string":
        if s.get("format") in ("date", "time", "date-time"):
            return 40
        return 3 + int(s.get("maxLength", DEFAULT_MAX_LENGTH))
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
