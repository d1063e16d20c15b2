"""What happens to a valid summary before it is returned: loops cut, every leaf grounded, and the
``sum_ungrounded`` policy (flag / drop / fail) applied, with the warnings and results fields a task
record carries. The summaries are hand-made (as a small model writes them: the template's example
copied, invented names, a sentence looping) so each rule is tested exactly; the real model's own
output is tested in test_llm_embedded.py and test_llm_server.py.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest

from maie.config import Settings
from maie.errors import ErrorCode, MaieError
from maie.pipeline.context import LlmUsage, Summary, TaskContext, Transcript
from maie.pipeline.llm.client import LlmReply
from maie.pipeline.llm.loops import cut_data, cut_text
from maie.pipeline.llm.summarize import check_summary, drop_unsupported
from maie.pipeline.registry import ModelRegistry
from maie.pipeline.results import build_result
from maie.schemas import Feature, Segment, TaskOptions
from maie.templates import TemplateStore, first_error

TWO_SPEAKERS = [
    (0.0, 11.8, "hello hello hello I didn't know you were there I need to design I thought you", "S1"),
    (11.8, 16.08, "know I heard a beat this is Diane in New Jersey and I'm Sheila and Texas", "S2"),
    (16.08, 20.88, "originally from Chicago oh I'm originally from Chicago also I'm in New Jersey", "S1"),
    (20.88, 25.52, "now though well there isn't that much difference at least you know they all", "S2"),
    (25.52, 31.8, "call me a Yankee down here so I don't hear that New Jersey now", "S2"),
]
STORE = TemplateStore(Path("/nonexistent"))
MEETING = STORE.get("meeting_notes_v2_en")

# What a good model might write, with three invented leaves: a participant, a decision, a date.
HALF_TRUE: dict[str, Any] = {
    "title": "Diane and Sheila introduce themselves",
    "meeting_date": "2023-06-01",
    "participants": ["Diane", "Sheila", "Robert"],
    "summary": "Diane lives in New Jersey and Sheila in Texas. Both are originally from Chicago.",
    "agenda": ["Where they live"],
    "decisions": ["Move the office to Denver"],
    "action_items": [
        {"description": "Draft the home page mockup", "owner": "Anna", "due_date": "next Friday"},
        {"description": "Call the Yankee down here", "owner": "S2", "due_date": None},
    ],
    "tags": ["chicago", "new jersey"],
}


def make_ctx(tmp_path: Path, policy: str = "flag", *, text: str | None = None) -> TaskContext:
    transcript = None
    if text is None:
        segments = [Segment(start=a, end=b, text=t, speaker=s) for a, b, t, s in TWO_SPEAKERS]
        transcript = Transcript(segments, "en", 1.0, None, {})
    return TaskContext(
        task_id="t1",
        options=TaskOptions(features=[Feature.SUMMARY], template_id=MEETING.id, text=text),
        settings=Settings(data_dir=tmp_path, llm={"sum_ungrounded": policy}),
        models=ModelRegistry(),
        transcript=transcript,
    )


def finish(ctx: TaskContext, summary: Summary) -> dict[str, Any]:
    summary.usage = LlmUsage("m", None)
    ctx.summary = summary
    result = build_result(ctx, processing_time_s=1.0)
    return {
        "results": result.results.model_dump(exclude_unset=True),
        "metrics": result.metrics.model_dump(exclude_unset=True),
        "warnings": [w.model_dump() for w in result.warnings],
    }


def test_flag_keeps_everything_and_marks_what_is_not_in_the_transcript(tmp_path: Path) -> None:
    ctx = make_ctx(tmp_path)
    out = finish(ctx, check_summary(ctx, MEETING, copy.deepcopy(HALF_TRUE)))
    results = out["results"]
    assert results["summary"] == HALF_TRUE
    evidence = {e["path"]: e for e in results["summary_evidence"]}
    assert set(evidence) == {
        "/title", "/meeting_date", "/participants/0", "/participants/1", "/participants/2", "/summary",
        "/agenda/0", "/decisions/0", "/action_items/0/description", "/action_items/0/owner",
        "/action_items/0/due_date", "/action_items/1/description", "/action_items/1/owner", "/tags/0", "/tags/1",
    }  # fmt: skip
    unsupported = [
        "/meeting_date", "/participants/2", "/agenda/0", "/decisions/0", "/action_items/0/description",
        "/action_items/0/owner", "/action_items/0/due_date",
    ]  # fmt: skip
    assert [p for p, e in evidence.items() if not e["supported"]] == unsupported
    assert evidence["/summary"]["segments"] == [1, 2] and evidence["/summary"]["start"] == 11.8
    assert evidence["/action_items/1/owner"]["segments"] == [1]  # the S2 label: S2's first segment
    assert evidence["/action_items/0/owner"]["copied"]  # "Anna" is the template example's owner
    grounding = results["summary_grounding"]
    assert grounding["supported"] == 8 and grounding["total"] == 15 and grounding["ratio"] == round(8 / 15, 4)
    assert grounding["unsupported"] == unsupported and grounding["policy"] == "flag"
    assert grounding["copied_from_example"] == [
        "/action_items/0/description", "/action_items/0/owner", "/action_items/0/due_date"
    ]  # fmt: skip
    [warning] = out["warnings"]
    assert warning["code"] == ErrorCode.SUMMARY_UNGROUNDED.value == "SUMMARY_UNGROUNDED"
    assert warning["stage"] == "PROCESSING_LLM"
    assert "7 of 15 summary items not found in the transcript" in warning["message"]
    assert "3 copied from the template's example" in warning["message"] and "ratio 0.53" in warning["message"]
    assert out["metrics"]["summary_grounded_ratio"] == grounding["ratio"]
    assert out["metrics"]["llm_loops_cut"] == 0


def test_drop_removes_what_the_schema_lets_go_and_nulls_the_rest(tmp_path: Path) -> None:
    ctx = make_ctx(tmp_path, "drop")
    summary = check_summary(ctx, MEETING, copy.deepcopy(HALF_TRUE))
    data = summary.data
    assert first_error(MEETING.schema, data) is None
    assert data["meeting_date"] is None  # required but nullable: nulled
    assert data["participants"] == ["Diane", "Sheila"]  # minItems 0: removed
    assert data["decisions"] == []
    # agenda has minItems 1 and its only item is unsupported: kept, and still marked
    assert data["agenda"] == ["Where they live"]
    # the first action item's description is required and not nullable: the whole item goes
    assert data["action_items"] == [{"description": "Call the Yankee down here", "owner": "S2", "due_date": None}]
    g = summary.grounding
    assert g is not None and g["policy"] == "drop"
    assert g["dropped"] == [
        "/meeting_date", "/participants/2", "/decisions/0", "/action_items/0/description",
        "/action_items/0/owner", "/action_items/0/due_date",
    ]  # fmt: skip
    assert g["unsupported"] == ["/agenda/0"]  # what is left, in the summary as returned
    assert [e["path"] for e in summary.evidence if not e["supported"]] == ["/agenda/0"]
    [warning] = ctx.warnings
    assert warning.code == "SUMMARY_UNGROUNDED" and "6 removed, 1 kept and marked unsupported" in warning.message


def test_drop_climbs_only_as_far_as_the_schema_allows() -> None:
    schema = {
        "type": "object",
        "properties": {
            "items": {
                "type": "array",
                "minItems": 1,
                "items": {
                    "type": "object",
                    "properties": {"a": {"type": "string"}, "b": {"type": "string"}},
                    "required": ["a"],
                },
            },
            "note": {"type": "string"},
        },
        "required": ["items"],
    }
    data = {"items": [{"a": "x", "b": "y"}, {"a": "z"}], "note": "n"}
    kept, dropped = drop_unsupported(data, schema, ["/items/0/a", "/items/0/b", "/items/1/a", "/note"])
    # /note is optional: removed. /items/1 goes whole (its required "a"), /items/0 cannot (minItems 1),
    # so only its optional "b" goes and its "a" stays, still unsupported.
    assert kept == {"items": [{"a": "x"}]}
    assert dropped == ["/items/0/b", "/items/1/a", "/note"]
    assert data == {"items": [{"a": "x", "b": "y"}, {"a": "z"}], "note": "n"}  # the input is untouched


def test_fail_withholds_the_summary(tmp_path: Path) -> None:
    ctx = make_ctx(tmp_path, "fail")
    with pytest.raises(MaieError) as exc:
        check_summary(ctx, MEETING, copy.deepcopy(HALF_TRUE))
    assert exc.value.code == ErrorCode.SUMMARY_FAILED
    assert "summary withheld: 7 of 15 summary items not found" in exc.value.message
    assert "MAIE_LLM__SUM_UNGROUNDED=fail" in exc.value.message


def test_fail_keeps_a_fully_supported_summary(tmp_path: Path) -> None:
    ctx = make_ctx(tmp_path, "fail")
    data = {
        "title": "Diane and Sheila",
        "meeting_date": None,
        "participants": ["S1", "S2"],
        "summary": "Diane is in New Jersey, Sheila in Texas; both are originally from Chicago.",
        "agenda": ["Where they are originally from"],
        "decisions": [],
        "action_items": [],
        "tags": ["Chicago", "Yankee"],
    }
    summary = check_summary(ctx, MEETING, data)
    assert summary.grounding is not None and summary.grounding["ratio"] == 1.0
    assert ctx.warnings == []


def test_the_pipeline_turns_a_failed_policy_into_a_summary_failed_warning(tmp_path: Path) -> None:
    """Through run.py's optional-stage wrapper: the transcript stays, SUMMARY_FAILED is recorded."""
    from maie.pipeline.run import _optional
    from maie.schemas import TaskStatus

    ctx = make_ctx(tmp_path, "fail")
    result = _optional(
        ctx,
        ErrorCode.SUMMARY_FAILED,
        TaskStatus.PROCESSING_LLM,
        "summary",
        lambda c: check_summary(c, MEETING, HALF_TRUE),
    )
    assert result is None
    assert [w.code for w in ctx.warnings] == ["SUMMARY_FAILED"]
    out = build_result(ctx, processing_time_s=1.0)
    assert out.results.summary is None and out.results.summary_evidence is None
    assert (out.results.raw_transcript or "").startswith("hello hello hello")


def test_the_copied_template_example_is_flagged_leaf_by_leaf(tmp_path: Path) -> None:
    """What SmolLM2-135M writes with the example in the prompt: the example itself."""
    ctx = make_ctx(tmp_path)
    summary = check_summary(ctx, MEETING, copy.deepcopy(MEETING.example))
    assert summary.grounding is not None
    assert summary.grounding["total"] == 17 and summary.grounding["ratio"] < 0.1
    copies = [e for e in summary.evidence if e["copied"]]
    assert len(copies) == 17 and [e["path"] for e in copies if e["supported"]] == ["/tags/1"]  # "design"
    assert ctx.warnings[0].code == "SUMMARY_UNGROUNDED" and "16 copied from the template's example" in (
        ctx.warnings[0].message
    )


def test_text_tasks_get_evidence_without_times(tmp_path: Path) -> None:
    ctx = make_ctx(tmp_path, text="S1: Diane is in New Jersey.\nS2: I'm Sheila, in Texas. We both grew up in Chicago.")
    data = copy.deepcopy(HALF_TRUE)
    summary = check_summary(ctx, MEETING, data)
    evidence = {e["path"]: e for e in summary.evidence}
    assert evidence["/tags/0"] == {
        "path": "/tags/0", "segments": [2], "start": None, "end": None, "score": 1.0, "supported": True,
        "copied": False,
    }  # fmt: skip
    assert not evidence["/participants/2"]["supported"]


# -- loops ---------------------------------------------------------------------------------------

LOOPING = {
    # the interview template with SmolLM2: one sentence, over and over
    "interview_summary": "The speakers talk about where they live. " * 15,
    "key_insights": [
        "Diane is in New Jersey",
        "Diane is in New Jersey.",
        "diane is in new jersey",
        "Sheila is in Texas",
    ],
    "participant_sentiment": "neutral",
    "tags": ["chicago", "chicago", "chicago chicago chicago chicago"],
}


def test_loops_are_cut_and_reported(tmp_path: Path) -> None:
    template = STORE.get("interview_transcript_v2_en")
    ctx = make_ctx(tmp_path)
    ctx.options.template_id = template.id
    summary = check_summary(ctx, template, copy.deepcopy(LOOPING))
    assert summary.data["interview_summary"] == "The speakers talk about where they live."
    assert summary.data["key_insights"] == ["Diane is in New Jersey", "Sheila is in Texas"]
    assert summary.data["tags"] == ["chicago"]
    assert summary.loops_cut == 14 + 2 + 3 + 2
    loop = next(w for w in ctx.warnings if w.code == "LLM_LOOP_CUT")
    assert "21 repeated sentences, phrases or list items" in loop.message
    assert "/interview_summary (14)" in loop.message and "/key_insights (2)" in loop.message
    out = finish(ctx, summary)
    assert out["metrics"]["llm_loops_cut"] == 21
    assert [w["code"] for w in out["warnings"]] == ["LLM_LOOP_CUT", "SUMMARY_UNGROUNDED"]


def test_a_cut_that_would_break_the_schema_is_not_made() -> None:
    schema = {"type": "object", "properties": {"t": {"type": "array", "minItems": 3, "items": {"type": "string"}}}}
    data, cuts = cut_data({"t": ["a", "a", "a"]}, schema)
    assert data == {"t": ["a", "a", "a"]} and cuts == []


def test_repeats_the_speaker_said_are_not_loops() -> None:
    assert cut_text("hello hello hello, I didn't know you were there", source="hello hello hello I didn't know") == (
        "hello hello hello, I didn't know you were there",
        0,
    )
    text, n = cut_text("I am from Chicago. I am from Chicago. I am from Chicago.", source="I am from Chicago")
    assert (text, n) == ("I am from Chicago.", 2)
    assert cut_text("New York, New York is a song.") == ("New York, New York is a song.", 0)


# -- the clean transcript ------------------------------------------------------------------------


class Scripted:
    """An LLM whose reply is given: the looping output a small model produces now and then, which
    no real model produces on demand."""

    base_url: str | None = None

    def __init__(self, text: str) -> None:
        self.text = text

    def chat(self, messages: list[dict[str, str]], **_: Any) -> LlmReply:
        return LlmReply(self.text, "scripted", 10, 10, 0.0, "stop")


def test_the_clean_transcript_loses_a_loop_the_input_did_not_have(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import importlib

    enhance_module = importlib.import_module("maie.pipeline.llm.enhance")

    ctx = make_ctx(tmp_path, text="so i think we should ship it on monday right")
    ctx.options.features = [Feature.CLEAN_TRANSCRIPT]
    monkeypatch.setattr(
        enhance_module, "get_llm", lambda c, p: Scripted("So I think we should ship it on Monday, right? " * 3)
    )
    result = enhance_module.enhance(ctx)
    assert result.text == "So I think we should ship it on Monday, right?"
    assert result.loops_cut == 2 and not result.unchanged
    [warning] = ctx.warnings
    assert warning.code == "LLM_LOOP_CUT" and "2 repeated sentences or phrases cut" in warning.message
    ctx.enhancement = result
    out = build_result(ctx, processing_time_s=1.0)
    assert out.results.clean_transcript_unchanged is False and out.metrics.llm_loops_cut == 2


def test_a_clean_transcript_whose_every_chunk_drifted_says_it_is_unchanged(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import importlib

    enhance_module = importlib.import_module("maie.pipeline.llm.enhance")

    text = "so i think we should ship it on monday right"
    ctx = make_ctx(tmp_path, text=text)
    ctx.options.features = [Feature.CLEAN_TRANSCRIPT]
    monkeypatch.setattr(enhance_module, "get_llm", lambda c, p: Scripted('{"summary": "a plan"}'))
    result = enhance_module.enhance(ctx)
    assert result.text == text and result.unchanged
    assert [w.code for w in ctx.warnings] == ["ENHANCE_UNCHANGED"]


def test_a_summary_quoting_the_speakers_own_repeats_is_not_cut(tmp_path: Path) -> None:
    ctx = make_ctx(tmp_path)
    data = {**copy.deepcopy(HALF_TRUE), "title": "Hello hello hello, I didn't know you were there"}
    summary = check_summary(ctx, MEETING, data)
    assert summary.data["title"] == data["title"] and summary.loops_cut == 0
    assert "LLM_LOOP_CUT" not in [w.code for w in ctx.warnings]


def test_drop_handles_keys_that_look_like_numbers_and_escaped_pointers() -> None:
    schema = {"type": "object", "properties": {"2024": {"type": ["string", "null"]}, "a/b": {"type": "string"}}}
    kept, dropped = drop_unsupported({"2024": "x", "a/b": "y"}, schema, ["/2024", "/a~1b"])
    assert kept == {} and dropped == ["/2024", "/a~1b"]  # neither is required: both removed
    schema["required"] = ["2024", "a/b"]
    kept, dropped = drop_unsupported({"2024": "x", "a/b": "y"}, schema, ["/2024", "/a~1b"])
    assert kept == {"2024": None, "a/b": "y"} and dropped == ["/2024"]
