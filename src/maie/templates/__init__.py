"""Summary templates: built-in (read-only) and user templates, validated and rendered in a sandbox."""

from typing import TYPE_CHECKING, Any

from maie.templates.registry import (
    BUILTIN_DIR,
    TEMPLATE_ID,
    ExampleMode,
    Template,
    TemplateStore,
    check_template_id,
    first_error,
    placeholder_example,
    schema_validator,
    validate_template,
)

if TYPE_CHECKING:
    from maie.templates.sandbox import PromptError, check_prompt, render_prompt

_SANDBOX = ("PromptError", "check_prompt", "render_prompt")


def __getattr__(name: str) -> Any:
    """The sandbox's names, imported on first use: it imports Jinja, which the API's start-up does not need."""
    if name in _SANDBOX:
        from maie.templates import sandbox

        return getattr(sandbox, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "BUILTIN_DIR",
    "TEMPLATE_ID",
    "ExampleMode",
    "PromptError",
    "Template",
    "TemplateStore",
    "check_prompt",
    "check_template_id",
    "first_error",
    "placeholder_example",
    "render_prompt",
    "schema_validator",
    "validate_template",
]
