"""Summary templates: read-only built-ins shipped with MAIE plus user templates in the data dir.

A template is a folder ``<id>/`` with ``prompt.jinja`` (the prompt, rendered in the sandbox),
``schema.json`` (a JSON Schema of type object, enforced on the summary) and ``example.json`` (one
valid output, shown to the model). An optional ``meta.json`` holds ``name``, ``description`` and
``language``; unset, the schema's ``title``/``description`` stand in.

User templates live under ``<data_dir>/templates``: the data dir is shared by the API and every
worker, so a template created through one API process is seen by all. Writes go to a hidden
temporary folder first and are moved into place with one rename, so a reader never sees half a
template.

Every user template has a scope (see ``Template.scope``):

- ``user:<key name>`` in ``@users/<name>/<id>/``: created by that key, seen only by it and admins;
- ``shared`` in ``@shared/<id>/``: created by an admin, seen (not changed) by every key;
- ``legacy`` in ``<id>/``: written before templates had owners; admins only.

Ids are unique per owner, not globally: a key's namespace is the built-ins, the shared templates and
its own, and an id taken there is refused (409). A global namespace would let any key learn which ids
other keys use (a 409 where it expected a 201), which is the existence oracle tenancy rules out.
"""

from __future__ import annotations

import builtins
import copy
import json
import logging
import os
import re
import shutil
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import re2

from maie.config import Settings
from maie.errors import ErrorCode, MaieError
from maie.principals import KEY_NAME, Principal
from maie.templates.limits import MAX_EXAMPLE_CHARS, MAX_ITEMS, MAX_SCHEMA_CHARS
from maie.templates.schema_bounds import (
    SchemaBoundError,
    check_json_shape,
    check_schema_bounds,
    compiled_pattern,
    validator_class,
)

if TYPE_CHECKING:
    from jsonschema import ValidationError

# jsonschema and the Jinja sandbox are imported where a template is validated or rendered: the API
# imports this module at start-up, and a task without a template needs neither (~100 ms, measured).

log = logging.getLogger(__name__)

BUILTIN_DIR = Path(__file__).resolve().parent / "builtin"
TEMPLATE_ID = re.compile(r"[a-z0-9][a-z0-9_\-]{0,63}")
"""Template ids (matched in full): they name folders, so they can never form another path."""
MAX_STORED_FILE_CHARS = 4_000_000
"""Largest schema or example file read back: far above what validation accepts, so a template that
an older version stored (it measured compact JSON, then wrote it indented) is still readable, and
so can be updated or deleted."""
SAMPLE_TRANSCRIPT = (
    "S1: Good morning everyone, let's review the launch plan.\n"
    "S2: The beta ships on Friday and Lan will write the release notes."
)
FILES = ("prompt.jinja", "schema.json", "example.json")
BUILTIN = "builtin"
SHARED = "shared"
LEGACY = "legacy"
USER_PREFIX = "user:"


@dataclass(frozen=True)
class Template:
    id: str
    name: str
    description: str
    language: str | None
    builtin: bool
    prompt: str
    schema: dict[str, Any]
    example: dict[str, Any]
    fields: list[str] = field(default_factory=list)
    scope: str = BUILTIN
    """``builtin``, ``shared``, ``legacy`` or ``user:<key name>`` (see the module docstring)."""

    @property
    def owner(self) -> str | None:
        return self.scope.removeprefix(USER_PREFIX) if self.scope.startswith(USER_PREFIX) else None

    def info(self) -> dict[str, Any]:
        """What a template listing shows."""
        return {
            "id": self.id,
            "name": self.name,
            "description": self.description,
            "language": self.language,
            "builtin": self.builtin,
            "scope": self.scope.partition(":")[0],
            "owner": self.owner,
            "fields": self.fields,
        }

    def render(self, transcript: str, language: str | None = None, example: ExampleMode = "full") -> str:
        """The prompt for one transcript (raises PromptError). ``example``: the template's own
        example (``full``), one derived from the schema with ``<...>`` placeholders for every value
        (``placeholder``: the form without content a small model could copy), or none (``none``:
        the variable is empty; the built-in prompts then leave out the whole example paragraph)."""
        from maie.templates.sandbox import render_prompt

        return render_prompt(
            self.prompt,
            transcript=transcript,
            # compact, and without "$schema": prompt tokens are most of a small model's time
            schema=json.dumps(
                {k: v for k, v in self.schema.items() if k != "$schema"},
                ensure_ascii=False,
                separators=(",", ":"),
            ),
            example=self.example_text(example),
            language=language or self.language or "",
        )

    def example_text(self, mode: ExampleMode = "full") -> str:
        if mode == "none":
            return ""
        value = placeholder_example(self.schema) if mode == "placeholder" else self.example
        return json.dumps(value, ensure_ascii=False)


ExampleMode = Literal["full", "placeholder", "none"]
"""How a template's example is shown in the prompt (see ``Template.render``)."""


def placeholder_example(schema: dict[str, Any]) -> Any:
    """An example of the schema's form whose values say what goes there, not what was said:
    ``"<A short title for the meeting.>"``, enums as ``"positive|neutral"``, one item per list."""
    if not isinstance(schema, dict):
        return "<text>"
    if "enum" in schema:
        return "|".join(str(v) for v in schema["enum"])
    kind = schema.get("type")
    kinds = kind if isinstance(kind, list) else [kind]
    hint = str(schema.get("description") or schema.get("title") or "text").strip()
    if "object" in kinds or "properties" in schema:
        return {k: placeholder_example(v) for k, v in schema.get("properties", {}).items()}
    if "array" in kinds:
        items = schema.get("items", {})
        items = items if isinstance(items, dict) else {}
        if not (items.get("description") or items.get("title")):
            items = {**items, "description": hint}  # the list's own hint for its items
        return [placeholder_example(items)]
    if "integer" in kinds or "number" in kinds:
        return 0
    if "boolean" in kinds:
        return False
    if kinds == ["null"]:
        return None
    return f"<{hint}>"


def check_template_id(template_id: str) -> str:
    if not isinstance(template_id, str) or not TEMPLATE_ID.fullmatch(template_id):
        raise MaieError(
            ErrorCode.TEMPLATE_NOT_FOUND,
            f"template {template_id!r} not found (ids are 1-64 of a-z, 0-9, '_' and '-')",
        )
    return template_id


def schema_validator(schema: dict[str, Any]) -> Any:
    """A jsonschema validator for the schema's own draft (2020-12 when it names none), with patterns
    evaluated by RE2 (linear time): the API validates examples with it, the worker LLM output."""
    return validator_class(schema)(schema)


def validate_template(prompt: Any, schema: Any, example: Any, meta: dict[str, Any] | None = None) -> None:
    """Raise MaieError(TEMPLATE_INVALID) naming the first problem with a template's parts.

    Every bound in ``maie.templates.limits`` is checked before anything is built from the parts
    (validator, grammar, prompt), and any other exception while validating is a TEMPLATE_INVALID
    too, never a 500: the parts come from any API key.
    """
    try:
        _validate(prompt, schema, example, meta)
    except MaieError:
        raise
    except SchemaBoundError as exc:  # GrammarTooLarge too
        raise _invalid(str(exc)) from None
    except Exception as exc:  # a bound we did not think of: refuse the template, keep the log short
        log.warning("template refused: validation raised %s: %s", type(exc).__name__, str(exc)[:200])
        raise _invalid(f"the template could not be validated ({type(exc).__name__}: {str(exc)[:200]})") from None


def _invalid(message: str) -> MaieError:
    return MaieError(ErrorCode.TEMPLATE_INVALID, message)


def _validate(prompt: Any, schema: Any, example: Any, meta: dict[str, Any] | None) -> None:
    invalid = _invalid
    if not isinstance(schema, dict):
        raise invalid("schema must be a JSON object")
    check_schema_bounds(schema)  # shape first (iterative), before anything recursive touches it
    # Measured as stored (indented): a schema that passes can always be read back.
    if len(_dumps(schema)) > MAX_SCHEMA_CHARS:
        raise invalid(f"schema is larger than {MAX_SCHEMA_CHARS} characters as stored (MAX_SCHEMA_CHARS)")
    error = _meta_schema_error(schema)
    if error:
        raise invalid(f"schema is not a valid JSON Schema: {error}")
    if schema.get("type") != "object" or not isinstance(schema.get("properties"), dict):
        raise invalid('schema must have "type": "object" and "properties"')
    _check_decodable(schema, invalid)

    if not isinstance(example, dict):
        raise invalid("example must be a JSON object")
    check_json_shape(example, "the example", max_items=MAX_ITEMS)
    if len(_dumps(example)) > MAX_EXAMPLE_CHARS:
        raise invalid(f"example is larger than {MAX_EXAMPLE_CHARS} characters as stored (MAX_EXAMPLE_CHARS)")
    error = first_error(schema, example)
    if error:
        raise invalid(f"example does not match the schema: {error}")

    if not isinstance(prompt, str):
        raise invalid("prompt must be a string")
    from maie.templates.sandbox import PromptError, check_prompt

    try:
        check_prompt(prompt)
        probe = Template("probe", "", "", None, False, prompt, schema, example)
        rendered = probe.render(SAMPLE_TRANSCRIPT, "en")
    except PromptError as exc:
        raise invalid(str(exc)) from None
    if SAMPLE_TRANSCRIPT not in rendered:
        raise invalid("the rendered prompt does not contain the transcript")

    for key, limit in (("name", 200), ("description", 2000), ("language", 16)):
        value = (meta or {}).get(key)
        if value is not None and (not isinstance(value, str) or len(value) > limit):
            raise invalid(f"{key} must be a string of at most {limit} characters")


def _meta_schema_error(schema: dict[str, Any]) -> str | None:
    """Like ``check_schema``, with the ``regex`` format checked by RE2 (the patterns it accepts are
    the ones validation will run)."""
    from jsonschema import Draft202012Validator
    from jsonschema.exceptions import best_match
    from jsonschema.validators import validator_for

    cls = validator_for(schema, default=Draft202012Validator)
    checker = copy.copy(cls.FORMAT_CHECKER)
    checker.checkers = {**checker.checkers, "regex": (_re2_compiles, re2.error)}
    error = best_match(cls(cls.META_SCHEMA, format_checker=checker).iter_errors(schema))
    if error is None:
        return None
    path = "/".join(str(p) for p in error.absolute_path) or "(root)"
    return f"at {path}: {error.message[:300]}"


def _re2_compiles(value: object) -> bool:
    if isinstance(value, str):
        compiled_pattern(value)
    return True


def first_error(schema: dict[str, Any], instance: Any) -> str | None:
    """The most relevant validation error of ``instance``, as ``at <path>: <message>``, or None."""
    from jsonschema.exceptions import best_match

    error: ValidationError | None = best_match(schema_validator(schema).iter_errors(instance))
    if error is None:
        return None
    path = "/".join(str(p) for p in error.absolute_path) or "(root)"
    return f"at {path}: {error.message}"


def _check_decodable(schema: dict[str, Any], invalid: Any) -> None:
    """The schema must also become a grammar for constrained decoding, of a bounded size: both as
    it is and as the worker fits it (strings and arrays without a maximum get a default one)."""
    try:
        from maie.pipeline.llm.grammar import fitted_form, schema_to_gbnf
    except ImportError:  # pragma: no cover - llama-cpp-python is a dependency
        return
    try:
        for form in (schema, fitted_form(schema)):
            schema_to_gbnf(form)  # estimates first, builds only under MAX_GRAMMAR_CHARS
    except ImportError:  # pragma: no cover
        return
    except SchemaBoundError as exc:  # GrammarTooLarge
        raise invalid(f"schema cannot be used for constrained decoding: {exc}") from None
    except Exception as exc:  # the converter asserts/raises on what it cannot express
        raise invalid(f"schema cannot be used for constrained decoding: {str(exc)[:300]}") from None


class TemplateStore:
    """Find, read and manage templates. Built-ins are read-only; user templates live in
    ``<data_dir>/templates``, each in its owner's scope.

    ``caller`` is the principal asking. ``None`` (the in-process CLI, a worker resolving a task's
    ``template_scope``) sees built-ins, shared and legacy templates.
    """

    def __init__(self, data_dir: Path, builtin_dir: Path = BUILTIN_DIR) -> None:
        self.user_dir = Path(data_dir) / "templates"
        self.builtin_dir = builtin_dir

    @classmethod
    def from_settings(cls, settings: Settings) -> TemplateStore:
        return cls(settings.data_dir)

    # -- reading ---------------------------------------------------------------------------------

    def list(self, caller: Principal | None = None) -> list[Template]:
        """Built-ins first, then the user templates the caller may see, each sorted by id."""
        scopes = [BUILTIN, *self._visible_scopes(caller)]
        if caller is not None and caller.admin:
            scopes += [s for s in self._user_scopes() if s not in scopes]
        out: builtins.list[Template] = []
        seen: set[tuple[str, str]] = set()
        for scope in scopes:
            base = self._scope_dir(scope)
            if not base.is_dir():
                continue
            for entry in sorted(base.iterdir()):
                if not TEMPLATE_ID.fullmatch(entry.name) or not entry.is_dir():
                    continue
                # A caller sees one template per id (own shadows shared); admins see every owner's.
                key = (entry.name, scope if caller is not None and caller.admin else "")
                if key in seen or (scope != BUILTIN and self._builtin_path(entry.name).is_dir()):
                    continue
                try:
                    out.append(self._load(entry, scope))
                    seen.add(key)
                except MaieError as exc:
                    log.warning("skipping template %s: %s", entry.name, exc.message)
        return out

    def get(self, template_id: str, caller: Principal | None = None, owner: str | None = None) -> Template:
        """The template ``template_id`` as the caller sees it. An admin may name another key's
        template with ``owner``. Anything the caller may not see is TEMPLATE_NOT_FOUND."""
        folder, scope = self._find(template_id, caller, owner)
        return self._load(folder, scope)

    def _find(self, template_id: str, caller: Principal | None, owner: str | None) -> tuple[Path, str]:
        """The folder and scope ``get`` would load, without reading the template."""
        check_template_id(template_id)
        if owner is not None:
            scopes = [USER_PREFIX + owner] if caller is None or caller.admin or caller.name == owner else []
        else:
            scopes = [BUILTIN, *self._visible_scopes(caller)]
        for scope in scopes:
            folder = self._scope_dir(scope) / template_id
            if folder.is_dir():
                return folder, scope
        raise MaieError(ErrorCode.TEMPLATE_NOT_FOUND, f"template {template_id!r} not found")

    def get_scoped(self, template_id: str, scope: str | None) -> Template:
        """The template a task was submitted with (``TaskOptions.template_scope``)."""
        if scope is None:
            return self.get(template_id)
        check_template_id(template_id)
        folder = self._scope_dir(scope) / template_id
        if not folder.is_dir():
            raise MaieError(ErrorCode.TEMPLATE_NOT_FOUND, f"template {template_id!r} not found")
        return self._load(folder, scope)

    def schema(self, template_id: str, caller: Principal | None = None) -> dict[str, Any]:
        return self.get(template_id, caller).schema

    def exists(self, template_id: str, caller: Principal | None = None) -> bool:
        try:
            self.get(template_id, caller)
        except MaieError:
            return False
        return True

    # -- writing ---------------------------------------------------------------------------------

    def create(
        self,
        template_id: str,
        *,
        prompt: str,
        schema: dict[str, Any],
        example: dict[str, Any],
        caller: Principal | None = None,
        shared: bool = False,
        name: str | None = None,
        description: str | None = None,
        language: str | None = None,
    ) -> Template:
        """A new template in the caller's scope, or (admins only) a shared one."""
        if not isinstance(template_id, str) or not TEMPLATE_ID.fullmatch(template_id):
            raise MaieError(ErrorCode.TEMPLATE_INVALID, "template id must be 1-64 of a-z, 0-9, '_' and '-'")
        if shared and caller is not None and not caller.admin:
            raise MaieError(ErrorCode.FORBIDDEN, "only admin keys can create shared templates")
        scope = SHARED if shared or caller is None else USER_PREFIX + caller.name
        if self._taken(template_id, scope):
            raise MaieError(ErrorCode.TEMPLATE_EXISTS, f"template {template_id!r} already exists")
        meta = _meta(name, description, language)
        validate_template(prompt, schema, example, meta)
        staged = self._stage(prompt, schema, example, meta)
        target = self._scope_dir(scope) / template_id
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.rename(staged, target)
        except OSError:  # another process created it first
            shutil.rmtree(staged, ignore_errors=True)
            raise MaieError(ErrorCode.TEMPLATE_EXISTS, f"template {template_id!r} already exists") from None
        return self._load(target, scope)

    def update(
        self,
        template_id: str,
        *,
        caller: Principal | None = None,
        owner: str | None = None,
        prompt: str | None = None,
        schema: dict[str, Any] | None = None,
        example: dict[str, Any] | None = None,
        name: str | None = None,
        description: str | None = None,
        language: str | None = None,
    ) -> Template:
        """Replace the given parts of a user template; the result is validated as a whole."""
        current = self._writable(template_id, caller, owner)
        meta = {
            "name": current.name if name is None else name,
            "description": current.description if description is None else description,
            "language": current.language if language is None else language,
        }
        new_prompt = current.prompt if prompt is None else prompt
        new_schema = current.schema if schema is None else schema
        new_example = current.example if example is None else example
        validate_template(new_prompt, new_schema, new_example, meta)
        staged = self._stage(new_prompt, new_schema, new_example, meta)
        target = self._scope_dir(current.scope) / template_id
        retired = self.user_dir / f".old-{template_id}-{uuid.uuid4().hex}"
        os.rename(target, retired)
        os.rename(staged, target)
        shutil.rmtree(retired, ignore_errors=True)
        return self._load(target, current.scope)

    def delete(self, template_id: str, caller: Principal | None = None, owner: str | None = None) -> None:
        # Never loads the template: one that cannot be read (or is over today's limits) can still go.
        folder, scope = self._find(template_id, caller, owner)
        if scope == BUILTIN:
            raise MaieError(ErrorCode.TEMPLATE_READ_ONLY, f"template {template_id!r} is built in and read-only")
        scope_owner = scope.removeprefix(USER_PREFIX) if scope.startswith(USER_PREFIX) else None
        if caller is not None and not caller.admin and scope_owner != caller.name:
            raise MaieError(ErrorCode.TEMPLATE_READ_ONLY, f"template {template_id!r} is shared and read-only")
        retired = self.user_dir / f".old-{template_id}-{uuid.uuid4().hex}"
        try:
            os.rename(folder, retired)
        except FileNotFoundError:
            raise MaieError(ErrorCode.TEMPLATE_NOT_FOUND, f"template {template_id!r} not found") from None
        shutil.rmtree(retired, ignore_errors=True)

    # -- internals -------------------------------------------------------------------------------

    def _visible_scopes(self, caller: Principal | None) -> builtins.list[str]:
        """User scopes the caller resolves ids in, in order: its own, shared, then (admins) legacy."""
        if caller is None:
            return [SHARED, LEGACY]
        return [USER_PREFIX + caller.name, SHARED, *([LEGACY] if caller.admin else [])]

    def _user_scopes(self) -> builtins.list[str]:
        users = self.user_dir / "@users"
        if not users.is_dir():
            return []
        return [USER_PREFIX + d.name for d in sorted(users.iterdir()) if KEY_NAME.fullmatch(d.name) and d.is_dir()]

    def _scope_dir(self, scope: str) -> Path:
        if scope == BUILTIN:
            return self.builtin_dir
        if scope == SHARED:
            return self.user_dir / "@shared"
        if scope == LEGACY:
            return self.user_dir
        name = scope.removeprefix(USER_PREFIX)
        if not scope.startswith(USER_PREFIX) or not KEY_NAME.fullmatch(name):
            raise MaieError(ErrorCode.TEMPLATE_NOT_FOUND, "template not found")
        return self.user_dir / "@users" / name

    def _taken(self, template_id: str, scope: str) -> bool:
        """An id is taken where the creator would see it: built-ins, shared, and the target scope."""
        return any((self._scope_dir(s) / template_id).exists() for s in {BUILTIN, SHARED, scope})

    def _builtin_path(self, template_id: str) -> Path:
        return self.builtin_dir / template_id

    def _writable(self, template_id: str, caller: Principal | None, owner: str | None) -> Template:
        template = self.get(template_id, caller, owner)
        if template.builtin:
            raise MaieError(ErrorCode.TEMPLATE_READ_ONLY, f"template {template_id!r} is built in and read-only")
        if caller is not None and not caller.admin and template.owner != caller.name:
            raise MaieError(ErrorCode.TEMPLATE_READ_ONLY, f"template {template_id!r} is shared and read-only")
        return template

    def _stage(self, prompt: str, schema: dict[str, Any], example: dict[str, Any], meta: dict[str, Any]) -> Path:
        self.user_dir.mkdir(parents=True, exist_ok=True)
        staged = self.user_dir / f".tmp-{uuid.uuid4().hex}"
        staged.mkdir()
        (staged / "prompt.jinja").write_text(prompt, encoding="utf-8")
        (staged / "schema.json").write_text(_dumps(schema), encoding="utf-8")
        (staged / "example.json").write_text(_dumps(example), encoding="utf-8")
        (staged / "meta.json").write_text(_dumps({k: v for k, v in meta.items() if v}), encoding="utf-8")
        return staged

    def _load(self, folder: Path, scope: str) -> Template:
        try:
            prompt = _read(folder / "prompt.jinja", 64_000)
            schema = json.loads(_read(folder / "schema.json", MAX_STORED_FILE_CHARS))
            example = json.loads(_read(folder / "example.json", MAX_STORED_FILE_CHARS))
            meta_path = folder / "meta.json"
            meta = json.loads(_read(meta_path, 8_000)) if meta_path.is_file() else {}
        except FileNotFoundError:
            raise MaieError(ErrorCode.TEMPLATE_NOT_FOUND, f"template {folder.name!r} not found") from None
        except (OSError, ValueError) as exc:
            raise MaieError(ErrorCode.TEMPLATE_INVALID, f"template {folder.name!r} is unreadable: {exc}") from None
        if not isinstance(schema, dict) or not isinstance(meta, dict):
            raise MaieError(ErrorCode.TEMPLATE_INVALID, f"template {folder.name!r} has a malformed schema")
        return Template(
            id=folder.name,
            name=str(meta.get("name") or schema.get("title") or folder.name),
            description=str(meta.get("description") or schema.get("description") or ""),
            language=meta.get("language"),
            builtin=scope == BUILTIN,
            prompt=prompt,
            schema=schema,
            example=example,
            fields=list(schema.get("properties", {})),
            scope=scope,
        )


def _meta(name: str | None, description: str | None, language: str | None) -> dict[str, Any]:
    return {"name": name, "description": description, "language": language}


def _read(path: Path, limit: int) -> str:
    with path.open(encoding="utf-8") as f:
        text = f.read(limit + 1)
    if len(text) > limit:
        raise ValueError(f"{path.name} is larger than {limit} characters")
    return text


def _dumps(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, indent=2) + "\n"
