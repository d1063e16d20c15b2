"""Prompt templates rendered in a Jinja sandbox, with a small, checked language.

Two layers, because user templates come over HTTP:

1. ``check_prompt`` reads the template's syntax tree and allows only what a prompt needs:
   the known variables, ``if``, one level of ``for``, harmless filters, attribute and item access
   to public names, and bounded constants. No function calls, ``set``, macros, includes or
   ``*``/``**``, so a template can neither escape nor build a huge string. Built-in and stored
   templates go through the same check every time they are compiled.
2. Rendering happens in Jinja's ``ImmutableSandboxedEnvironment`` with ``StrictUndefined``
   (underscore attributes refused at run time too, data cannot be mutated).
"""

from __future__ import annotations

from collections.abc import Iterator
from functools import lru_cache
from typing import Any

from jinja2 import StrictUndefined, TemplateError, nodes
from jinja2.sandbox import ImmutableSandboxedEnvironment

VARIABLES = frozenset({"transcript", "schema", "example", "language"})
"""What a prompt can use: the transcript text, the JSON schema and example (as JSON text), and the
language code of the transcript."""

SAFE_FILTERS = frozenset(
    {
        "default",
        "d",
        "lower",
        "upper",
        "title",
        "capitalize",
        "trim",
        "length",
        "count",
        "first",
        "last",
        "join",
        "tojson",
        "string",
        "list",
        "sort",
        "unique",
        "reverse",
        "wordcount",
        "truncate",
        "int",
        "float",
        "round",
        "abs",
        "e",
        "escape",
    }
)
"""Filters whose output is bounded by their input (no padding, repetition or formatting)."""

MAX_PROMPT_CHARS = 32_000
MAX_CONSTANT = 10_000
MAX_RENDERED_CHARS = 2_000_000

_ALLOWED_NODES: tuple[type[nodes.Node], ...] = (
    nodes.Template,
    nodes.Output,
    nodes.TemplateData,
    nodes.Name,
    nodes.Const,
    nodes.If,
    nodes.For,
    nodes.Filter,
    nodes.Test,
    nodes.Compare,
    nodes.Operand,
    nodes.And,
    nodes.Or,
    nodes.Not,
    nodes.Neg,
    nodes.Pos,
    nodes.Add,
    nodes.Sub,
    nodes.Concat,
    nodes.CondExpr,
    nodes.Getattr,
    nodes.Getitem,
    nodes.Slice,
    nodes.List,
    nodes.Tuple,
    nodes.Dict,
    nodes.Pair,
    nodes.Keyword,
)


class PromptError(ValueError):
    """A prompt template that does not compile, is not allowed, or does not render."""


def _environment() -> ImmutableSandboxedEnvironment:
    env = ImmutableSandboxedEnvironment(undefined=StrictUndefined, autoescape=False, keep_trailing_newline=False)
    env.globals.clear()  # no range, cycler, joiner, lipsum, namespace, dict
    env.filters = {name: f for name, f in env.filters.items() if name in SAFE_FILTERS}
    return env


_ENV = _environment()


def check_prompt(source: str) -> None:
    """Raise PromptError unless ``source`` is a prompt template this sandbox allows."""
    if not isinstance(source, str) or not source.strip():
        raise PromptError("the prompt is empty")
    if len(source) > MAX_PROMPT_CHARS:
        raise PromptError(f"the prompt is longer than {MAX_PROMPT_CHARS} characters")
    try:
        tree = _ENV.parse(source)
    except TemplateError as exc:
        raise PromptError(f"the prompt does not compile: {exc}") from exc
    problems = list(_problems(tree, loop_vars=frozenset(), loop_depth=0))
    if problems:
        raise PromptError("the prompt is not allowed: " + "; ".join(dict.fromkeys(problems)))
    if not any(n.name == "transcript" for n in tree.find_all(nodes.Name)):
        raise PromptError("the prompt never uses {{ transcript }}")


def render_prompt(source: str, **variables: Any) -> str:
    """Render a checked prompt template with ``transcript``, ``schema``, ``example``, ``language``."""
    template = _compiled(source)
    try:
        out = template.render(**{k: variables.get(k, "") for k in VARIABLES})
    except (TemplateError, RecursionError, ArithmeticError, TypeError, ValueError) as exc:
        raise PromptError(f"the prompt does not render: {exc}") from exc
    if len(out) > MAX_RENDERED_CHARS:
        raise PromptError("the rendered prompt is too long")
    return out


@lru_cache(maxsize=128)
def _compiled(source: str) -> Any:
    check_prompt(source)
    try:
        return _ENV.from_string(source)
    except TemplateError as exc:
        raise PromptError(f"the prompt does not compile: {exc}") from exc


def _problems(node: nodes.Node, loop_vars: frozenset[str], loop_depth: int) -> Iterator[str]:
    if not isinstance(node, _ALLOWED_NODES):
        yield f"{type(node).__name__.lower()} is not allowed"
    elif isinstance(node, nodes.Name):
        if node.ctx == "load" and node.name not in VARIABLES | loop_vars | {"loop"}:
            yield f"unknown variable {node.name!r} (allowed: {', '.join(sorted(VARIABLES))})"
    elif isinstance(node, nodes.Getattr) and node.attr.startswith("_"):
        yield f"attribute {node.attr!r} is not allowed"
    elif isinstance(node, nodes.Getitem) and isinstance(node.arg, nodes.Const):
        if isinstance(node.arg.value, str) and node.arg.value.startswith("_"):
            yield f"item {node.arg.value!r} is not allowed"
    elif isinstance(node, nodes.Filter | nodes.Test) and node.name.startswith("_"):
        yield f"{node.name!r} is not allowed"
    elif isinstance(node, nodes.Filter) and node.name not in SAFE_FILTERS:
        yield f"filter {node.name!r} is not allowed"
    elif isinstance(node, nodes.Const):
        value = node.value
        if isinstance(value, int | float) and not isinstance(value, bool) and abs(value) > MAX_CONSTANT:
            yield f"constant {value!r} is too large"
    elif isinstance(node, nodes.For):
        if loop_depth >= 1:
            yield "nested loops are not allowed"
            return
        if node.recursive:
            yield "recursive loops are not allowed"
        names = [node.target, *node.target.find_all(nodes.Name)]
        targets = frozenset(n.name for n in names if isinstance(n, nodes.Name))
        yield from _problems(node.iter, loop_vars, loop_depth)
        for child in (*node.body, *node.else_, *([node.test] if node.test else [])):
            yield from _problems(child, loop_vars | targets, loop_depth + 1)
        return
    for child in node.iter_child_nodes():
        yield from _problems(child, loop_vars, loop_depth)
