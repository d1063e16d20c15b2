"""Prompt templates rendered in a Jinja sandbox, with a small, checked language and bounded cost.

Three layers, because user templates come over HTTP:

1. ``check_prompt`` reads the template's syntax tree and allows only what a prompt needs:
   the known variables, ``if``, one level of ``for``, harmless filters, attribute and item access
   to public names, and bounded constants. No function calls, ``set``, macros, includes or
   ``*``/``**``. Nesting is bounded before parsing (Jinja parses and compiles recursively).
   Built-in and stored templates go through the same check every time they are compiled.
2. Rendering happens in a ``BoundedSandbox`` (Jinja's ``ImmutableSandboxedEnvironment`` with
   ``StrictUndefined``): no call of anything, ``*``/``**`` refused and ``+`` sized before it runs
   even in a template that skipped the check, filters that could build large values (``join``,
   ``list``, ``sort``, ``unique``) sized from their inputs first.
3. A sandbox alone bounds neither size nor time (``{{ schema|join(schema) }}`` is 4 G characters,
   a loop over a long string is millions of iterations): rendering streams with a character
   budget, every loop is wrapped in a guard that counts iterations, and a time budget is checked
   on every piece of output and every few loop iterations. Limits live in ``maie.templates.limits``.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from contextvars import ContextVar
from functools import lru_cache
from typing import Any

from jinja2 import StrictUndefined, TemplateError, Undefined, nodes
from jinja2.exceptions import SecurityError
from jinja2.filters import do_join, do_list, do_sort, do_unique
from jinja2.sandbox import ImmutableSandboxedEnvironment

from maie.templates.limits import (
    MAX_CONSTANT,
    MAX_LOOP_ITERATIONS,
    MAX_PROMPT_CHARS,
    MAX_PROMPT_NESTING,
    MAX_RENDER_SECONDS,
    MAX_RENDERED_CHARS,
)

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
"""Filters whose output is bounded by their input (no padding, repetition or formatting); ``join``,
``list``, ``sort`` and ``unique`` are wrapped to check the size of what they would build."""

MAX_TREE_DEPTH = 3 * MAX_PROMPT_NESTING
"""Deepest syntax tree of a prompt (``a + a + a ...`` and ``x|f|f|f ...`` nest without brackets)."""
_LOOP_GUARD = "_loop_guard"
"""A filter wrapped around every loop's iterable at compile time (prompts cannot name it: names
starting with "_" are refused)."""
_TIME_CHECK_EVERY = 256
"""Loop iterations between two looks at the clock."""

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
    """A prompt template that does not compile, is not allowed, or does not render within bounds."""


class _Budget:
    """The time left to one render; loops and output check it."""

    def __init__(self, seconds: float = MAX_RENDER_SECONDS) -> None:
        self.deadline = time.monotonic() + seconds

    def check(self) -> None:
        if time.monotonic() > self.deadline:
            raise PromptError(f"the prompt took longer than {MAX_RENDER_SECONDS:g} s to render (MAX_RENDER_SECONDS)")


_BUDGET: ContextVar[_Budget | None] = ContextVar("prompt_render_budget", default=None)


def _budget() -> _Budget:
    # Outside render_prompt (a template rendered directly, as tests do) each loop gets its own budget.
    return _BUDGET.get() or _Budget()


def _too_long(what: str) -> PromptError:
    return PromptError(f"{what} would be longer than {MAX_RENDERED_CHARS} characters (MAX_RENDERED_CHARS)")


def _size(value: Any) -> int:
    """Characters (or items) of a value as far as building a string or list from it goes."""
    if isinstance(value, str | list | tuple | dict | set | frozenset):
        return len(value)
    return len(str(value)) if isinstance(value, int | float) else 64


class BoundedSandbox(ImmutableSandboxedEnvironment):
    """The immutable sandbox, where nothing can be called and no operator can build a huge value."""

    intercepted_binops = frozenset({"+", "-", "*", "/", "//", "%", "**"})
    intercepted_unops = frozenset({"-", "+"})

    def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
        if operator in ("*", "**"):
            # "x" * 10**9 and [x] * 10**9 need no loop; pow builds huge integers.
            raise SecurityError(f"the {operator!r} operator is not allowed in a prompt")
        if operator == "+" and _size(left) + _size(right) > MAX_RENDERED_CHARS:
            raise _too_long("the result of '+'")
        if operator == "%" and isinstance(left, str):
            raise SecurityError("string formatting with '%' is not allowed in a prompt")
        return super().call_binop(context, operator, left, right)

    def call(__self, __context: Any, __obj: Any, *args: Any, **kwargs: Any) -> Any:
        # Prompts call nothing (range, lipsum, str methods...): the check refuses call syntax and
        # the globals are empty; this holds for a template that skipped the check too.
        if isinstance(__obj, Undefined):
            __obj._fail_with_undefined_error()
        raise SecurityError(f"calling {type(__obj).__name__} objects is unsafe in a prompt and not allowed")


def _bounded_join(eval_ctx: Any, value: Any, d: str = "", attribute: Any = None) -> str:
    items = _bounded_items(value, "join")
    sep = str(d)
    if sum(_size(v) for v in items) + len(sep) * max(len(items) - 1, 0) > MAX_RENDERED_CHARS:
        raise _too_long("the joined string")
    return str(do_join(eval_ctx, items, d, attribute))


_bounded_join.jinja_pass_arg = do_join.jinja_pass_arg  # type: ignore[attr-defined]


def _bounded_items(value: Any, what: str) -> list[Any]:
    if isinstance(value, str | list | tuple | dict) and len(value) > MAX_LOOP_ITERATIONS:
        raise PromptError(f"{what} of more than {MAX_LOOP_ITERATIONS} items is not allowed (MAX_LOOP_ITERATIONS)")
    return list(_loop_guard(value))


def _bounded_list(value: Any) -> list[Any]:
    return list(do_list(_bounded_items(value, "a list")))


def _bounded_sort(environment: Any, value: Any, *args: Any, **kwargs: Any) -> list[Any]:
    return list(do_sort(environment, _bounded_items(value, "sorting"), *args, **kwargs))


_bounded_sort.jinja_pass_arg = do_sort.jinja_pass_arg  # type: ignore[attr-defined]


def _bounded_unique(environment: Any, value: Any, *args: Any, **kwargs: Any) -> Iterator[Any]:
    return iter(do_unique(environment, _bounded_items(value, "unique"), *args, **kwargs))


_bounded_unique.jinja_pass_arg = do_unique.jinja_pass_arg  # type: ignore[attr-defined]


def _loop_guard(value: Iterable[Any]) -> Iterator[Any]:
    """Every ``for`` iterates through this: at most MAX_LOOP_ITERATIONS, within the time budget."""
    budget = _budget()
    for index, item in enumerate(value):
        if index >= MAX_LOOP_ITERATIONS:
            raise PromptError(f"a loop ran more than {MAX_LOOP_ITERATIONS} times (MAX_LOOP_ITERATIONS)")
        if index % _TIME_CHECK_EVERY == 0:
            budget.check()
        yield item


def _environment() -> BoundedSandbox:
    env = BoundedSandbox(undefined=StrictUndefined, autoescape=False, keep_trailing_newline=False)
    env.globals.clear()  # no range, cycler, joiner, lipsum, namespace, dict
    env.filters = {name: f for name, f in env.filters.items() if name in SAFE_FILTERS}
    env.filters.update(join=_bounded_join, list=_bounded_list, sort=_bounded_sort, unique=_bounded_unique)
    env.filters[_LOOP_GUARD] = _loop_guard
    return env


_ENV = _environment()


def check_prompt(source: str) -> None:
    """Raise PromptError unless ``source`` is a prompt template this sandbox allows."""
    _parse_checked(source)


def _parse_checked(source: str) -> nodes.Template:
    if not isinstance(source, str) or not source.strip():
        raise PromptError("the prompt is empty")
    if len(source) > MAX_PROMPT_CHARS:
        raise PromptError(f"the prompt is longer than {MAX_PROMPT_CHARS} characters (MAX_PROMPT_CHARS)")
    try:
        _check_nesting(source)  # the lexer is iterative; the parser is not
        tree = _ENV.parse(source)
    except TemplateError as exc:
        raise PromptError(f"the prompt does not compile: {exc}") from exc
    except RecursionError:
        raise PromptError(f"the prompt nests deeper than {MAX_PROMPT_NESTING} levels (MAX_PROMPT_NESTING)") from None
    if _tree_depth(tree) > MAX_TREE_DEPTH:
        raise PromptError(f"the prompt's expressions nest deeper than {MAX_TREE_DEPTH} levels (MAX_PROMPT_NESTING)")
    problems = list(_problems(tree, loop_vars=frozenset(), loop_depth=0))
    if problems:
        raise PromptError("the prompt is not allowed: " + "; ".join(dict.fromkeys(problems)))
    if not any(n.name == "transcript" for n in tree.find_all(nodes.Name)):
        raise PromptError("the prompt never uses {{ transcript }}")
    return tree


def _check_nesting(source: str) -> None:
    depth = 0
    for _, kind, value in _ENV.lex(source):
        if kind == "operator" and value in "([{":
            depth += 1
            if depth > MAX_PROMPT_NESTING:
                raise PromptError(
                    f"the prompt nests brackets deeper than {MAX_PROMPT_NESTING} levels (MAX_PROMPT_NESTING)"
                )
        elif kind == "operator" and value in ")]}":
            depth -= 1
        elif kind in ("block_begin", "variable_begin"):
            depth = 0


def _tree_depth(tree: nodes.Node) -> int:
    deepest = 0
    stack: list[tuple[nodes.Node, int]] = [(tree, 1)]
    while stack:
        node, depth = stack.pop()
        deepest = max(deepest, depth)
        if deepest > MAX_TREE_DEPTH:
            return deepest
        stack.extend((child, depth + 1) for child in node.iter_child_nodes())
    return deepest


def render_prompt(source: str, **variables: Any) -> str:
    """Render a checked prompt template with ``transcript``, ``schema``, ``example``, ``language``,
    within MAX_RENDERED_CHARS and MAX_RENDER_SECONDS."""
    template = _compiled(source)
    budget = _Budget()
    token = _BUDGET.set(budget)
    parts: list[str] = []
    size = 0
    try:
        for chunk in template.generate(**{k: variables.get(k, "") for k in VARIABLES}):
            size += len(chunk)
            if size > MAX_RENDERED_CHARS:
                raise PromptError(
                    f"the rendered prompt is longer than {MAX_RENDERED_CHARS} characters (MAX_RENDERED_CHARS)"
                )
            budget.check()
            parts.append(chunk)
    except PromptError:
        raise
    except Exception as exc:  # TemplateError, RecursionError, TypeError, MemoryError...: the template's fault
        raise PromptError(f"the prompt does not render: {type(exc).__name__}: {str(exc)[:300]}") from exc
    finally:
        _BUDGET.reset(token)
    return "".join(parts)


@lru_cache(maxsize=128)
def _compiled(source: str) -> Any:
    tree = _parse_checked(source)
    for loop in tree.find_all(nodes.For):
        loop.iter = nodes.Filter(loop.iter, _LOOP_GUARD, [], [], None, None, lineno=loop.lineno)
    try:
        return _ENV.from_string(tree)
    except TemplateError as exc:
        raise PromptError(f"the prompt does not compile: {exc}") from exc
    except (RecursionError, SyntaxError, MemoryError) as exc:
        raise PromptError(f"the prompt does not compile: {type(exc).__name__}") from None


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
