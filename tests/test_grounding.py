"""Grounding summary leaves in the transcript (pipeline/llm/grounding.py), measured on a labelled set.

The transcripts: Whisper tiny.en's text of ../shared/audio/two_speakers_sample.wav and jfk.flac as
it segmented them, and two hand-written meeting transcripts (English with numbers and dates,
Vietnamese). Each case is (transcript, leaf, truly supported?, kind), labelled by hand: "supported"
means a reader of the transcript would accept the leaf as what was said. The test prints precision
and recall of "supported" and fails if an invented name, number or date is ever called supported.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from maie.pipeline.llm.grounding import Unit, ground, leaves, pointer, units_from_text
from maie.templates import TemplateStore, placeholder_example

TWO_SPEAKERS = [
    (0.0, 11.8, "hello hello hello I didn't know you were there I need to design I thought you", "S1"),
    (11.8, 16.08, "know I heard a beat this is Diane in New Jersey and I'm Sheila and Texas", "S2"),
    (16.08, 20.88, "originally from Chicago oh I'm originally from Chicago also I'm in New Jersey", "S1"),
    (20.88, 25.52, "now though well there isn't that much difference at least you know they all", "S2"),
    (25.52, 31.8, "call me a Yankee down here so I don't hear that New Jersey now", "S2"),
]
JFK = [
    (0.0, 8.0, "And so, my fellow Americans ask not what your country can do for you", None),
    (8.0, 11.0, "ask what you can do for your country.", None),
]
PLAN = [
    (0.0, 6.5, "okay so the budget for the pilot is forty five thousand dollars", "S1"),
    (6.5, 12.0, "and we want to ship it on March 14th with three engineers", "S1"),
    (12.0, 17.2, "Priya will send the draft contract to the client by Friday", "S2"),
    (17.2, 23.0, "the first test run showed twelve percent fewer errors than last year", "S2"),
    (23.0, 28.0, "we meet again on 2025-04-02 to review the results", "S1"),
]
VI = [
    (0.0, 5.0, "chào mọi người hôm nay chúng ta bàn về kế hoạch ra mắt sản phẩm mới", "S1"),
    (5.0, 9.5, "chị Lan sẽ viết thông cáo báo chí trước thứ Sáu", "S1"),
    (9.5, 14.0, "ngân sách quảng cáo là năm mươi triệu đồng", "S2"),
    (14.0, 19.0, "anh Minh phụ trách kiểm thử ứng dụng di động", "S2"),
]
TRANSCRIPTS = {"two": TWO_SPEAKERS, "jfk": JFK, "plan": PLAN, "vi": VI}

# (transcript, leaf, supported, kind)
CASES: list[tuple[str, str, bool, str]] = [
    # verbatim and near-verbatim
    ("jfk", "Ask what you can do for your country", True, "verbatim"),
    ("two", "originally from Chicago", True, "verbatim"),
    ("plan", "Priya will send the draft contract to the client by Friday.", True, "verbatim"),
    # paraphrase
    ("two", "Diane lives in New Jersey", True, "paraphrase"),
    ("two", "Both speakers are originally from Chicago.", True, "paraphrase"),
    ("two", "Sheila is in Texas", True, "paraphrase"),
    ("two", "Introductions between Diane and Sheila", True, "paraphrase"),
    ("two", "People down there call her a Yankee.", True, "paraphrase"),
    (
        "two",
        "Diane from New Jersey and Sheila from Texas introduce themselves. Both grew up in Chicago.",
        True,
        "paraphrase",
    ),
    ("jfk", "Citizens should ask what they can do for their country.", True, "paraphrase"),
    ("jfk", "A speech to fellow Americans about their country", True, "paraphrase"),
    ("plan", "The draft contract goes to the client on Friday", True, "paraphrase"),
    ("plan", "Three engineers will ship the pilot", True, "paraphrase"),
    ("plan", "The results are reviewed at the next meeting", True, "paraphrase"),
    ("two", "The speakers discuss where they are originally from", True, "paraphrase"),
    ("plan", "The team discussed the budget of the pilot", True, "paraphrase"),
    ("plan", "Planning the shipping of the pilot", True, "paraphrase"),
    ("vi", "Cuộc họp thảo luận kế hoạch ra mắt sản phẩm", True, "vi"),
    # tags, participants, owners
    ("two", "Chicago", True, "tag"),
    ("two", "New Jersey", True, "tag"),
    ("two", "Yankee", True, "tag"),
    ("two", "S1", True, "label"),
    ("two", "Diane", True, "name"),
    ("plan", "Priya", True, "name"),
    ("plan", "budget", True, "tag"),
    ("plan", "pilot", True, "tag"),
    # numbers and dates, stated differently
    ("plan", "The pilot budget is $45,000.", True, "number"),
    ("plan", "Ship on 14 March with 3 engineers", True, "number"),
    ("plan", "Errors fell by 12% in the first test run", True, "number"),
    ("plan", "2025-04-02", True, "date"),
    ("plan", "Review meeting on 2025-04-02", True, "date"),
    # invented names
    ("plan", "Rahul will send the draft contract to the client by Friday", False, "name"),
    ("plan", "Priya and Tom will send the draft to the client", False, "name"),
    ("two", "Diane and Mark are from Chicago", False, "name"),
    ("two", "Anna", False, "name"),
    ("two", "Sheila is originally from Boston", False, "name"),
    ("jfk", "Kennedy asks what Americans can do for their country", False, "name"),
    ("plan", "Priya sends the draft to the client by Monday", False, "name"),
    ("plan", "Tom sends the draft contract to the client", False, "name"),
    # known limit: a name that is also an everyday word, at a sentence start, is judged by coverage
    ("plan", "Ben sends the draft contract to the client", False, "initial-common-name"),
    # invented or changed numbers and dates
    ("plan", "The pilot budget is $54,000.", False, "number"),
    ("plan", "Ship on March 15 with three engineers", False, "number"),
    ("plan", "Five engineers will ship the pilot", False, "number"),
    ("plan", "2025-04-03", False, "date"),
    ("two", "2024-03-04", False, "date"),
    ("plan", "Errors fell by 20 percent", False, "number"),
    # content not in the transcript at all
    ("two", "The team started the website redesign.", False, "invented"),
    ("two", "Launch the new site in May", False, "invented"),
    ("jfk", "Quarterly budget review", False, "invented"),
    ("plan", "Hire two more testers", False, "invented"),
    ("two", "finance", False, "invented"),
    ("two", "Diane is from New Jersey. They agreed to launch the website in May.", False, "invented"),
    ("two", "<A short title for the meeting.>", False, "placeholder"),
    ("jfk", ",", False, "empty"),  # SmolLM2 wrote this as a leaf; no word, no claim, no evidence
    ("two", "Your speakers cannot discuss the topic with Americans", False, "invented"),
    # Vietnamese: paraphrase, names and numbers, diacritics kept
    ("vi", "Kế hoạch ra mắt sản phẩm mới", True, "vi"),
    ("vi", "Chị Lan viết thông cáo báo chí trước thứ Sáu", True, "vi"),
    ("vi", "Ngân sách quảng cáo 50 triệu đồng", True, "vi"),
    ("vi", "Minh", True, "vi"),
    ("vi", "anh Minh kiểm thử ứng dụng", True, "vi"),
    ("vi", "Chị Hoa viết thông cáo báo chí", False, "vi"),
    ("vi", "Ngân sách quảng cáo 80 triệu đồng", False, "vi"),
    ("vi", "Thiết kế lại website", False, "vi"),
    ("vi", "Bình", False, "vi"),
]


def units(name: str) -> list[Unit]:
    return [Unit(i, t, a, b, s) for i, (a, b, t, s) in enumerate(TRANSCRIPTS[name])]


def judge(name: str, leaf: str, example: dict | None = None) -> bool:
    g = ground({"x": leaf}, units(name), examples=[example] if example else None)
    return g.evidence[0].supported


def test_labelled_set_precision_and_recall(capsys: pytest.CaptureFixture[str]) -> None:
    tp = fp = fn = tn = 0
    wrong: list[str] = []
    for name, leaf, truth, kind in CASES:
        said = judge(name, leaf)
        tp += said and truth
        fp += said and not truth
        fn += truth and not said
        tn += not said and not truth
        if said != truth:
            wrong.append(f"{kind}: {leaf!r} ({name}) judged {'supported' if said else 'unsupported'}")
    precision = tp / (tp + fp) if tp + fp else 1.0
    recall = tp / (tp + fn) if tp + fn else 1.0
    with capsys.disabled():
        print(
            f"\ngrounding on {len(CASES)} labelled leaves: precision {precision:.3f}, recall {recall:.3f} "
            f"(tp {tp}, fp {fp}, fn {fn}, tn {tn})"
        )
        for w in wrong:
            print("  miss:", w)
    assert precision >= 0.95, wrong
    assert recall >= 0.85, wrong
    assert all(w.startswith("initial-common-name") for w in wrong if "judged supported" in w)


@pytest.mark.parametrize(
    ("name", "leaf"),
    [(n, leaf) for n, leaf, truth, kind in CASES if not truth and kind in ("name", "number", "date", "vi")],
)
def test_invented_names_numbers_and_dates_are_never_supported(name: str, leaf: str) -> None:
    assert not judge(name, leaf)


def test_evidence_points_at_the_segments_that_say_it() -> None:
    g = ground(
        {"summary": "Diane is in New Jersey and Sheila in Texas. Both are originally from Chicago.", "tags": ["x"]},
        units("two"),
    )
    first = g.evidence[0]
    assert first.path == "/summary" and first.supported
    assert first.segments == [1, 2] and (first.start, first.end) == (11.8, 20.88)
    assert 0.5 < first.score <= 1.0
    tag = g.evidence[1]
    assert tag.path == "/tags/0" and not tag.supported and tag.segments == [] and tag.start is None
    assert g.summary()["unsupported"] == ["/tags/0"] and g.ratio == 0.5


def test_a_copy_of_the_template_example_is_unsupported_unless_the_transcript_says_it() -> None:
    template = TemplateStore(Path("/nonexistent")).get("meeting_notes_v2_en")
    copied = dict(template.example)
    g = ground(copied, units("two"), schema=template.schema, examples=[template.example])
    assert g.total == 17 and len(g.copied) == 17
    # Only the tag "design" is supported: S1 says "I need to design". Nothing else of the example is.
    assert [e.path for e in g.evidence if e.supported] == ["/tags/1"]
    # a transcript that does talk about the website redesign supports the copied tag "website"
    talk = units_from_text("S1: we should start the website redesign\nS2: yes, design and planning first")
    g = ground({"tags": ["website", "design", "planning"]}, talk, examples=[template.example])
    assert [e.copied for e in g.evidence] == [True, True, True]
    assert [e.supported for e in g.evidence] == [True, True, True]


def test_placeholder_copies_are_caught() -> None:
    template = TemplateStore(Path("/nonexistent")).get("meeting_notes_v2_en")
    placeholder = placeholder_example(template.schema)
    g = ground(placeholder, units("two"), schema=template.schema, examples=[template.example, placeholder])
    assert g.supported == 0 and len(g.copied) == g.total


def test_which_leaves_are_checked() -> None:
    schema = TemplateStore(Path("/nonexistent")).get("interview_transcript_v2_en").schema
    data = {
        "interview_summary": "x",
        "key_insights": ["a", "", "b"],
        "participant_sentiment": "mixed",  # an enum: a judgement, not checked
        "tags": ["t"],
        "n": 3,
        "flag": True,
        "none": None,
        "a/b~c": "y",
    }
    paths = [pointer(p) for p, _ in leaves(data, schema)]
    assert paths == ["/interview_summary", "/key_insights/0", "/key_insights/2", "/tags/0", "/n", "/a~1b~0c"]


def test_text_tasks_are_grounded_in_lines_and_sentences_without_times() -> None:
    text = "S1: We ship on Friday. Priya writes the notes.\nS2: Fine by me."
    u = units_from_text(text)
    assert [(x.text, x.speaker, x.start) for x in u] == [
        ("We ship on Friday.", "S1", None),
        ("Priya writes the notes.", "S1", None),
        ("Fine by me.", "S2", None),
    ]
    g = ground({"a": "Priya writes notes", "b": "Tom writes notes"}, u)
    assert g.evidence[0].supported and g.evidence[0].segments == [1] and g.evidence[0].start is None
    assert not g.evidence[1].supported


def test_long_transcripts_are_fast() -> None:
    import time

    long = [Unit(i, f"{TWO_SPEAKERS[i % 5][2]} item {i}", float(i), i + 1.0) for i in range(2000)]
    data = {"s": "Diane is in New Jersey. Sheila is in Texas.", "t": [f"tag {i}" for i in range(40)]}
    started = time.perf_counter()
    g = ground(data, long)
    assert time.perf_counter() - started < 10
    assert g.evidence[0].supported
