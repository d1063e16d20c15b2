"""Verifying results: speaker names (PATCH over HTTP, exports, LLM input), the richer task list, and the
browser UI — audio from the server after a reload, warnings in words, search, rename → SRT, evidence.

One real ``maie serve`` (embedded Redis, a tiny.en + Resemblyzer worker) with two keys, alice and bob.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from browser import browser, enter_key, open_page, sync_api  # noqa: F401  (fixture)
from maie.config import Settings
from maie.pipeline.context import TaskContext, Transcript
from maie.pipeline.llm.text import render, transcript_turns
from maie.pipeline.registry import ModelRegistry
from maie.schemas import Segment, TaskOptions

from service import Service, start_service, wait_terminal

ALICE = "alice-key-0123456789"
BOB = "bob-key-0123456789abc"
AUDIO = Path(__file__).resolve().parents[2] / "shared" / "audio"
expect = sync_api.expect

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def svc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    service = start_service(
        tmp_path_factory.mktemp("verify") / "data", env={"MAIE_API_KEYS": f"alice:{ALICE},bob:{BOB}"}
    )
    try:
        service.wait_ready()
        yield service
    finally:
        service.stop()


def _client(svc: Service, key: str) -> httpx.Client:
    return httpx.Client(base_url=svc.base_url, headers={"X-API-Key": key}, timeout=60)


def _submit(svc: Service, key: str, name: str, **fields: str) -> dict:
    with _client(svc, key) as client:
        r = client.post("/v1/process", data=fields, files={"file": (name, (AUDIO / name).read_bytes())})
        assert r.status_code == 202, r.text
        record = wait_terminal(client, r.json()["task_id"], timeout_s=600)
    assert record["status"] == "COMPLETE", record
    return record


@pytest.fixture(scope="module")
def two_speakers(svc: Service) -> dict:
    return _submit(svc, ALICE, "two_speakers_sample.wav", enable_diarization="true")


@pytest.fixture(scope="module")
def multilingual(svc: Service) -> dict:
    return _submit(svc, ALICE, "multilingual.mp3")


# ---------------------------------------------------------------- HTTP: PATCH, exports, list


def test_rename_speakers_owner_only_validated_and_in_every_export(svc: Service, two_speakers: dict) -> None:
    task = two_speakers["task_id"]
    assert {s["id"] for s in two_speakers["results"]["speakers"]} == {"S1", "S2"}
    with _client(svc, BOB) as bob:
        r = bob.patch(f"/v1/tasks/{task}", json={"speakers": {"S1": "Mallory"}})
        assert r.status_code == 404 and r.json()["code"] == "TASK_NOT_FOUND"
    with _client(svc, ALICE) as alice:
        for body, code in [
            ({"speakers": {"S9": "Nobody"}}, "INVALID_FIELD"),
            ({"speakers": {"S1": "x" * 81}}, "INVALID_FIELD"),
            ({"speakers": {"S1": "Di\x07ane"}}, "INVALID_FIELD"),
            ({"speakers": {"S1": "Di\u202eane"}}, "INVALID_FIELD"),  # bidi override: an invisible control
            ({"speakers": {"S1": 5}}, "VALIDATION_ERROR"),
            ({"speakers": ["S1"]}, "VALIDATION_ERROR"),
            ({"names": {"S1": "Diane"}}, "VALIDATION_ERROR"),
            ({}, "VALIDATION_ERROR"),
        ]:
            r = alice.patch(f"/v1/tasks/{task}", json=body)
            assert r.status_code == 422 and r.json()["code"] == code, (body, r.text)
        r = alice.patch(f"/v1/tasks/{task}", content=b"{not json", headers={"Content-Type": "application/json"})
        assert r.status_code == 422, r.text
        assert "speaker_names" not in alice.get(f"/v1/status/{task}").json()  # nothing half-applied

        r = alice.patch(f"/v1/tasks/{task}", json={"speakers": {"S1": "  Diane  ", "S2": "Sheila Ø"}})
        assert r.status_code == 200, r.text
        assert r.json()["speaker_names"] == {"S1": "Diane", "S2": "Sheila Ø"}
        assert alice.get(f"/v1/status/{task}").json()["speaker_names"] == {"S1": "Diane", "S2": "Sheila Ø"}

        exports = {fmt: alice.get(f"/v1/tasks/{task}/transcript", params={"format": fmt}).text
                   for fmt in ("srt", "vtt", "txt", "json", "md")}  # fmt: skip
        assert "[Diane]" in exports["srt"] and "[Sheila Ø]" in exports["srt"] and "[S1]" not in exports["srt"]
        assert "<v Diane>" in exports["vtt"]
        assert "Diane: " in exports["txt"] and "S1: " not in exports["txt"]
        assert {s["speaker"] for s in json.loads(exports["json"])["segments"]} == {"Diane", "Sheila Ø"}
        assert "Diane: " in exports["md"]

        # null restores the id; the other name stays.
        r = alice.patch(f"/v1/tasks/{task}", json={"speakers": {"S2": None}})
        assert r.json()["speaker_names"] == {"S1": "Diane"}
        assert "[S2]" in alice.get(f"/v1/tasks/{task}/transcript", params={"format": "srt"}).text
        assert alice.get(f"/v1/status/{task}").json()["options"]["speaker_names"] == {"S1": "Diane"}


def test_rename_on_a_task_without_speakers_or_of_a_missing_task(svc: Service, multilingual: dict) -> None:
    # LOW_CONFIDENCE describes the result; it is not a failure: no "error", the task is plainly COMPLETE.
    assert [w["code"] for w in multilingual["warnings"]] == ["LOW_CONFIDENCE"]
    assert "error" not in multilingual and multilingual["results"]["low_confidence"]
    with _client(svc, ALICE) as alice:
        r = alice.patch(f"/v1/tasks/{multilingual['task_id']}", json={"speakers": {"S1": "Diane"}})
        assert r.status_code == 422 and "no speakers" in r.json()["detail"], r.text
        r = alice.patch("/v1/tasks/no-such-task", json={"speakers": {"S1": "Diane"}})
        assert r.status_code == 404 and r.json()["code"] == "TASK_NOT_FOUND"


def test_llm_stages_read_the_names() -> None:
    ctx = TaskContext(
        task_id="t",
        options=TaskOptions(speaker_names={"S1": "Diane"}),
        settings=Settings(),
        models=ModelRegistry(),
    )
    ctx.transcript = Transcript(
        segments=[
            Segment(start=0, end=1, text="This is Diane", speaker="S1"),
            Segment(start=1, end=2, text="in New Jersey.", speaker="S1"),
            Segment(start=2, end=3, text="And I'm Sheila.", speaker="S2"),
        ],
        language="en",
        language_probability=None,
        confidence=None,
        versions={},
    )
    assert render(transcript_turns(ctx)) == "Diane: This is Diane in New Jersey.\nS2: And I'm Sheila."


def test_task_list_shows_duration_features_and_first_words(svc: Service, two_speakers: dict) -> None:
    with _client(svc, ALICE) as alice:
        items = {t["task_id"]: t for t in alice.get("/v1/tasks").json()}
    item = items[two_speakers["task_id"]]
    assert item["input_duration_s"] == pytest.approx(30.0, abs=0.5)
    assert item["features"] == ["raw_transcript"] and item["enable_diarization"] is True
    assert item["preview"].lower().startswith("hello") and len(item["preview"]) <= 122
    assert "results" not in item and "options" not in item  # still a summary, not the record
    with _client(svc, BOB) as bob:
        assert two_speakers["task_id"] not in {t["task_id"] for t in bob.get("/v1/tasks").json()}


# ---------------------------------------------------------------- browser


@pytest.fixture
def page(browser: sync_api.Browser, svc: Service) -> Iterator[sync_api.Page]:  # noqa: F811
    with open_page(browser, svc.base_url) as page:
        yield page


def _open(page: sync_api.Page, task_id: str) -> None:
    page.locator(f".task-item[data-task-id='{task_id}']").click()
    expect(page.locator("#results")).to_be_visible(timeout=30_000)


def _player_time(page: sync_api.Page) -> float:
    return page.evaluate("document.getElementById('player').currentTime")


def test_audio_plays_after_a_reload_and_warnings_are_in_words(page: sync_api.Page, multilingual: dict) -> None:
    task = multilingual["task_id"]
    enter_key(page, ALICE)
    page.reload()  # a fresh page: no local copy of the file, only the key in localStorage
    item = page.locator(f".task-item[data-task-id='{task}']")
    expect(item).to_contain_text("multilingual.mp3")
    expect(item.locator(".task-item-sub")).to_contain_text("00:59")  # duration (59.9 s)
    expect(item.locator(".task-item-preview")).to_contain_text("Permission is hereby granted")
    _open(page, task)
    player = page.locator("#player")
    expect(player).to_have_attribute("data-source", "server", timeout=30_000)
    page.wait_for_function("document.getElementById('player').readyState >= 1", timeout=20_000)
    page.locator("#transcript .segment").first.click()
    page.wait_for_function("document.getElementById('player').currentTime > 0.5", timeout=20_000)
    assert not page.evaluate("document.getElementById('player').paused")

    # LOW_CONFIDENCE: a sentence a person understands, above the results, and its times play.
    warnings = page.locator("#warnings")
    expect(warnings).to_be_visible()
    low = warnings.locator("li[data-code='LOW_CONFIDENCE']")
    expect(low).to_contain_text("not recognised reliably")
    start = float(low.locator(".time-link").first.get_attribute("data-start") or "nan")
    assert start >= 20.0, start
    low.locator(".time-link").first.click()
    assert start - 0.05 <= _player_time(page) <= start + 2.0
    box = warnings.bounding_box()
    results = page.locator("#results").bounding_box()
    assert box and results and box["y"] < results["y"]  # shown above the results


def test_search_rename_and_srt_download(page: sync_api.Page, two_speakers: dict) -> None:
    task = two_speakers["task_id"]
    enter_key(page, ALICE)
    _open(page, task)
    page.fill("#search", "JERSEY")  # case-insensitive
    n = sum(s["text"].lower().count("jersey") for s in two_speakers["results"]["segments"])
    assert n >= 2  # "This is Diane in New Jersey", "I'm in New Jersey now"
    marks = page.locator("#transcript mark")
    expect(marks).to_have_count(n)
    expect(marks.first).to_have_text("Jersey")
    expect(page.locator("#search-count")).to_have_text(f"1 of {n}")
    page.click("#search-next")
    expect(page.locator("#search-count")).to_have_text(f"2 of {n}")
    expect(marks.nth(1)).to_have_class("current")
    page.click("#search-prev")
    page.click("#search-prev")  # wraps around to the last
    expect(page.locator("#search-count")).to_have_text(f"{n} of {n}")
    page.locator("#search").press("Enter")
    expect(page.locator("#search-count")).to_have_text(f"1 of {n}")
    page.fill("#search", "<b>")  # typed text is matched as text, never markup
    expect(page.locator("#search-count")).to_have_text("not found")

    chip = page.locator(".speaker-chip[data-speaker='S2']")
    chip.locator(".rename").click()
    chip.locator("input").fill("Sheila")
    chip.locator("input").press("Enter")
    expect(page.locator(".speaker-chip[data-speaker='S2'] .speaker-name")).to_have_text("Sheila")
    expect(page.locator("#transcript .seg-speaker", has_text="Sheila").first).to_be_visible()
    with page.expect_download() as info:
        page.click(".downloads [data-format=srt]")
    body = Path(info.value.path()).read_text()
    assert "[Sheila]" in body and "[S2]" not in body, body


def test_unavailable_diarization_is_disabled(browser: sync_api.Browser, tmp_path: Path) -> None:  # noqa: F811
    import os

    stub = tmp_path / "stub" / "resemblyzer"
    stub.mkdir(parents=True)
    (stub / "__init__.py").write_text("raise ImportError('test: the diarization extra is not installed')\n")
    env = {"PYTHONPATH": os.pathsep.join([str(stub.parent), os.environ.get("PYTHONPATH", "")]),
           "MAIE_API_KEYS": f"alice:{ALICE}"}  # fmt: skip
    bare = start_service(tmp_path / "data", workers=0, env=env)
    try:
        bare.wait_ready(need_worker=False)
        with open_page(browser, bare.base_url) as page:
            enter_key(page, ALICE)
            expect(page.locator("#enable-diarization")).to_be_disabled(timeout=30_000)
            expect(page.locator("#diarization-note")).to_contain_text("maie[diarization]")
            expect(page.locator("#min-speakers")).to_be_disabled()
    finally:
        bare.stop()


# ---------------------------------------------------------------- needs the grounding branch (issue 12 items 1-3)


def test_summary_evidence_plays_and_unsupported_items_are_marked(page: sync_api.Page, svc: Service) -> None:
    """The default model's meeting notes of a real recording: every supported item's ▶ moves the player
    to its evidence, every unsupported one says so. Needs ``summary_evidence`` from the grounding work."""
    record = _submit(svc, ALICE, "two_speakers_sample.wav", features="raw_transcript,summary",
                     template_id="meeting_notes_v2")  # fmt: skip
    results = record["results"]
    assert "summary_evidence" in results, "summary_evidence missing: merge the grounding branch (issue 12 items 1-2)"
    evidence = results["summary_evidence"]
    enter_key(page, ALICE)
    _open(page, record["task_id"])
    page.wait_for_function("document.getElementById('player').readyState >= 1", timeout=30_000)
    supported = [e for e in evidence if e["supported"]]
    unsupported = [e for e in evidence if not e["supported"]]
    summary = page.locator("#summary")
    expect(summary.locator(".leaf.unsupported")).to_have_count(len(unsupported))
    for e in unsupported:
        expect(summary.locator(f".leaf.unsupported[data-path='{e['path']}']")).to_contain_text(
            "not found in the transcript"
        )
    for e in supported[:3]:
        summary.locator(f".evidence[data-path='{e['path']}']").click()
        assert e["start"] - 0.05 <= _player_time(page) <= e["start"] + 2.0, e
    if results.get("summary_grounding", {}).get("unsupported"):
        expect(page.locator("#warnings li[data-code='SUMMARY_UNGROUNDED']")).to_be_visible()


def test_unchanged_clean_transcript_is_not_labelled_clean(page: sync_api.Page, svc: Service) -> None:
    """Needs ENHANCE_UNCHANGED from the LLM work (issue 12 item 3, LLM half)."""
    record = _submit(svc, ALICE, "jfk.flac", features="raw_transcript,clean_transcript")
    metrics = record["metrics"]
    unchanged = metrics["enhance_chunks_kept_raw"] == metrics["enhance_chunks"]
    codes = [w["code"] for w in record.get("warnings") or []]
    assert ("ENHANCE_UNCHANGED" in codes) == unchanged, (codes, metrics)
    enter_key(page, ALICE)
    _open(page, record["task_id"])
    title = page.locator("#clean-title")
    if unchanged:
        expect(title).to_have_text("Transcript text (not cleaned up)")
        expect(page.locator("#clean-note")).to_be_visible()
        expect(page.locator("#warnings li[data-code='ENHANCE_UNCHANGED']")).to_contain_text("changed nothing")
    else:
        expect(title).to_have_text("Clean transcript")
