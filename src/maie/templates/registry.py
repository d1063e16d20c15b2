"""Summary templates: read-only built-ins shipped with MAIE plus user templates in the data dir.

A template is a folder ``<id>/`` with ``prompt.jinja`` (the prompt, rendered in the sandbox),
``schema.json`` (a JSON Schema of type object, enforced on the summary) and ``example.json`` (one
valid output, shown to the model). An optional ``meta.json`` holds ``name``, ``description`` and
``language``; unset, the schema's ``title``/``description`` stand in.

User templates live in ``<data_dir>/templates/<id>/``: the data dir is shared by the API and every
worker, so a template created through one API process is seen by all. Writes go to a hidden
temporary folder first and are moved into place with one rename, so a reader never sees half a
template.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from jsonschema import Draft202012Validator, SchemaError, ValidationError
from jsonschema.validators import validator_for

from maie.config import Settings
from maie.errors import ErrorCode, MaieError
from maie.templates.sandbox import PromptError, check_prompt, render_prompt

log = logging.getLogger(__name__)

BUILTIN_DIR = Path(__file__).resolve().parent / "builtin"
TEMPLATE_ID = re.compile(r"[a-z0-9][a-z0-9_\-]{0,63}")
"""Template ids (matched in full): they name folders, so they can never form another path."""
MAX_SCHEMA_CHARS = 64_000
MAX_EXAMPLE_CHARS = 64_000
SAMPLE_TRANSCRIPT = (
    "S1: Good morning everyone, let's review the launch plan.\n"
    "S2: The beta ships on Friday and Lan will write the release notes."
)
FILES = ("prompt.jinja", "schema.json", "example.json")


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

    def info(self) -> dict[str, Any]:
        """What a template listing shows."""
        return {
            "id": self.id,
            "name": self.name,
            "description": self.description,
            "language": self.language,
            "builtin": self.builtin,
            "fields": self.fields,
        }

    def render(self, transcript: str, language: str | None = None) -> str:
        """The prompt for one transcript (raises PromptError)."""
        return render_prompt(
            self.prompt,
            transcript=transcript,
            # compact, and without "$schema": prompt tokens are most of a small model's time
            schema=json.dumps(
                {k: v for k, v in self.schema.items() if k != "$schema"},
                ensure_ascii=False,
                separators=(",", ":"),
            ),
            example=json.dumps(self.example, ensure_ascii=False),
            language=language or self.language or "",
        )


def check_template_id(template_id: str) -> str:
    if not isinstance(template_id, str) or not TEMPLATE_ID.fullmatch(template_id):
        raise MaieError(
            ErrorCode.TEMPLATE_NOT_FOUND,
            f"template {template_id!r} not found (ids are 1-64 of a-z, 0-9, '_' and '-')",
        )
    return template_id


def schema_validator(schema: dict[str, Any]) -> Any:
    """A jsonschema validator for the schema's own draft (2020-12 when it names none)."""
    cls = validator_for(schema, default=Draft202012Validator)
    return cls(schema)


def validate_template(prompt: Any, schema: Any, example: Any, meta: dict[str, Any] | None = None) -> None:
    """Raise MaieError(TEMPLATE_INVALID) naming the first problem with a template's parts."""

    def invalid(message: str) -> MaieError:
        return MaieError(ErrorCode.TEMPLATE_INVALID, message)

    if not isinstance(schema, dict):
        raise invalid("schema must be a JSON object")
    if len(json.dumps(schema)) > MAX_SCHEMA_CHARS:
        raise invalid(f"schema is larger than {MAX_SCHEMA_CHARS} characters")
    try:
        validator_for(schema, default=Draft202012Validator).check_schema(schema)
    except SchemaError as exc:
        raise invalid(f"schema is not a valid JSON Schema: {exc.message}") from None
    if schema.get("type") != "object" or not isinstance(schema.get("properties"), dict):
        raise invalid('schema must have "type": "object" and "properties"')
    _check_decodable(schema, invalid)

    if not isinstance(example, dict):
        raise invalid("example must be a JSON object")
    if len(json.dumps(example)) > MAX_EXAMPLE_CHARS:
        raise invalid(f"example is larger than {MAX_EXAMPLE_CHARS} characters")
    error = first_error(schema, example)
    if error:
        raise invalid(f"example does not match the schema: {error}")

    if not isinstance(prompt, str):
        raise invalid("prompt must be a string")
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


def first_error(schema: dict[str, Any], instance: Any) -> str | None:
    """The most relevant validation error of ``instance``, as ``at <path>: <message>``, or None."""
    from jsonschema.exceptions import best_match

    error: ValidationError | None = best_match(schema_validator(schema).iter_errors(instance))
    if error is None:
        return None
    path = "/".join(str(p) for p in error.absolute_path) or "(root)"
    return f"at {path}: {error.message}"


def _check_decodable(schema: dict[str, Any], invalid: Any) -> None:
    """The schema must also become a grammar for constrained decoding."""
    try:
        from maie.pipeline.llm.grammar import schema_to_gbnf
    except ImportError:  # pragma: no cover - llama-cpp-python is a dependency
        return
    try:
        schema_to_gbnf(schema)
    except ImportError:  # pragma: no cover
        return
    except Exception as exc:  # the converter asserts/raises on what it cannot express
        raise invalid(f"schema cannot be used for constrained decoding: {exc}") from None


class TemplateStore:
    """Find, read and manage templates. Built-ins are read-only; user templates live in
    ``<data_dir>/templates``."""

    def __init__(self, data_dir: Path, builtin_dir: Path = BUILTIN_DIR) -> None:
        self.user_dir = Path(data_dir) / "templates"
        self.builtin_dir = builtin_dir

    @classmethod
    def from_settings(cls, settings: Settings) -> TemplateStore:
        return cls(settings.data_dir)

    # -- reading ---------------------------------------------------------------------------------

    def list(self) -> list[Template]:
        """Built-ins first, then user templates, each sorted by id. Unreadable folders are skipped."""
        out: list[Template] = []
        for base, builtin in ((self.builtin_dir, True), (self.user_dir, False)):
            if not base.is_dir():
                continue
            for entry in sorted(base.iterdir()):
                if not TEMPLATE_ID.fullmatch(entry.name) or not entry.is_dir():
                    continue
                if not builtin and self._builtin_path(entry.name).is_dir():
                    continue
                try:
                    out.append(self._load(entry, builtin))
                except MaieError as exc:
                    log.warning("skipping template %s: %s", entry.name, exc.message)
        return out

    def get(self, template_id: str) -> Template:
        check_template_id(template_id)
        builtin = self._builtin_path(template_id)
        if builtin.is_dir():
            return self._load(builtin, True)
        user = self._user_path(template_id)
        if user.is_dir():
            return self._load(user, False)
        raise MaieError(ErrorCode.TEMPLATE_NOT_FOUND, f"template {template_id!r} not found")

    def schema(self, template_id: str) -> dict[str, Any]:
        return self.get(template_id).schema

    def exists(self, template_id: str) -> bool:
        try:
            self.get(template_id)
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
        name: str | None = None,
        description: str | None = None,
        language: str | None = None,
    ) -> Template:
        if not isinstance(template_id, str) or not TEMPLATE_ID.fullmatch(template_id):
            raise MaieError(ErrorCode.TEMPLATE_INVALID, "template id must be 1-64 of a-z, 0-9, '_' and '-'")
        if self._builtin_path(template_id).is_dir() or self._user_path(template_id).exists():
            raise MaieError(ErrorCode.TEMPLATE_EXISTS, f"template {template_id!r} already exists")
        meta = _meta(name, description, language)
        validate_template(prompt, schema, example, meta)
        staged = self._stage(prompt, schema, example, meta)
        try:
            os.rename(staged, self._user_path(template_id))
        except OSError:  # another process created it first
            shutil.rmtree(staged, ignore_errors=True)
            raise MaieError(ErrorCode.TEMPLATE_EXISTS, f"template {template_id!r} already exists") from None
        return self.get(template_id)

    def update(
        self,
        template_id: str,
        *,
        prompt: str | None = None,
        schema: dict[str, Any] | None = None,
        example: dict[str, Any] | None = None,
        name: str | None = None,
        description: str | None = None,
        language: str | None = None,
    ) -> Template:
        """Replace the given parts of a user template; the result is validated as a whole."""
        current = self._writable(template_id)
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
        target = self._user_path(template_id)
        retired = self.user_dir / f".old-{template_id}-{uuid.uuid4().hex}"
        os.rename(target, retired)
        os.rename(staged, target)
        shutil.rmtree(retired, ignore_errors=True)
        return self.get(template_id)

    def delete(self, template_id: str) -> None:
        self._writable(template_id)
        retired = self.user_dir / f".old-{template_id}-{uuid.uuid4().hex}"
        try:
            os.rename(self._user_path(template_id), retired)
        except FileNotFoundError:
            raise MaieError(ErrorCode.TEMPLATE_NOT_FOUND, f"template {template_id!r} not found") from None
        shutil.rmtree(retired, ignore_errors=True)

    # -- internals -------------------------------------------------------------------------------

    def _builtin_path(self, template_id: str) -> Path:
        return self.builtin_dir / template_id

    def _user_path(self, template_id: str) -> Path:
        return self.user_dir / template_id

    def _writable(self, template_id: str) -> Template:
        template = self.get(template_id)
        if template.builtin:
            raise MaieError(ErrorCode.TEMPLATE_READ_ONLY, f"template {template_id!r} is built in and read-only")
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

    def _load(self, folder: Path, builtin: bool) -> Template:
        try:
            prompt = _read(folder / "prompt.jinja", 64_000)
            schema = json.loads(_read(folder / "schema.json", MAX_SCHEMA_CHARS))
            example = json.loads(_read(folder / "example.json", MAX_EXAMPLE_CHARS))
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
            builtin=builtin,
            prompt=prompt,
            schema=schema,
            example=example,
            fields=list(schema.get("properties", {})),
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
