"""Summary templates: discovery for every client, management (validated, sandboxed) for operators."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel, Field

from maie.api.deps import ApiKeyDep
from maie.errors import ErrorCode, MaieError
from maie.templates import Template, TemplateStore

router = APIRouter(prefix="/v1/templates", tags=["templates"])


def get_templates(request: Request) -> TemplateStore:
    return request.app.state.templates


TemplatesDep = Annotated[TemplateStore, Depends(get_templates)]


class TemplateIn(BaseModel):
    id: str | None = Field(default=None, description="Required on POST; the path names it on PUT.")
    name: str | None = Field(default=None, max_length=200)
    description: str | None = Field(default=None, max_length=2000)
    language: str | None = Field(default=None, max_length=16)
    prompt: str | None = Field(default=None, description="Jinja prompt (rendered in a sandbox).", max_length=64_000)
    schema_: dict[str, Any] | None = Field(default=None, alias="schema", description="JSON Schema, type object.")
    example: dict[str, Any] | None = Field(default=None, description="An output valid against the schema.")

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


def template_out(t: Template) -> dict[str, Any]:
    return {**t.info(), "prompt": t.prompt, "schema": t.schema, "example": t.example}


@router.get("", summary="List templates")
def list_templates(_: ApiKeyDep, store: TemplatesDep) -> list[dict[str, Any]]:
    return [t.info() for t in store.list()]


@router.get("/{template_id}", summary="A template: metadata, prompt, schema and example")
def get_template(template_id: str, _: ApiKeyDep, store: TemplatesDep) -> dict[str, Any]:
    return template_out(store.get(template_id))


@router.get("/{template_id}/schema", summary="A template's JSON Schema")
def get_schema(template_id: str, _: ApiKeyDep, store: TemplatesDep) -> dict[str, Any]:
    return store.schema(template_id)


@router.post("", status_code=201, summary="Create a user template (validated; the prompt runs sandboxed)")
def create_template(body: TemplateIn, _: ApiKeyDep, store: TemplatesDep) -> dict[str, Any]:
    if not body.id or body.prompt is None or body.schema_ is None or body.example is None:
        raise MaieError(ErrorCode.TEMPLATE_INVALID, "id, prompt, schema and example are required")
    return template_out(store.create(body.id, **body.parts()))


@router.put("/{template_id}", summary="Update a user template (built-ins are read-only)")
def update_template(template_id: str, body: TemplateIn, _: ApiKeyDep, store: TemplatesDep) -> dict[str, Any]:
    return template_out(store.update(template_id, **body.parts()))


@router.delete("/{template_id}", summary="Delete a user template")
def delete_template(template_id: str, _: ApiKeyDep, store: TemplatesDep) -> dict[str, Any]:
    store.delete(template_id)
    return {"id": template_id, "deleted": True}
