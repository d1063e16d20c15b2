"""Template attacks over real HTTP: each is refused (422 TEMPLATE_INVALID naming the limit) at a bounded cost.

While each attack request runs, one thread samples the API process's RSS (psutil) and another times
``/health``: memory must grow less than 256 MiB and ``/health`` answer within 0.5 s. No traceback may
reach the server log. The worker's summary stage renders with the same bounds (last tests).
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest

from maie.principals import derived_name
from maie.templates import limits, render_prompt
from maie.templates.sandbox import _ENV, PromptError

from service import API_KEY, Service, start_service, wait_terminal

MAX_RSS_GROWTH = 256 * 2**20
MAX_HEALTH_S = 0.5
PROMPT = "Summarise as JSON.\nSchema: {{ schema }}\nExample: {{ example }}\nTranscript:\n{{ transcript }}\n"
LONG_TEXT = "launch plan " * 1_700  # ~20 k characters


def obj(props: dict[str, Any], required: list[str] | None = None, **extra: Any) -> dict[str, Any]:
    return {"type": "object", "properties": props, "required": list(props) if required is None else required, **extra}


def deep_schema(levels: int) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "string"}
    for _ in range(levels):
        schema = obj({"a": schema})
    return schema


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    svc = start_service(tmp_path_factory.mktemp("abuse") / "data")
    try:
        svc.wait_ready()
        yield svc
    finally:
        svc.stop()
        assert "Traceback" not in svc.log(), svc.log()[-6000:]


class Cost:
    """Samples the API's RSS and /health latency from two threads while the block runs."""

    def __init__(self, service: Service) -> None:
        self.process = psutil.Process(service.proc.pid)
        self.base_url = service.base_url
        self.start_rss = self.process.memory_info().rss
        self.peak_rss = self.start_rss
        self.health: list[float] = []
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._rss), threading.Thread(target=self._ping)]

    def _rss(self) -> None:
        while not self._stop.is_set():
            self.peak_rss = max(self.peak_rss, self.process.memory_info().rss)
            time.sleep(0.01)

    def _ping(self) -> None:
        with httpx.Client(base_url=self.base_url, timeout=10) as client:
            while not self._stop.is_set():
                started = time.perf_counter()
                try:
                    assert client.get("/health").status_code == 200
                    self.health.append(time.perf_counter() - started)
                except httpx.HTTPError:
                    self.health.append(10.0)
                time.sleep(0.02)

    def __enter__(self) -> Cost:
        for t in self._threads:
            t.start()
        time.sleep(0.05)
        return self

    def __exit__(self, *exc: object) -> None:
        deadline = time.monotonic() + 5
        while not self.health and time.monotonic() < deadline:  # at least one /health answer
            time.sleep(0.01)
        self._stop.set()
        for t in self._threads:
            t.join()

    def check(self, name: str) -> None:
        grown = self.peak_rss - self.start_rss
        print(f"{name}: API RSS +{grown / 2**20:.1f} MiB, worst /health {max(self.health, default=0) * 1000:.0f} ms")
        assert grown < MAX_RSS_GROWTH, f"{name}: API RSS grew {grown / 2**20:.0f} MiB"
        assert self.health, f"{name}: /health was never answered"
        assert max(self.health) < MAX_HEALTH_S, f"{name}: /health took {max(self.health):.2f} s"


def template(tid: str, *, prompt: str = PROMPT, schema: Any = None, example: Any = None) -> dict[str, Any]:
    return {
        "id": tid,
        "prompt": prompt,
        "schema": schema if schema is not None else obj({"gist": {"type": "string", "maxLength": 100}}),
        "example": example if example is not None else {"gist": "x"},
    }


# name -> (request body, words the refusal must contain)
ATTACKS: dict[str, tuple[dict[str, Any], list[str]]] = {
    "maxItems 1e9": (
        template(
            "max-items",
            schema=obj({"t": {"type": "array", "items": {"type": "string"}, "maxItems": 1_000_000_000}}),
            example={"t": []},
        ),
        ["maxItems", "MAX_ITEMS"],
    ),
    "minItems huge": (
        template("min-items", schema=obj({"t": {"type": "array", "minItems": 10**7}}), example={"t": []}),
        ["minItems", "MAX_ITEMS"],
    ),
    "maxLength huge": (
        template("max-length", schema=obj({"t": {"type": "string", "maxLength": 10**12}}), example={"t": ""}),
        ["maxLength", "MAX_LENGTH"],
    ),
    "minLength huge": (
        template("min-length", schema=obj({"t": {"type": "string", "minLength": 10**8}}), example={"t": ""}),
        ["minLength", "MAX_LENGTH"],
    ),
    "maxProperties huge": (
        template("max-props", schema=obj({"t": {"type": "object", "maxProperties": 10**9}}), example={"t": {}}),
        ["maxProperties", "MAX_PROPERTIES"],
    ),
    "500 properties": (
        template("many-props", schema=obj({f"p{i}": {"type": "string"} for i in range(500)}, []), example={}),
        ["500 properties", "MAX_PROPERTIES"],
    ),
    "backtracking pattern with a long example": (
        # Python's re takes ~2^n steps on this; RE2 answers at once: the example simply does not match.
        template(
            "redos",
            schema=obj({"t": {"type": "string", "pattern": "^(a+)+$"}}),
            example={"t": "a" * 50_000 + "!"},
        ),
        ["does not match"],
    ),
    "backtracking patternProperties": (
        template(
            "redos-props",
            schema={
                "type": "object",
                "properties": {},
                "patternProperties": {"^(a+)+$": {}},
                "additionalProperties": False,
            },
            example={"a" * 5_000 + "!": 1},
        ),
        ["Additional properties"],
    ),
    "lookahead pattern": (
        template("lookahead", schema=obj({"t": {"type": "string", "pattern": "^(?=a).*$"}}), example={"t": "a"}),
        ["RE2"],
    ),
    "quantifier bomb in a pattern": (
        template(
            "q-bomb", schema=obj({"t": {"type": "string", "pattern": "^((a{999}){999}){999}$"}}), example={"t": ""}
        ),
        ["pattern"],
    ),
    "schema|join(schema)": (
        template(
            "join-bomb",
            prompt="{{ schema|join(schema) }} {{ transcript }}",
            schema=obj({"t": {"type": "string", "maxLength": 10, "description": LONG_TEXT}}),
            example={"t": "x"},
        ),
        ["MAX_RENDERED_CHARS"],
    ),
    "loop printing the schema per character": (
        template(
            "loop-bomb",
            prompt="{% for c in schema %}{{ schema }}{% endfor %}{{ transcript }}",
            schema=obj({"t": {"type": "string", "maxLength": 10, "description": LONG_TEXT}}),
            example={"t": "x"},
        ),
        ["MAX_RENDERED_CHARS"],
    ),
    "range(10**9)": (
        template("range", prompt="{% for i in range(10000) %}{{ i }}{% endfor %}{{ transcript }}"),
        ["not allowed"],
    ),
    "string multiplication": (
        template("mul", prompt="{{ transcript * 10000 }}"),
        ["not allowed"],
    ),
    "200 nested parentheses": (
        template("parens", prompt="{{ " + "(" * 200 + "transcript" + ")" * 200 + " }}"),
        ["MAX_PROMPT_NESTING"],
    ),
    "400 nested nots": (
        template("nots", prompt="{{ " + "not " * 400 + "transcript }}"),
        ["MAX_PROMPT_NESTING"],
    ),
    "300 nested ifs": (
        template("ifs", prompt="{% if transcript %}" * 300 + "{{ transcript }}" + "{% endif %}" * 300),
        ["MAX_PROMPT_NESTING"],
    ),
    "$ref loop": (
        template(
            "ref-loop",
            schema={
                "type": "object",
                "properties": {"a": {"$ref": "#/$defs/node"}},
                "$defs": {"node": obj({"child": {"$ref": "#/$defs/node"}})},
            },
            example={},
        ),
        ["$ref", "itself"],
    ),
    "$ref to the root": (
        template("ref-root", schema={"type": "object", "properties": {"a": {"$ref": "#"}}}, example={}),
        ["$ref", "itself"],
    ),
    "remote $ref": (
        template(
            "ref-remote",
            schema={"type": "object", "properties": {"a": {"$ref": "http://127.0.0.1:9/schema.json"}}},
            example={},
        ),
        ["only local $ref"],
    ),
    "dangling $ref": (
        template("ref-dangling", schema={"type": "object", "properties": {"a": {"$ref": "#/$defs/nope"}}}, example={}),
        ["does not point"],
    ),
    "400-deep schema": (template("deep", schema=deep_schema(400), example={}), ["MAX_DEPTH"]),
    "400-deep example": (
        template(
            "deep-example",
            schema={"type": "object", "properties": {}},
            example=json.loads('{"a":' * 400 + "1" + "}" * 400),
        ),
        ["MAX_DEPTH"],
    ),
    "8,000-value enum": (
        template(
            "enum-8000", schema=obj({"t": {"enum": [f"value-{i}" for i in range(8_000)]}}), example={"t": "value-1"}
        ),
        ["8000 values", "MAX_ENUM_VALUES"],
    ),
    "long enum values": (
        template("enum-long", schema=obj({"t": {"enum": ["x" * 5_000, "y" * 5_000]}}), example={"t": "x" * 5_000}),
        ["MAX_ENUM_CHARS"],
    ),
    "example array of 20,000 objects under uniqueItems": (
        template(
            "unique",
            schema=obj({"t": {"type": "array", "uniqueItems": True}}),
            example={"t": [{} for _ in range(20_000)]},
        ),
        ["MAX_ITEMS"],
    ),
    "grammar too large": (
        # every bound respected, but 60 strings of 10,000 characters make a 5 M character grammar
        template(
            "grammar",
            schema=obj({f"p{i}": {"type": "string", "maxLength": 10_000} for i in range(60)}),
            example={f"p{i}": "" for i in range(60)},
        ),
        ["MAX_GRAMMAR_CHARS"],
    ),
}


@pytest.mark.parametrize("name", list(ATTACKS))
def test_attack_is_refused_at_a_bounded_cost(service: Service, name: str) -> None:
    body, words = ATTACKS[name]
    with service.client() as client, Cost(service) as cost:
        started = time.perf_counter()
        r = client.post("/v1/templates", json=body)
        elapsed = time.perf_counter() - started
    assert r.status_code == 422, (name, r.status_code, r.text[:500])
    assert r.json()["code"] == "TEMPLATE_INVALID", r.text[:500]
    for word in words:
        assert word in r.json()["detail"], (name, r.json()["detail"])
    assert elapsed < 5.0, f"{name}: refused after {elapsed:.1f} s"
    cost.check(name)
    with service.client() as client:
        assert client.get(f"/v1/templates/{body['id']}").status_code == 404  # nothing stored
    templates = service.data_dir / "templates"
    assert not list(templates.rglob(body["id"])) if templates.exists() else True


def test_pattern_is_evaluated_in_linear_time(service: Service) -> None:
    """A backtracking-prone pattern is allowed, and checked with RE2 (matching and not)."""
    schema = obj({"t": {"type": "string", "pattern": "^(a+)+$", "maxLength": 10_000}})
    with service.client() as client, Cost(service) as cost:
        r = client.post("/v1/templates", json=template("redos-ok", schema=schema, example={"t": "a" * 9_000}))
        assert r.status_code == 201, r.text[:500]
        r = client.put("/v1/templates/redos-ok", json={"example": {"t": "a" * 9_000 + "!"}})
        assert r.status_code == 422 and "does not match" in r.json()["detail"]
        assert client.delete("/v1/templates/redos-ok").status_code == 200
    cost.check("pattern")


def test_deeply_nested_body_is_a_client_error(service: Service) -> None:
    body = '{"id": "x", "prompt": "{{ transcript }}", "schema": ' + '{"a":' * 100_000 + "1" + "}" * 100_000 + "}"
    with service.client() as client, Cost(service) as cost:
        r = client.post("/v1/templates", content=body, headers={"Content-Type": "application/json"})
    assert 400 <= r.status_code < 500, (r.status_code, r.text[:300])
    assert r.json()["code"]
    cost.check("nested body")


def _plant(service: Service, tid: str, schema: dict[str, Any], example: dict[str, Any]) -> Path:
    """Write a template the way the previous version stored it (indented JSON, validated compact), in
    the test key's own scope."""
    folder = service.data_dir / "templates" / "@users" / derived_name(API_KEY) / tid
    folder.mkdir(parents=True)
    (folder / "prompt.jinja").write_text(PROMPT, encoding="utf-8")
    (folder / "schema.json").write_text(json.dumps(schema, indent=2) + "\n", encoding="utf-8")
    (folder / "example.json").write_text(json.dumps(example, indent=2) + "\n", encoding="utf-8")
    return folder


def test_stored_8000_value_enum_can_be_read_updated_and_deleted(service: Service) -> None:
    """The previous version accepted this (62,982 characters compact) but wrote it indented (127,033),
    over its own read limit: it could then be neither read, updated nor deleted, and its id stayed taken."""
    schema = obj({"tag": {"type": "string", "enum": [str(i) for i in range(8_000)]}})
    assert len(json.dumps(schema)) < 64_000 < len(json.dumps(schema, indent=2))
    folder = _plant(service, "enum-stored", schema, {"tag": "1"})
    with service.client() as client, Cost(service) as cost:
        r = client.get("/v1/templates/enum-stored")
        assert r.status_code == 200, r.text[:300]
        assert len(r.json()["schema"]["properties"]["tag"]["enum"]) == 8_000
        assert client.get("/v1/templates/enum-stored/schema").status_code == 200
        assert "enum-stored" in {t["id"] for t in client.get("/v1/templates").json()}
        # an update keeping the over-limit schema is refused by name; one replacing it works
        r = client.put("/v1/templates/enum-stored", json={"prompt": PROMPT + "\nBe brief."})
        assert r.status_code == 422 and "MAX_ENUM_VALUES" in r.json()["detail"], r.text[:300]
        small = obj({"tag": {"type": "string", "enum": ["a", "b"]}})
        r = client.put("/v1/templates/enum-stored", json={"schema": small, "example": {"tag": "a"}})
        assert r.status_code == 200, r.text[:300]
        assert client.get("/v1/templates/enum-stored").json()["schema"] == small
        assert client.delete("/v1/templates/enum-stored").status_code == 200
        assert client.get("/v1/templates/enum-stored").status_code == 404
        # the id is free again
        r = client.post("/v1/templates", json=template("enum-stored"))
        assert r.status_code == 201, r.text[:300]
        assert client.delete("/v1/templates/enum-stored").status_code == 200
    cost.check("stored enum")
    assert not folder.exists()


def test_unreadable_stored_template_can_still_be_deleted(service: Service) -> None:
    folder = _plant(service, "broken", obj({"t": {"type": "string"}}), {"t": "x"})
    (folder / "schema.json").write_text("{not json", encoding="utf-8")
    with service.client() as client:
        assert client.get("/v1/templates/broken").status_code == 422
        assert client.delete("/v1/templates/broken").status_code == 200
        assert client.get("/v1/templates/broken").status_code == 404
    assert not folder.exists()


# -- the worker renders with the same bounds ---------------------------------------------------------


def test_summary_prompt_over_the_bounds_fails_the_summary_not_the_worker(service: Service) -> None:
    """Valid with the short sample transcript (120 x 10 k characters), too large with a real one: the
    summary stage refuses it by name, the transcript is kept, the worker lives on."""
    schema = obj({"gist": {"type": "string", "maxLength": 50, "description": "d" * 10_000}})
    prompt = "{{ transcript }}{{ transcript|join(schema) }}"
    body = template("grows", prompt=prompt, schema=schema, example={"gist": "x"})
    with service.client() as client:
        r = client.post("/v1/templates", json=body)
        assert r.status_code == 201, r.text[:300]
        text = "S1: " + "we ship on friday and write the notes. " * 150
        r = client.post("/v1/process_text", json={"text": text, "features": ["summary"], "template_id": "grows"})
        assert r.status_code == 202, r.text[:300]
        record = wait_terminal(client, r.json()["task_id"], timeout_s=180)
    assert record["status"] == "COMPLETE", record
    assert record["error"]["code"] == "SUMMARY_FAILED"
    assert "MAX_RENDERED_CHARS" in record["error"]["message"]


# -- the sandbox itself, in process ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("source", "says"),
    [
        ("{{ 'a' * 100 }}", "'*' operator"),
        ("{{ [transcript] * 100 }}", "'*' operator"),
        ("{{ 2 ** 100 }}", "'**' operator"),
        ("{{ range(10) }}", "range"),
        ("{{ transcript.upper() }}", "unsafe"),
        ("{{ '%s' % transcript }}", "formatting"),
    ],
)
def test_sandbox_refuses_unchecked_templates_too(source: str, says: str) -> None:
    """A template that skipped check_prompt (planted, or a future bug) is still bounded at render time."""
    from jinja2.exceptions import TemplateError

    with pytest.raises(TemplateError, match=re.escape(says)):
        "".join(_ENV.from_string(source).generate(transcript="t", schema="s", example="e", language="en"))


def test_render_budget_is_checked_while_rendering(monkeypatch: pytest.MonkeyPatch) -> None:
    from maie.templates import sandbox

    monkeypatch.setattr(sandbox._Budget.__init__, "__defaults__", (0.0,))  # no time at all
    with pytest.raises(PromptError, match="MAX_RENDER_SECONDS"):
        render_prompt("{% for c in transcript %}{% endfor %}{{ transcript }}", transcript="x" * 10_000)


def test_render_stops_at_the_character_budget() -> None:
    with pytest.raises(PromptError, match="MAX_RENDERED_CHARS"):
        render_prompt("{% for c in transcript %}{{ schema }}{% endfor %}", transcript="x" * 1_000, schema="y" * 5_000)
    with pytest.raises(PromptError, match="MAX_LOOP_ITERATIONS"):
        render_prompt("{% for c in transcript %}{% endfor %}{{ transcript }}", transcript="x" * 200_000)
    big = "z" * (limits.MAX_RENDERED_CHARS // 2 + 1)
    with pytest.raises(PromptError, match="MAX_RENDERED_CHARS"):
        render_prompt("{{ transcript + transcript }}", transcript=big)
