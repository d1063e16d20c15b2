"""Summary templates: discovery and management (validated, sandboxed), each key in its own scope.

A key sees the built-ins, the shared templates and its own; admins see every key's and name one with
``?owner=<key name>``. A template another key owns does not exist for the caller (404).
"""

from __future__ import annotations

from typing import Annotated, Any, cast

from fastapi import APIRouter, Depends, Query, Request
from pydantic import BaseModel, Field

from maie.api.deps import CallerDep
from maie.api.errors import UNPARSABLE_JSON, error_responses
from maie.errors import ErrorCode, MaieError
from maie.schemas.http import TemplateDeleted, TemplateInfo, TemplateOut
from maie.templates import Template, TemplateStore

router = APIRouter(prefix="/v1/templates", tags=["templates"])


def get_templates(request: Request) -> TemplateStore:
    return cast(TemplateStore, request.app.state.templates)


TemplatesDep = Annotated[TemplateStore, Depends(get_templates)]


class TemplateIn(BaseModel):
    id: str | None = Field(default=None, description="Required on POST; the path names it on PUT.")
    name: str | None = Field(default=None, max_length=200)
    description: str | None = Field(default=None, max_length=2000)
    language: str | None = Field(default=None, max_length=16)
    prompt: str | None = Field(default=None, description="Jinja prompt (rendered in a sandbox).", max_length=64_000)
    schema_: dict[str, Any] | None = Field(default=None, alias="schema", description="JSON Schema, type object.")
    example: dict[str, Any] | None = Field(default=None, description="An output valid against the schema.")
    shared: bool = Field(default=False, description="POST by an admin key: visible (read-only) to every key.")

    def parts(self) -> dict[str, Any]:
        """The keyword arguments of TemplateStore.create/update (None: keep or leave out)."""
        return {
            "prompt": self.prompt,
            "schema": self.schema_,
            "example": self.example,
            "name": self.name,
            "description": self.description,
            "language": self.language,
        }


def template_out(t: Template) -> TemplateOut:
    return TemplateOut.model_validate({**t.info(), "prompt": t.prompt, "schema": t.schema, "example": t.example})


OwnerQuery = Annotated[str | None, Query(description="Admin keys: the key name whose template this is.", max_length=64)]


# TEMPLATE_INVALID on a read: a stored template that is unreadable.
ONE_TEMPLATE = (
    ErrorCode.UNAUTHORIZED,
    ErrorCode.TEMPLATE_NOT_FOUND,
    ErrorCode.TEMPLATE_INVALID,
    ErrorCode.VALIDATION_ERROR,
)
WRITE = (ErrorCode.TEMPLATE_INVALID, ErrorCode.VALIDATION_ERROR, UNPARSABLE_JSON)


@router.get("", summary="List templates", responses=error_responses(ErrorCode.UNAUTHORIZED))
def list_templates(caller: CallerDep, store: TemplatesDep) -> list[TemplateInfo]:
    return [TemplateInfo.model_validate(t.info()) for t in store.list(caller)]


@router.get(
    "/{template_id}",
    summary="A template: metadata, prompt, schema and example",
    responses=error_responses(*ONE_TEMPLATE),
)
def get_template(template_id: str, caller: CallerDep, store: TemplatesDep, owner: OwnerQuery = None) -> TemplateOut:
    return template_out(store.get(template_id, caller, owner))


@router.get(
    "/{template_id}/schema",
    summary="A template's JSON Schema (type object): what its summaries validate against",
    responses=error_responses(*ONE_TEMPLATE),
)
def get_schema(template_id: str, caller: CallerDep, store: TemplatesDep, owner: OwnerQuery = None) -> dict[str, Any]:
    return store.get(template_id, caller, owner).schema


@router.post(
    "",
    status_code=201,
    summary="Create a template (validated; the prompt runs sandboxed)",
    responses=error_responses(ErrorCode.UNAUTHORIZED, ErrorCode.FORBIDDEN, ErrorCode.TEMPLATE_EXISTS, *WRITE),
)
def create_template(body: TemplateIn, caller: CallerDep, store: TemplatesDep) -> TemplateOut:
    if not body.id or body.prompt is None or body.schema_ is None or body.example is None:
        raise MaieError(ErrorCode.TEMPLATE_INVALID, "id, prompt, schema and example are required")
    parts = body.parts()
    return template_out(
        store.create(
            body.id,
            caller=caller,
            shared=body.shared,
            prompt=parts.pop("prompt"),
            schema=parts.pop("schema"),
            example=parts.pop("example"),
            **parts,
        )
    )


@router.put(
    "/{template_id}",
    summary="Update a template (built-ins are read-only; shared ones for admins)",
    responses=error_responses(*ONE_TEMPLATE, ErrorCode.TEMPLATE_READ_ONLY, *WRITE),
)
def update_template(
    template_id: str, body: TemplateIn, caller: CallerDep, store: TemplatesDep, owner: OwnerQuery = None
) -> TemplateOut:
    return template_out(store.update(template_id, caller=caller, owner=owner, **body.parts()))


@router.delete(
    "/{template_id}",
    summary="Delete a template",
    responses=error_responses(*ONE_TEMPLATE, ErrorCode.TEMPLATE_READ_ONLY),
)
def delete_template(
    template_id: str, caller: CallerDep, store: TemplatesDep, owner: OwnerQuery = None
) -> TemplateDeleted:
    store.delete(template_id, caller, owner)
    return TemplateDeleted(id=template_id, deleted=True)
