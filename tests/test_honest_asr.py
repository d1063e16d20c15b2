"""Honest transcripts from the ASR half: LOW_CONFIDENCE where recognition collapsed, speakers at word
resolution. Real tiny.en, real Resemblyzer, real reference audio."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from maie.pipeline.asr.low_confidence import MIN_STRETCH_S, low_confidence_ranges
from maie.pipeline.context import TaskContext
from maie.pipeline.results import PipelineResult
from maie.pipeline.run import run_pipeline
from maie.schemas import Segment, Word

GERMAN_STARTS_S = 30.0
"""multilingual.mp3: the English passage ends at ~29 s, the German one runs from ~30.5 s to the end (60 s)."""


def _words(start: float, probabilities: list[float], step: float = 0.5) -> list[Word]:
    return [
        Word(start=start + i * step, end=start + i * step + 0.4, word=" w", probability=p)
        for i, p in enumerate(probabilities)
    ]


def test_a_long_low_stretch_is_reported_and_a_short_dip_is_not() -> None:
    good = Segment(start=0.0, end=10.0, text="fine", words=_words(0.0, [0.95] * 20))
    dip = Segment(start=10.0, end=13.0, text="mumble", words=_words(10.0, [0.2] * 6))
    more = Segment(start=13.0, end=23.0, text="fine", words=_words(13.0, [0.95] * 20))
    assert low_confidence_ranges([good, dip, more]) == []  # 3 s of mumbling is not a collapse
    bad = Segment(start=23.0, end=43.0, text="gibberish", words=_words(23.0, [0.3] * 40))
    ranges = low_confidence_ranges([good, bad])
    assert len(ranges) == 1
    assert 18.0 <= ranges[0]["start"] <= 23.5 and ranges[0]["end"] == pytest.approx(42.9)
    assert ranges[0]["end"] - ranges[0]["start"] >= MIN_STRETCH_S and ranges[0]["confidence"] < 0.7


def test_without_words_the_segment_confidence_is_used() -> None:
    segments = [
        Segment(start=0.0, end=29.0, text="english", confidence=0.9),
        Segment(start=30.0, end=45.0, text="german", confidence=0.58),
        Segment(start=45.0, end=59.0, text="german", confidence=0.18),
    ]
    assert low_confidence_ranges(segments) == [{"start": 45.0, "end": 59.0, "confidence": 0.18}]
    assert low_confidence_ranges([Segment(start=0, end=30, text="x", confidence=0.5)]) == []


@pytest.mark.slow
@pytest.mark.parametrize("word_timestamps", [False, True])
def test_german_half_of_multilingual_is_low_confidence(
    make_ctx: Callable[..., TaskContext], shared_audio: Path, word_timestamps: bool
) -> None:
    ctx = make_ctx(shared_audio / "multilingual.mp3", word_timestamps=word_timestamps)
    result = run_pipeline(ctx)
    warnings = [w for w in result.warnings if w.code == "LOW_CONFIDENCE"]
    assert len(warnings) == 1, result.warnings
    ranges = [r.model_dump() for r in result.results.low_confidence or []]
    # The German half, and not the English one.
    assert all(r["start"] >= GERMAN_STARTS_S - 10.0 for r in ranges), ranges
    covered = sum(r["end"] - max(r["start"], GERMAN_STARTS_S) for r in ranges)
    # Most of the ~29 s of German: with ctranslate2 4.8.5 / onnxruntime 1.32 tiny.en writes its last
    # ~11 s as confident English, so 18.3 s are flagged (20 s or more in earlier CI runs).
    assert covered >= 0.5 * (60.0 - GERMAN_STARTS_S), ranges  # at least half of it
    assert "tiny.en knows only English" in warnings[0].message
    assert ":" in warnings[0].message.split("unreliable at ")[1]  # times as m:ss
    assert warnings[0].stage == "PROCESSING_ASR"


@pytest.mark.slow
@pytest.mark.parametrize("name", ["jfk.flac", "hotwords.mp3", "two_speakers_sample.wav"])
def test_clear_english_is_not_low_confidence(
    make_ctx: Callable[..., TaskContext], shared_audio: Path, name: str
) -> None:
    result = run_pipeline(make_ctx(shared_audio / name, word_timestamps=name != "jfk.flac"))
    assert not [w for w in result.warnings if w.code == "LOW_CONFIDENCE"], result.warnings
    assert result.results.low_confidence is None


def segment_dicts(result: PipelineResult) -> list[dict]:
    """The segments as the task record has them."""
    return [s.model_dump() for s in result.results.segments or []]


def _changes_inside(plain: list[dict], diarized: list[dict]) -> list[tuple[dict, list[dict]]]:
    """Segments of the run without diarization inside which the diarized run changes speaker."""
    out = []
    for seg in plain:
        inside = [d for d in diarized if d["start"] >= seg["start"] - 0.05 and d["end"] <= seg["end"] + 0.05]
        if len({d["speaker"] for d in inside}) >= 2:
            out.append((seg, inside))
    return out


@pytest.mark.slow
def test_speakers_split_inside_an_asr_segment_and_words_stay_out(
    make_ctx: Callable[..., TaskContext], shared_audio: Path
) -> None:
    audio = shared_audio / "two_speakers_sample.wav"
    plain = segment_dicts(run_pipeline(make_ctx(audio)))
    diarized = run_pipeline(make_ctx(audio, enable_diarization=True)).results
    segments = [s.model_dump() for s in diarized.segments or []]
    # Words were used internally but not asked for: none in the response.
    assert all("words" not in s for s in segments), segments[0]
    assert all("words" not in s for s in plain)
    assert {s.id for s in diarized.speakers or []} == {"S1", "S2"}
    # "This is Diane in New Jersey and I'm Sheila ..." is one ~6 s ASR segment: diarized, it is split.
    split = _changes_inside(plain, segments)
    assert split, (plain, segments)
    longest = max(seg["end"] - seg["start"] for seg, _ in split)
    assert longest <= 7.0  # a change inside a segment of a few seconds, not only at segment edges
    diane = next(s for s in segments if "diane" in s["text"].lower())
    sheila = next(s for s in segments if "sheila" in s["text"].lower())
    assert diane["speaker"] != sheila["speaker"], segments
    # The RTTM agrees on where the change is: the Sheila piece starts within 1 s of a reference turn start.
    rttm = (shared_audio / "two_speakers_sample.rttm").read_text().split("\n")
    turn_starts = [float(line.split()[3]) for line in rttm if line.strip()]
    assert min(abs(sheila["start"] - t) for t in turn_starts) <= 1.0, (sheila, turn_starts)


@pytest.mark.slow
def test_stereo_two_voices_in_one_asr_segment_are_split(
    make_ctx: Callable[..., TaskContext], shared_audio: Path
) -> None:
    audio = shared_audio / "stereo_diarization.wav"
    plain = segment_dicts(run_pipeline(make_ctx(audio)))
    diarized = segment_dicts(run_pipeline(make_ctx(audio, enable_diarization=True, word_timestamps=True)))
    assert len(plain) == 1 and plain[0]["end"] - plain[0]["start"] <= 6.0, plain  # one ~5 s segment
    assert _changes_inside(plain, diarized), diarized
    assert all(s.get("words") for s in diarized)  # asked for: kept
