"""Summary templates: built-in (read-only) and user templates, validated and rendered in a sandbox."""

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
from maie.templates.sandbox import PromptError, check_prompt, render_prompt

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
