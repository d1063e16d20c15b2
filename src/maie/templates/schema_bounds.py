"""Bounds on a template's JSON Schema and example, checked before jsonschema or the grammar converter
sees them, and the RE2-based validator every schema is evaluated with.

Every walk here is iterative (an explicit stack), so a 400-deep document is refused by name instead
of raising RecursionError. Limits live in ``maie.templates.limits``.
"""

from __future__ import annotations

from collections.abc import Iterator
from functools import lru_cache
from typing import TYPE_CHECKING, Any, cast

import re2

from maie.templates import limits

if TYPE_CHECKING:
    from jsonschema import ValidationError

# jsonschema is imported where a schema is validated, not here: the API imports this module at start-up
# and most processes validate no schema before their first task (~65 ms of every start, measured).

# Keywords whose value is one subschema, a list of subschemas, or a name -> subschema map.
_ONE = (
    "additionalProperties",
    "additionalItems",
    "unevaluatedItems",
    "unevaluatedProperties",
    "propertyNames",
    "contains",
    "not",
    "if",
    "then",
    "else",
    "contentSchema",
)
_ONE_OR_LIST = ("items",)
_LIST = ("allOf", "anyOf", "oneOf", "prefixItems")
_MAP = ("properties", "patternProperties", "$defs", "definitions", "dependentSchemas")
_ITEM_COUNTS = ("minItems", "maxItems", "minContains", "maxContains")
_LENGTHS = ("minLength", "maxLength")
_PROPERTY_COUNTS = ("minProperties", "maxProperties")
_FORBIDDEN = {
    "$dynamicRef": "$dynamicRef is not supported (use a local $ref)",
    "$recursiveRef": "$recursiveRef is not supported (use a local $ref)",
}


class SchemaBoundError(ValueError):
    """A schema or example over one of the limits; the message names the limit."""


class GrammarTooLarge(SchemaBoundError):
    """A schema's decoding grammar is over ``MAX_GRAMMAR_CHARS`` (estimated before building, or built)."""


def check_json_shape(value: Any, what: str, *, max_items: int | None = None) -> None:
    """Depth at most ``MAX_DEPTH``, at most ``MAX_SCHEMA_NODES`` containers, and (for the example)
    arrays of at most ``max_items`` items."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    nodes = 0
    while stack:
        node, depth = stack.pop()
        if not isinstance(node, dict | list):
            continue
        if depth > limits.MAX_DEPTH:
            raise SchemaBoundError(f"{what} is nested deeper than {limits.MAX_DEPTH} levels (MAX_DEPTH)")
        nodes += 1
        if nodes > limits.MAX_SCHEMA_NODES:
            raise SchemaBoundError(
                f"{what} has more than {limits.MAX_SCHEMA_NODES} objects and arrays (MAX_SCHEMA_NODES)"
            )
        if isinstance(node, list):
            if max_items is not None and len(node) > max_items:
                raise SchemaBoundError(f"{what} has an array of more than {max_items} items (MAX_ITEMS)")
            stack.extend((v, depth + 1) for v in node)
        else:
            stack.extend((v, depth + 1) for v in node.values())


def subschemas(node: dict[str, Any]) -> Iterator[tuple[str, Any]]:
    """(keyword path, subschema) of every subschema position in one schema object."""
    for key in _ONE:
        if key in node:
            yield key, node[key]
    for key in _ONE_OR_LIST:
        value = node.get(key)
        if isinstance(value, list):
            yield from ((f"{key}/{i}", v) for i, v in enumerate(value))
        elif value is not None:
            yield key, value
    for key in _LIST:
        value = node.get(key)
        if isinstance(value, list):
            yield from ((f"{key}/{i}", v) for i, v in enumerate(value))
    for key in _MAP:
        value = node.get(key)
        if isinstance(value, dict):
            yield from ((f"{key}/{_escape(k)}", v) for k, v in value.items())


def check_schema_bounds(schema: dict[str, Any]) -> None:
    """Raise SchemaBoundError naming the first limit the schema is over (shape checked first)."""
    check_json_shape(schema, "the schema")
    tally = _Tally()
    seen: set[int] = set()
    for pointer, node in _walk(schema):
        seen.add(id(node))
        _check_node(pointer, node, tally)
    if tally.unevaluated and tally.pattern_properties:
        # jsonschema evaluates that pair with Python's backtracking re: not on our event loop.
        raise SchemaBoundError("unevaluatedProperties together with patternProperties is not supported")
    # A $ref may point anywhere in the document, also under keywords jsonschema does not know:
    # the schema objects found from there are held to the same bounds.
    for ref, target in _check_refs(schema, tally.refs).items():
        for pointer, node in _walk(target, ref):
            if id(node) not in seen:
                seen.add(id(node))
                _check_node(pointer, node, tally)


class _Tally:
    def __init__(self) -> None:
        self.refs: list[str] = []
        self.patterns = 0
        self.unevaluated = False
        self.pattern_properties = False


def _check_node(pointer: str, node: dict[str, Any], tally: _Tally) -> None:
    where = f"at {pointer}"
    for key, message in _FORBIDDEN.items():
        if key in node:
            raise SchemaBoundError(f"{where}: {message}")
    if "$id" in node and pointer != "#":
        raise SchemaBoundError(f"{where}: $id is only allowed at the root (it would change what $ref means)")
    if "$ref" in node:
        ref = node["$ref"]
        if not isinstance(ref, str) or not (ref == "#" or ref.startswith("#/")):
            raise SchemaBoundError(f'{where}: only local $ref ("#/...") is allowed, not {str(ref)[:80]!r}')
        tally.refs.append(ref)
        if len(tally.refs) > limits.MAX_REFS:
            raise SchemaBoundError(f"the schema has more than {limits.MAX_REFS} $ref (MAX_REFS)")
    for key in ("enum", "const"):
        if key not in node:
            continue
        values = node[key] if key == "enum" else [node[key]]
        if key == "enum" and isinstance(values, list) and len(values) > limits.MAX_ENUM_VALUES:
            raise SchemaBoundError(
                f"{where}: enum has {len(values)} values; at most {limits.MAX_ENUM_VALUES} (MAX_ENUM_VALUES)"
            )
        if _json_chars(values) > limits.MAX_ENUM_CHARS:
            raise SchemaBoundError(
                f"{where}: {key} values are longer than {limits.MAX_ENUM_CHARS} characters (MAX_ENUM_CHARS)"
            )
    _check_counts(node, where, _ITEM_COUNTS, limits.MAX_ITEMS, "MAX_ITEMS")
    _check_counts(node, where, _LENGTHS, limits.MAX_LENGTH, "MAX_LENGTH")
    _check_counts(node, where, _PROPERTY_COUNTS, limits.MAX_PROPERTIES, "MAX_PROPERTIES")
    props = node.get("properties")
    if isinstance(props, dict):
        if len(props) > limits.MAX_PROPERTIES:
            raise SchemaBoundError(
                f"{where}: {len(props)} properties; at most {limits.MAX_PROPERTIES} (MAX_PROPERTIES)"
            )
        for name in props:
            if len(name) > limits.MAX_PROPERTY_NAME_CHARS:
                raise SchemaBoundError(
                    f"{where}: property name {name[:40]!r}... is longer than "
                    f"{limits.MAX_PROPERTY_NAME_CHARS} characters (MAX_PROPERTY_NAME_CHARS)"
                )
    if isinstance(node.get("pattern"), str):
        tally.patterns += 1
        check_pattern(node["pattern"], where)
    pattern_props = node.get("patternProperties")
    if isinstance(pattern_props, dict) and pattern_props:
        tally.pattern_properties = True
        tally.patterns += len(pattern_props)
        for key in pattern_props:
            check_pattern(key, where)
    if tally.patterns > limits.MAX_PATTERNS:
        raise SchemaBoundError(f"the schema has more than {limits.MAX_PATTERNS} patterns (MAX_PATTERNS)")
    tally.unevaluated = tally.unevaluated or "unevaluatedProperties" in node


def check_pattern(pattern: str, where: str) -> None:
    if len(pattern) > limits.MAX_PATTERN_CHARS:
        raise SchemaBoundError(
            f"{where}: pattern is longer than {limits.MAX_PATTERN_CHARS} characters (MAX_PATTERN_CHARS)"
        )
    if _group_depth(pattern) > limits.MAX_PATTERN_NESTING:
        raise SchemaBoundError(
            f"{where}: pattern nests groups deeper than {limits.MAX_PATTERN_NESTING} (MAX_PATTERN_NESTING)"
        )
    try:
        compiled_pattern(pattern)
    except re2.error as exc:
        raise SchemaBoundError(
            f"{where}: pattern {pattern[:60]!r} is not supported ({exc}; patterns run on RE2: "
            "no lookaround or backreferences)"
        ) from None


@lru_cache(maxsize=512)
def compiled_pattern(pattern: str) -> Any:
    """The pattern compiled with RE2: linear-time matching, bounded compile memory."""
    options = re2.Options()
    options.max_mem = limits.PATTERN_MAX_MEM
    options.log_errors = False
    return re2.compile(pattern, options)


# -- the validator -------------------------------------------------------------------------------


def _pattern(validator: Any, pattern: str, instance: Any, schema: Any) -> Iterator[ValidationError]:
    from jsonschema import ValidationError

    if validator.is_type(instance, "string") and not compiled_pattern(pattern).search(instance):
        yield ValidationError(f"{instance[:200]!r} does not match {pattern!r}")


def _pattern_properties(validator: Any, value: dict[str, Any], instance: Any, schema: Any) -> Iterator[ValidationError]:
    if not validator.is_type(instance, "object"):
        return
    for pattern, subschema in value.items():
        regex = compiled_pattern(pattern)
        for key, item in instance.items():
            if regex.search(key):
                yield from validator.descend(item, subschema, path=key, schema_path=pattern)


def _additional_properties(validator: Any, ap: Any, instance: Any, schema: Any) -> Iterator[ValidationError]:
    if not validator.is_type(instance, "object"):
        return
    properties = schema.get("properties", {})
    regexes = [compiled_pattern(p) for p in schema.get("patternProperties", {})]
    extras = [k for k in instance if k not in properties and not any(r.search(k) for r in regexes)]
    if validator.is_type(ap, "object"):
        for extra in extras:
            yield from validator.descend(instance[extra], ap, path=extra)
    elif not ap and extras:
        from jsonschema import ValidationError

        shown = ", ".join(repr(e) for e in sorted(extras)[:20])
        yield ValidationError(f"Additional properties are not allowed ({shown} unexpected)")


_RE2_KEYWORDS = {
    "pattern": _pattern,
    "patternProperties": _pattern_properties,
    "additionalProperties": _additional_properties,
}


@lru_cache(maxsize=16)
def _re2_class(cls: type) -> type:
    from jsonschema.validators import extend

    return cast(type, extend(cls, _RE2_KEYWORDS))  # type: ignore[no-untyped-call]


def validator_class(schema: Any) -> type:
    """The schema's own draft (2020-12 when it names none), with ``pattern``, ``patternProperties``
    and ``additionalProperties`` evaluated by RE2 instead of Python's backtracking ``re``."""
    from jsonschema import Draft202012Validator
    from jsonschema.validators import validator_for

    cls = validator_for(schema, default=Draft202012Validator)
    return _re2_class(cls)


# -- internals -----------------------------------------------------------------------------------


def _walk(schema: Any, root: str = "#") -> Iterator[tuple[str, dict[str, Any]]]:
    """(JSON pointer, schema object) of every schema object reachable through subschema keywords."""
    stack: list[tuple[str, Any]] = [(root, schema)]
    while stack:
        pointer, node = stack.pop()
        if not isinstance(node, dict):
            continue
        yield pointer, node
        stack.extend((f"{pointer}/{path}", sub) for path, sub in subschemas(node))


def _check_counts(node: dict[str, Any], where: str, keys: tuple[str, ...], limit: int, name: str) -> None:
    for key in keys:
        value = node.get(key)
        if isinstance(value, int | float) and not isinstance(value, bool) and value > limit:
            raise SchemaBoundError(f"{where}: {key} {value:g} is over the limit of {limit} ({name})")


def _json_chars(value: Any) -> int:
    """Characters of ``value`` as JSON, counted without building the text (the shape is bounded)."""
    total = 0
    stack = [value]
    while stack:
        v = stack.pop()
        if isinstance(v, str):
            total += len(v) + 2
        elif isinstance(v, dict):
            total += 2 + sum(len(k) + 4 for k in v)
            stack.extend(v.values())
        elif isinstance(v, list):
            total += 2 + len(v)
            stack.extend(v)
        else:
            total += len(repr(v))
    return total


def _group_depth(pattern: str) -> int:
    depth = deepest = 0
    i, in_class = 0, False
    while i < len(pattern):
        c = pattern[i]
        if c == "\\":
            i += 2
            continue
        if in_class:
            in_class = c != "]"
        elif c == "[":
            in_class = True
        elif c == "(":
            depth += 1
            deepest = max(deepest, depth)
        elif c == ")":
            depth -= 1
        i += 1
    return deepest


def _escape(key: str) -> str:
    return key.replace("~", "~0").replace("/", "~1")


def _unescape(token: str) -> str:
    return token.replace("~1", "/").replace("~0", "~")


def _resolve(schema: dict[str, Any], ref: str) -> Any:
    target: Any = schema
    for token in ref[2:].split("/") if ref != "#" else []:
        token = _unescape(token)
        if isinstance(target, dict) and token in target:
            target = target[token]
        elif isinstance(target, list) and token.isdigit() and int(token) < len(target):
            target = target[int(token)]
        else:
            raise SchemaBoundError(f"$ref {ref[:80]!r} does not point into the schema")
    if not isinstance(target, dict | bool):
        raise SchemaBoundError(f"$ref {ref[:80]!r} does not point to a schema")
    return target


def _check_refs(schema: dict[str, Any], refs: list[str]) -> dict[str, Any]:
    """Every $ref resolves inside the schema, and none can reach itself again (no cycle).
    Returns each ref's target."""
    if not refs:
        return {}
    targets: dict[str, Any] = {}
    # Edges: a ref target -> the refs inside its subtree (following subschema keywords).
    edges: dict[str, list[str]] = {}
    pending = list(dict.fromkeys(refs))
    while pending:
        ref = pending.pop()
        if ref in edges:
            continue
        target = targets[ref] = _resolve(schema, ref)
        inner = [n["$ref"] for _, n in _walk(target) if isinstance(n, dict) and isinstance(n.get("$ref"), str)]
        for r in inner:
            if not (r == "#" or r.startswith("#/")):
                raise SchemaBoundError(f'only local $ref ("#/...") is allowed, not {r[:80]!r}')
        edges[ref] = inner
        pending.extend(inner)
        if len(edges) > limits.MAX_REFS:
            raise SchemaBoundError(f"the schema has more than {limits.MAX_REFS} $ref targets (MAX_REFS)")
    # Iterative depth-first search for a cycle.
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    for start in edges:
        if state.get(start):
            continue
        stack: list[tuple[str, int]] = [(start, 0)]
        state[start] = 1
        while stack:
            node, index = stack[-1]
            if index < len(edges[node]):
                stack[-1] = (node, index + 1)
                nxt = edges[node][index]
                if state.get(nxt) == 1:
                    raise SchemaBoundError(
                        f"$ref {nxt[:80]!r} leads back to itself (recursive schemas are not supported)"
                    )
                if not state.get(nxt):
                    state[nxt] = 1
                    stack.append((nxt, 0))
            else:
                state[node] = 2
                stack.pop()
    return targets
