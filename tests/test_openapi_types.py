"""Typed responses: ``/openapi.json`` documents what every route answers, errors included, closely enough
that a client generated from it reads the real answers of a real server (tiny.en, the embedded LLM).

One completed task with words and a summary, then: models generated from the live schema with
datamodel-code-generator (``extra="forbid"``, so an undocumented field fails) parse each answer, every
answer validates against its route's schema for its status, and the task record shows its results,
metrics and versions exactly as the worker stored them (the contract before they were typed).
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import httpx
import jsonschema
import pytest
import redis
from pydantic import TypeAdapter

from live_service import live_service

from service import Service, wait_terminal

__all__ = ["live_service"]

OPENAI_PATHS = ("/v1/audio/", "/v1/models/")
"""Routes whose errors are OpenAI's ``{"error": {...}}`` (maie.api.errors.OPENAI_PREFIXES)."""


@pytest.fixture(scope="module")
def answers(live_service: Service, shared_audio: Path) -> dict[str, httpx.Response]:
    """Real answers of the routes, by name; ``task`` is a completed jfk.flac with words and a summary."""
    out: dict[str, httpx.Response] = {}
    jfk = shared_audio / "jfk.flac"
    with httpx.Client(base_url=live_service.base_url, headers=live_service.headers, timeout=600) as client:
        with jfk.open("rb") as f:
            r = client.post(
                "/v1/process",
                data={"features": "raw_transcript,summary", "word_timestamps": "true"},
                files={"file": (jfk.name, f)},
            )
        out["accepted"] = r
        task_id = r.json()["task_id"]
        record = wait_terminal(client, task_id, timeout_s=600)
        assert record["status"] == "COMPLETE", record
        out["task"] = client.get(f"/v1/status/{task_id}")
        out["tasks"] = client.get("/v1/tasks")
        out["templates"] = client.get("/v1/templates")
        out["template"] = client.get("/v1/templates/generic_summary_en_v2")
        out["models"] = client.get("/v1/models")
        out["model"] = client.get("/v1/models/whisper-1")
        out["health"] = client.get("/health")
        out["ready"] = client.get("/health/ready")
        out["no_task"] = client.get("/v1/status/no-such-task")
        out["bad_limit"] = client.get("/v1/tasks", params={"limit": 0})
        out["no_model"] = client.get("/v1/models/no-such-model")
        out["bad_key"] = client.get("/v1/tasks", headers={"X-API-Key": "wrong"})
        with jfk.open("rb") as f:
            out["verbose"] = client.post(
                "/v1/audio/transcriptions",
                data={"model": "whisper-1", "response_format": "verbose_json", "timestamp_granularities[]": "word"},
                files={"file": (jfk.name, f)},
            )
        with jfk.open("rb") as f:
            out["openai_bad_field"] = client.post(
                "/v1/audio/transcriptions", data={"response_format": "doc"}, files={"file": (jfk.name, f)}
            )
        out["openapi"] = client.get("/openapi.json")
    return out


@pytest.fixture(scope="module")
def spec(answers: dict[str, httpx.Response]) -> dict[str, Any]:
    assert answers["openapi"].status_code == 200
    spec: dict[str, Any] = answers["openapi"].json()
    return spec


@pytest.fixture(scope="module")
def client_models(spec: dict[str, Any], tmp_path_factory: pytest.TempPathFactory) -> ModuleType:
    """Pydantic models generated from the live schema, as a client of MAIE would generate them."""
    work = tmp_path_factory.mktemp("generated")
    (work / "openapi.json").write_text(json.dumps(spec))
    codegen = str(Path(sys.executable).parent / "datamodel-codegen")
    run = subprocess.run(
        [codegen, "--input", str(work / "openapi.json"), "--input-file-type", "openapi", "--output",
         str(work / "maie_models.py"), "--output-model-type", "pydantic_v2.BaseModel", "--extra-fields", "forbid",
         "--use-annotated", "--target-python-version", "3.11", "--formatters", "builtin"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    module_spec = importlib.util.spec_from_file_location("maie_models", work / "maie_models.py")
    assert module_spec is not None and module_spec.loader is not None
    module = importlib.util.module_from_spec(module_spec)
    sys.modules["maie_models"] = module  # pydantic resolves the generated generics through it
    module_spec.loader.exec_module(module)
    return module


PARSED_AS = {
    "accepted": "Accepted",
    "task": "TaskRecord",
    "template": "TemplateOut",
    "models": "ModelList",
    "model": "ModelEntry",
    "health": "Health",
    "ready": "Readiness",
    "no_task": "ErrorBody",
    "bad_limit": "ErrorBody",
    "bad_key": "ErrorBody",
    "no_model": "OpenAIErrorBody",
    "verbose": "VerboseTranscription",
    "openai_bad_field": "OpenAIErrorBody",
}
LISTS = {"tasks": "TaskListItem", "templates": "TemplateInfo"}


def test_a_generated_client_reads_every_answer(answers: dict[str, httpx.Response], client_models: ModuleType) -> None:
    for name, model_name in {**PARSED_AS, **LISTS}.items():
        model = getattr(client_models, model_name)
        adapter = TypeAdapter(list[model] if name in LISTS else model)
        body = answers[name].json()
        parsed = adapter.validate_python(body)  # extra="forbid": every field the server sent is documented
        # and nothing is lost or changed on the way: the client's models give back the very same JSON
        again = adapter.dump_python(parsed, mode="json", exclude_unset=True, by_alias=True)
        assert json.dumps(again) == json.dumps(body), name
    record = client_models.TaskRecord.model_validate(answers["task"].json())
    results = record.results
    assert results.segments and all(s.words for s in results.segments)
    assert "country" in " ".join(w.word for s in results.segments for w in s.words)
    assert results.summary and results.template_id == "generic_summary_en_v2"
    assert results.summary_evidence and results.summary_evidence[0].path.startswith("/")
    assert results.summary_grounding.total == len(results.summary_evidence)
    assert record.metrics.input_duration_s == 11.0 and record.versions.asr.backend == "whisper"
    assert record.versions.llm.summary is not None
    verbose = client_models.VerboseTranscription.model_validate(answers["verbose"].json())
    assert verbose.words and verbose.segments[0].tokens
    assert client_models.ErrorBody.model_validate(answers["no_task"].json()).code.value == "TASK_NOT_FOUND"


def _operation(spec: dict[str, Any], response: httpx.Response) -> dict[str, Any]:
    path = response.request.url.path
    for template, ops in spec["paths"].items():
        parts, wanted = template.split("/"), path.split("/")
        if len(parts) == len(wanted) and all(p == w or p.startswith("{") for p, w in zip(parts, wanted, strict=True)):
            operation: dict[str, Any] = ops[response.request.method.lower()]
            return operation
    raise AssertionError(f"{path} is not in the schema")


def test_every_answer_matches_its_routes_schema_for_its_status(
    answers: dict[str, httpx.Response], spec: dict[str, Any]
) -> None:
    seen = set()
    for name, response in answers.items():
        if name == "openapi":
            continue
        declared = _operation(spec, response)["responses"]
        status = str(response.status_code)
        assert status in declared, f"{name}: {status} is not declared for {response.request.url.path}"
        seen.add(status)
        schema = declared[status]["content"]["application/json"]["schema"]
        # $refs point into the document: validate as if the schema were part of it
        jsonschema.Draft202012Validator({**schema, "components": spec["components"]}).validate(response.json())
    assert {"200", "202", "401", "404", "422"} <= seen


def test_each_route_documents_its_errors_in_its_own_shape(spec: dict[str, Any]) -> None:
    assert "HTTPValidationError" not in json.dumps(spec)  # FastAPI's 422 is not what MAIE answers
    for path, ops in spec["paths"].items():
        for method, op in ops.items():
            if not path.startswith("/v1/"):
                continue  # /health: no key, no store; /health/ready's 503 is the readiness body itself
            errors = {s: r for s, r in op["responses"].items() if s >= "400"}
            assert {"401", "500"} <= set(errors), (method, path)
            shape = "OpenAIErrorBody" if path.startswith(OPENAI_PATHS) else "ErrorBody"
            for status, response in errors.items():
                ref = response["content"]["application/json"]["schema"]["$ref"]
                assert ref == f"#/components/schemas/{shape}", (method, path, status)
                assert response["description"].startswith("Codes: `"), (method, path, status)


def test_the_record_shows_results_metrics_and_versions_as_stored(
    live_service: Service,
    answers: dict[str, httpx.Response],
) -> None:
    """Typing them changed nothing on the wire: key order, nulls and number types are the stored JSON's."""
    record = answers["task"].json()
    rdir = live_service.data_dir / "redis"
    store = redis.Redis(unix_socket_path=str(rdir / "redis.sock"), password=(rdir / "password").read_text().strip())
    try:
        stored = {k.decode(): v.decode() for k, v in store.hgetall(f"maie:task:{record['task_id']}").items()}
    finally:
        store.close()
    for part in ("results", "metrics", "versions", "warnings"):
        assert json.dumps(record[part]) == json.dumps(json.loads(stored[part])), part
    assert record["metrics"]["asr_confidence"] is not None and "llm_time_s" in record["metrics"]
    assert record["versions"]["llm"]["base_url"] is None  # the embedded model: a null that is kept
    assert "error" not in record and "webhook" not in record  # None at the top level is left out
