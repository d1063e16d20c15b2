"""Templates: the built-ins, validation of user templates, storage shared through the data dir, sandbox."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from jinja2.sandbox import SecurityError

from maie.errors import ErrorCode, MaieError
from maie.templates import PromptError, TemplateStore, check_prompt, render_prompt, validate_template
from maie.templates import sandbox as sandbox_module

BUILTINS: dict[str, list[str]] = {
    "generic_summary_en_v2": ["title", "summary", "key_topics", "tags"],
    "generic_summary_v2": ["tiêu_đề", "tóm_tắt", "chủ_đề_chính", "thẻ"],
    "meeting_notes_v2": [
        "title",
        "meeting_date",
        "participants",
        "summary",
        "agenda",
        "decisions",
        "action_items",
        "tags",
    ],
    "meeting_notes_v2_en": [
        "title",
        "meeting_date",
        "participants",
        "summary",
        "agenda",
        "decisions",
        "action_items",
        "tags",
    ],
    "interview_transcript_v2": ["interview_summary", "key_insights", "participant_sentiment", "tags"],
    "interview_transcript_v2_en": ["interview_summary", "key_insights", "participant_sentiment", "tags"],
    "structured_analysis_v1": ["opening", "report", "discussion", "conclusion", "assignments", "tags"],
}
SSTI = [
    "{{ ''.__class__.__mro__[1].__subclasses__() }} {{ transcript }}",
    "{{ cycler.__init__.__globals__.os }} {{ transcript }}",
    "{{ transcript }}{{ transcript['__class__'] }}",
    "{{ transcript }}{% set x = transcript %}",
    "{{ transcript }}{{ 'a' * 1000 }}",
    "{{ transcript }}{% for a in transcript %}{% for b in transcript %}{% endfor %}{% endfor %}",
    "{{ transcript|center(10000) }}",
    "{{ transcript.upper() }}",
    '{% include "/etc/passwd" %}{{ transcript }}',
]
PROMPT = "Summarise as JSON.\nSchema: {{ schema }}\nExample: {{ example }}\nTranscript:\n{{ transcript }}\n"
SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "gist": {"type": "string", "maxLength": 200},
        "tags": {"type": "array", "items": {"type": "string", "maxLength": 30}, "minItems": 1, "maxItems": 5},
    },
    "required": ["gist", "tags"],
    "additionalProperties": False,
}
EXAMPLE = {"gist": "A short call about the launch date.", "tags": ["launch"]}


@pytest.fixture
def store(tmp_path: Path) -> TemplateStore:
    return TemplateStore(tmp_path)


def _walk(schema: dict[str, Any], path: str = "$"):
    yield path, schema
    for name, sub in schema.get("properties", {}).items():
        yield from _walk(sub, f"{path}.{name}")
    if isinstance(schema.get("items"), dict):
        yield from _walk(schema["items"], f"{path}[]")


# -- built-ins -------------------------------------------------------------------------------------


def test_builtins_are_listed_with_their_fields(store: TemplateStore) -> None:
    listed = {t.id: t for t in store.list()}
    assert set(listed) == set(BUILTINS)
    for template_id, fields in BUILTINS.items():
        template = listed[template_id]
        assert template.builtin
        assert template.fields == fields
        assert template.language in {"en", "vi"}
        assert template.name and template.description
        assert template.info()["id"] == template_id


@pytest.mark.parametrize("template_id", sorted(BUILTINS))
def test_builtin_is_valid_and_bounded(store: TemplateStore, template_id: str) -> None:
    template = store.get(template_id)
    validate_template(template.prompt, template.schema, template.example)
    schema = template.schema
    assert schema["type"] == "object"
    tags = schema["properties"][BUILTINS[template_id][-1]]
    assert tags["type"] == "array" and tags["minItems"] == 1 and tags["maxItems"] == 10
    for path, sub in _walk(schema):
        types = sub.get("type")
        types = types if isinstance(types, list) else [types]
        if "object" in types:
            assert sub["additionalProperties"] is False, path
            assert set(sub["required"]) == set(sub["properties"]), path
        if "string" in types and "enum" not in sub and "format" not in sub:
            assert sub.get("maxLength"), f"{path} has no maxLength"
        if "array" in types:
            assert sub.get("maxItems"), f"{path} has no maxItems"
        if path != "$" and not path.endswith("[]"):
            assert sub.get("title") and sub.get("description"), f"{path} lacks title/description"


def test_builtin_prompt_shows_schema_example_and_transcript(store: TemplateStore) -> None:
    template = store.get("meeting_notes_v2")
    prompt = template.render("S1: Chào mọi người.", "vi")
    assert "S1: Chào mọi người." in prompt
    assert '"action_items"' in prompt  # the schema
    assert template.example["title"] in prompt  # the example
    assert "tiếng Việt" in prompt


def test_builtins_are_read_only(store: TemplateStore) -> None:
    with pytest.raises(MaieError) as exc:
        store.update("generic_summary_en_v2", prompt=PROMPT)
    assert exc.value.code == ErrorCode.TEMPLATE_READ_ONLY
    with pytest.raises(MaieError) as exc:
        store.delete("meeting_notes_v2")
    assert exc.value.code == ErrorCode.TEMPLATE_READ_ONLY
    with pytest.raises(MaieError) as exc:
        store.create("meeting_notes_v2", prompt=PROMPT, schema=SCHEMA, example=EXAMPLE)
    assert exc.value.code == ErrorCode.TEMPLATE_EXISTS


# -- user templates --------------------------------------------------------------------------------


def test_user_template_lifecycle_is_seen_by_every_store_on_the_data_dir(tmp_path: Path) -> None:
    api, worker = TemplateStore(tmp_path), TemplateStore(tmp_path)  # two processes, one data dir
    created = api.create("team-notes_1", prompt=PROMPT, schema=SCHEMA, example=EXAMPLE, name="Team notes")
    assert not created.builtin and created.name == "Team notes"
    # no caller (the in-process CLI): a shared template
    assert (tmp_path / "templates" / "@shared" / "team-notes_1" / "schema.json").is_file()
    assert worker.get("team-notes_1").schema == SCHEMA
    assert "team-notes_1" in {t.id for t in worker.list()}

    with pytest.raises(MaieError) as exc:
        worker.create("team-notes_1", prompt=PROMPT, schema=SCHEMA, example=EXAMPLE)
    assert exc.value.code == ErrorCode.TEMPLATE_EXISTS

    updated = worker.update("team-notes_1", example={"gist": "Another call.", "tags": ["call"]})
    assert updated.example["gist"] == "Another call." and updated.prompt == PROMPT
    assert api.get("team-notes_1").example["gist"] == "Another call."

    api.delete("team-notes_1")
    with pytest.raises(MaieError) as exc:
        worker.get("team-notes_1")
    assert exc.value.code == ErrorCode.TEMPLATE_NOT_FOUND
    assert [p.name for p in (tmp_path / "templates").iterdir()] == ["@shared"]  # no staging leftovers
    assert list((tmp_path / "templates" / "@shared").iterdir()) == []


def test_invalid_update_keeps_the_old_template(store: TemplateStore) -> None:
    store.create("keep", prompt=PROMPT, schema=SCHEMA, example=EXAMPLE)
    with pytest.raises(MaieError) as exc:
        store.update("keep", example={"gist": 5, "tags": []})
    assert exc.value.code == ErrorCode.TEMPLATE_INVALID
    assert store.get("keep").example == EXAMPLE


@pytest.mark.parametrize("bad_id", ["../evil", "Upper", "", "a" * 65, "with space", "-lead", "x/y", "a\n"])
def test_ids_never_become_paths(tmp_path: Path, bad_id: str) -> None:
    store = TemplateStore(tmp_path / "data")
    with pytest.raises(MaieError) as exc:
        store.create(bad_id, prompt=PROMPT, schema=SCHEMA, example=EXAMPLE)
    assert exc.value.code == ErrorCode.TEMPLATE_INVALID
    with pytest.raises(MaieError) as exc:
        store.get(bad_id)
    assert exc.value.code == ErrorCode.TEMPLATE_NOT_FOUND
    assert sorted(p.name for p in tmp_path.iterdir()) in ([], ["data"])
    assert not (tmp_path / "evil").exists()


@pytest.mark.parametrize(
    ("prompt", "schema", "example", "says"),
    [
        (PROMPT, {"type": "array", "items": {"type": "string"}}, EXAMPLE, "type"),
        (PROMPT, {"type": "object", "properties": {"a": {"type": "strung"}}}, EXAMPLE, "JSON Schema"),
        (PROMPT, "not a schema", EXAMPLE, "JSON object"),
        (PROMPT, SCHEMA, {"gist": "x"}, "example does not match"),
        (PROMPT, SCHEMA, {"gist": "x", "tags": ["a"], "extra": 1}, "example does not match"),
        ("{{ transcript ", SCHEMA, EXAMPLE, "does not compile"),
        ("No transcript here: {{ schema }}", SCHEMA, EXAMPLE, "transcript"),
        ("{{ transcript }} {{ undefined_name }}", SCHEMA, EXAMPLE, "unknown variable"),
    ],
)
def test_validation_names_the_problem(store: TemplateStore, prompt: Any, schema: Any, example: Any, says: str) -> None:
    with pytest.raises(MaieError) as exc:
        store.create("bad", prompt=prompt, schema=schema, example=example)
    assert exc.value.code == ErrorCode.TEMPLATE_INVALID
    assert says in exc.value.message
    assert not store.exists("bad")


# -- sandbox ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("payload", SSTI)
def test_template_injection_is_refused_at_validation(store: TemplateStore, payload: str) -> None:
    with pytest.raises(MaieError) as exc:
        store.create("ssti", prompt=payload, schema=SCHEMA, example=EXAMPLE)
    assert exc.value.code == ErrorCode.TEMPLATE_INVALID
    with pytest.raises(PromptError):
        check_prompt(payload)


@pytest.mark.parametrize(
    "payload",
    ["{{ ''.__class__.__mro__[1].__subclasses__() }}", "{{ cycler.__init__.__globals__.os }}"],
)
def test_sandbox_cannot_run_the_payload_even_unchecked(payload: str) -> None:
    # Bypass the syntax check: the sandboxed environment alone still refuses.
    template = sandbox_module._ENV.from_string(payload)
    with pytest.raises(SecurityError, match="unsafe"):
        template.render(transcript="t", schema="", example="", language="")


def test_template_planted_on_disk_cannot_render(tmp_path: Path, store: TemplateStore) -> None:
    folder = tmp_path / "templates" / "planted"
    folder.mkdir(parents=True)
    (folder / "prompt.jinja").write_text(SSTI[1])
    (folder / "schema.json").write_text(json.dumps(SCHEMA))
    (folder / "example.json").write_text(json.dumps(EXAMPLE))
    with pytest.raises(PromptError):
        store.get("planted").render("hello")


def test_render_gives_variables_and_allowed_filters() -> None:
    out = render_prompt(
        "{{ language|upper }}: {{ transcript|trim }}{% if schema %} [{{ schema|length }}]{% endif %}",
        transcript="  hi  ",
        schema="{}",
        example="{}",
        language="en",
    )
    assert out == "EN: hi [2]"


@pytest.mark.parametrize("template_id", list(BUILTINS))
def test_the_example_can_be_shown_as_placeholders_or_left_out(tmp_path: Path, template_id: str) -> None:
    from maie.pipeline.llm.grounding import leaves
    from maie.templates import placeholder_example

    template = TemplateStore(tmp_path).get(template_id)
    full = template.render("S1: hi", "en")
    assert full == template.render("S1: hi", "en", "full")
    assert json.dumps(template.example, ensure_ascii=False) in full
    shown = placeholder_example(template.schema)
    placeholder = template.render("S1: hi", "en", "placeholder")
    assert json.dumps(shown, ensure_ascii=False) in placeholder
    assert list(shown) == list(template.schema["properties"])  # the same form, field by field
    # none of the example's content: every value is a <hint> (enums list their choices)
    assert [text for _, text in leaves(shown, template.schema) if not text.startswith("<")] == []
    none = template.render("S1: hi", "en", "none")
    example = json.dumps(template.example, ensure_ascii=False)
    heading = full.split(example)[0].rstrip().splitlines()[-1]  # "Example answer (...):"
    assert example not in none and heading not in none  # the whole paragraph goes, heading included
    assert "\n\n\n" not in none and "S1: hi" in none
