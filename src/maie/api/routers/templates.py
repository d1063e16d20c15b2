"""Summary templates: discovery for every client, management (validated, sandboxed) for operators."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from pydantic import BaseModel, Field

from maie.api.deps import ApiKeyDep

router = APIRouter(prefix="/v1/templates", tags=["templates"])


class TemplateBody(BaseModel):
    id: str | None = Field(default=None, description="Required on POST; taken from the path on PUT.")
    name: str | None = None
    description: str | None = None
    language: str | None = None
    prompt: str = Field(description="Jinja prompt, rendered in a sandbox with transcript, schema, example.")
    schema_: dict[str, Any] = Field(alias="schema", description="JSON Schema of type object.")
    example: dict[str, Any] = Field(description="An output that validates against the schema.")


def _store(request: Request):
    return request.app.state.templates


@router.get("", summary="List templates")
def list_templates(request: Request, _: ApiKeyDep) -> list[dict]:
    return _store(request).list()


@router.get("/{template_id}", summary="A template: metadata, prompt, schema and example")
def get_template(template_id: str, request: Request, _: ApiKeyDep) -> dict:
    return _store(request).get(template_id).to_dict()


@router.get("/{template_id}/schema", summary="A template's JSON Schema")
def get_schema(template_id: str, request: Request, _: ApiKeyDep) -> dict:
    return _store(request).schema(template_id)


@router.post("", status_code=201, summary="Create a user template")
def create_template(body: TemplateBody, request: Request, _: ApiKeyDep) -> dict:
    return _store(request).create(body.model_dump(by_alias=True)).to_dict()


@router.put("/{template_id}", summary="Replace a user template")
def update_template(template_id: str, body: TemplateBody, request: Request, _: ApiKeyDep) -> dict:
    return _store(request).update(template_id, body.model_dump(by_alias=True)).to_dict()


@router.delete("/{template_id}", summary="Delete a user template")
def delete_template(template_id: str, request: Request, _: ApiKeyDep) -> dict:
    _store(request).delete(template_id)
    return {"id": template_id, "deleted": True}
