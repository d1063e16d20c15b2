"""Every bound on a user template, in one place: each is checked before anything is built from it.

A template arrives over HTTP from any key and is then compiled into a prompt and a decoding grammar
in the API (validation) and again in every worker (summaries). Without bounds one request could make
the API build a 22 GB grammar (``maxItems: 1e9``), freeze the event loop on a backtracking regex,
render a 2 GB prompt (``{{ schema|join(schema) }}``) or answer 500 on a RecursionError. A template
over any bound is refused with 422 ``TEMPLATE_INVALID`` naming the bound.

These are module constants, not settings: they protect the service from its own callers, and the
built-in templates sit far below every one of them (the largest built-in grammar is 22 k characters).
"""

from __future__ import annotations

# -- schema shape ------------------------------------------------------------------------------------

MAX_SCHEMA_CHARS = 64_000
"""Largest schema, as stored (indented JSON): what is accepted is what can be read back."""
MAX_EXAMPLE_CHARS = 64_000
"""Largest example, as stored."""
MAX_DEPTH = 32
"""Deepest nesting of JSON objects/arrays in the schema or the example (a property is two levels:
``properties`` then its name). jsonschema and the grammar converter recurse per level."""
MAX_SCHEMA_NODES = 2_000
"""Most objects and arrays in a schema: bounds every walk over it."""
MAX_PROPERTIES = 64
"""Most properties of one object, and the largest ``minProperties``/``maxProperties``. The grammar
converter writes one rule per suffix of the optional properties: its output grows with the square."""
MAX_PROPERTY_NAME_CHARS = 100
"""Longest property name. Grammar rule names are the path of names from the root, repeated in every
repetition of an array or string."""
MAX_ENUM_VALUES = 256
"""Most values of one ``enum``."""
MAX_ENUM_CHARS = 8_000
"""Most characters (as JSON) in the values of one ``enum`` or a ``const``."""
MAX_ITEMS = 1_000
"""Largest ``minItems``/``maxItems`` (and ``minContains``/``maxContains``), and the most items of any
array in the example. The converter spells repetitions out: ``maxItems`` n writes n nested rules."""
MAX_LENGTH = 10_000
"""Largest ``minLength``/``maxLength``: a string of n characters is n nested grammar rules."""

# -- references and patterns ---------------------------------------------------------------------

MAX_REFS = 64
"""Most ``$ref`` in a schema. Only local JSON pointers (``#`` or ``#/...``) are allowed (no remote
retrieval, no anchors), and no ``$ref`` may lead back to itself (a cycle has no finite grammar
bound and recursed forever in validation)."""
MAX_PATTERN_CHARS = 256
"""Longest ``pattern`` (or ``patternProperties`` key)."""
MAX_PATTERN_NESTING = 16
"""Deepest nesting of groups in a pattern: the converter parses groups recursively."""
MAX_PATTERNS = 64
"""Most patterns in a schema."""
PATTERN_MAX_MEM = 1 << 20
"""Memory RE2 may use to compile one pattern (bytes). Patterns are evaluated with RE2 (linear
time, no backtracking), never with Python's ``re``."""

# -- grammar -------------------------------------------------------------------------------------

MAX_GRAMMAR_CHARS = 400_000
"""Largest decoding grammar (GBNF text), for the schema as the worker fits it (strings without
``maxLength`` get a default one). Checked on a cheap estimate before the grammar is built, and on
the real grammar after."""

# -- prompt --------------------------------------------------------------------------------------

MAX_PROMPT_CHARS = 32_000
"""Longest prompt template."""
MAX_CONSTANT = 10_000
"""Largest number literal in a prompt."""
MAX_PROMPT_NESTING = 20
"""Deepest nesting of brackets or expressions in a prompt: Jinja parses and compiles recursively
(200 nested parentheses were a RecursionError, a 500)."""
MAX_RENDERED_CHARS = 2_000_000
"""Longest rendered prompt, and longest string any filter or operator may build while rendering
(checked before it is built: ``join`` and ``+`` are sized from their inputs)."""
MAX_LOOP_ITERATIONS = 100_000
"""Most iterations of one ``for`` loop."""
MAX_RENDER_SECONDS = 2.0
"""Longest a prompt may take to render (checked as output is produced and on every loop
iteration). Rendering runs in the API (validation) and in the worker (every summary)."""
