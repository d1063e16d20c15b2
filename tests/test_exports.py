"""Transcript exports: each format parses with a real parser and keeps speakers and timing."""

from __future__ import annotations

import html
import io
import json
from datetime import timedelta

import pytest
import srt
import webvtt

from maie.errors import ErrorCode, MaieError
from maie.exports import render_transcript, timestamp
from maie.schemas import Segment, Word

SEGMENTS = [
    Segment(start=0.0, end=2.5, text=" Hello everyone, welcome.", speaker="S1", confidence=0.9),
    Segment(start=2.5, end=4.0, text="Thanks for having me.", speaker="S2"),
    Segment(start=4.0, end=4.0, text="  ", speaker="S2"),  # empty: no cue
    Segment(start=4.2, end=4.2, text="Yes.", speaker="S2"),  # zero length: still a valid cue
    Segment(start=5.0, end=7.25, text="Line one\n\nline two --> <b>&</b>", speaker="S1"),
    Segment(start=6005.5, end=6010.125, text="An hour and forty minutes in.", speaker="S1"),
    Segment(start=360_000.0, end=360_001.0, text="A hundred hours in.", speaker="S2"),
]
PLAIN = [
    Segment(start=0.0, end=7.5, text="And so my fellow Americans, ask not what your country can do for you,"),
    Segment(start=7.5, end=10.7, text="ask what you can do for your country."),
]


def test_timestamps() -> None:
    assert timestamp(0) == "00:00:00,000"
    assert timestamp(6005.5) == "01:40:05,500"
    assert timestamp(59.9996) == "00:01:00,000"
    assert timestamp(360_000.25, ".") == "100:00:00.250"


def test_srt_parses() -> None:
    body, media_type = render_transcript(SEGMENTS, "srt")
    assert media_type.startswith("application/x-subrip")
    subs = list(srt.parse(body))
    assert len(subs) == 6  # the empty segment has no cue
    assert [s.index for s in subs] == [1, 2, 3, 4, 5, 6]
    assert subs[0].content == "[S1] Hello everyone, welcome."
    assert subs[0].start == timedelta(0) and subs[0].end == timedelta(seconds=2.5)
    assert subs[2].end > subs[2].start
    assert subs[3].content == "[S1] Line one line two --> <b>&</b>"
    assert subs[4].start == timedelta(hours=1, minutes=40, seconds=5.5)
    assert subs[4].end == timedelta(hours=1, minutes=40, seconds=10.125)
    assert subs[5].start == timedelta(hours=100)
    # Round trip through the library's own writer gives the same cues.
    assert list(srt.parse(srt.compose(subs))) == subs


def test_vtt_parses_with_voice_tags() -> None:
    body, media_type = render_transcript(SEGMENTS, "vtt")
    assert media_type.startswith("text/vtt")
    assert body.startswith("WEBVTT\n\n")
    captions = webvtt.from_string(body).captions
    assert len(captions) == 6
    assert captions[0].voice == "S1"
    assert captions[0].text == "Hello everyone, welcome."
    assert captions[1].voice == "S2"
    assert captions[0].start == "00:00:00.000" and captions[0].end == "00:00:02.500"
    assert (captions[2].start, captions[2].end) == ("00:00:04.200", "00:00:04.201")
    # Markup-like text is escaped, so it is shown, not interpreted, and "-->" cannot end the cue.
    assert html.unescape(captions[3].text) == "Line one line two --> <b>&</b>"
    assert "<b>" not in body
    assert captions[4].start == "01:40:05.500"
    assert captions[5].start_in_seconds == 360_000
    buffered = webvtt.from_buffer(io.StringIO(body)).captions  # read_buffer is its deprecated alias
    assert [c.text for c in buffered] == [c.text for c in captions]


def test_vtt_and_srt_without_speakers() -> None:
    captions = webvtt.from_string(render_transcript(PLAIN, "vtt")[0]).captions
    assert [c.voice for c in captions] == [None, None]
    assert captions[1].text == "ask what you can do for your country."
    subs = list(srt.parse(render_transcript(PLAIN, "srt")[0]))
    assert subs[0].content.startswith("And so my fellow")


def test_empty_transcript_is_valid_everywhere() -> None:
    assert list(srt.parse(render_transcript([], "srt")[0])) == []
    assert webvtt.from_string(render_transcript([], "vtt")[0]).captions == []
    assert json.loads(render_transcript([], "json")[0])["segments"] == []
    assert render_transcript([], "txt")[0] == ""


def test_txt_speaker_turns() -> None:
    body, media_type = render_transcript(SEGMENTS, "txt")
    assert media_type.startswith("text/plain")
    lines = body.splitlines()
    assert lines[0] == "S1: Hello everyone, welcome."
    assert lines[1] == "S2: Thanks for having me. Yes."  # consecutive turns of one speaker joined
    assert lines[2].startswith("S1: Line one line two")
    plain = render_transcript(PLAIN, "txt")[0]
    assert plain.splitlines() == [s.text for s in PLAIN]


def test_json() -> None:
    segments = [PLAIN[0].model_copy(update={"words": [Word(start=0.0, end=0.3, word=" And", probability=0.9)]})]
    body, media_type = render_transcript(
        segments, "json", language="en", title="JFK", summary={"title": "Inaugural"}, clean_transcript="Clean."
    )
    assert media_type == "application/json"
    data = json.loads(body)
    assert data["language"] == "en" and data["title"] == "JFK"
    assert data["segments"][0]["words"][0]["word"] == " And"
    assert data["text"] == PLAIN[0].text
    assert data["summary"] == {"title": "Inaugural"} and data["clean_transcript"] == "Clean."


def test_markdown_with_summary() -> None:
    summary = {
        "title": "Weekly sync",
        "main_points": ["Budget approved", "Hiring *paused*"],
        "action_items": [{"owner": "S1", "task": "Send notes"}, {"owner": "S2", "task": "Book room"}],
        "sentiment": {"overall": "positive", "confidence": 0.8},
    }
    body, media_type = render_transcript(
        SEGMENTS, "md", language="en", title="Team meeting", summary=summary, clean_transcript="Hello everyone."
    )
    assert media_type.startswith("text/markdown")
    assert body.startswith("# Team meeting\n")
    assert "## Summary" in body and "### Main points" in body and "### Action items" in body
    assert "- Budget approved" in body and r"- Hiring \*paused\*" in body
    assert "- **Owner:** S1" in body and "  - **Task:** Send notes" in body
    assert "- **Overall:** positive" in body
    assert "## Clean transcript\n\nHello everyone." in body
    assert "S1: Hello everyone, welcome." in body
    assert "S2: Thanks for having me. Yes." in body
    assert body.index("## Summary") < body.index("## Clean transcript") < body.index("## Transcript")
    assert "Duration: 100:00:01" in body
    bare = render_transcript(PLAIN, "md")[0]
    assert "## Summary" not in bare and bare.startswith("# Transcript")


def test_unknown_format() -> None:
    with pytest.raises(MaieError) as err:
        render_transcript(PLAIN, "docx")
    assert err.value.code == ErrorCode.INVALID_FIELD
