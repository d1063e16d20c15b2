"""Hallucination filtering: loops collapse, fillers go only when suspicious, real speech stays."""

from __future__ import annotations

import numpy as np

from maie.pipeline.asr.hallucination import (
    collapse_loops,
    filter_hallucinations,
    is_filler_text,
    normalise,
)
from maie.schemas import Segment, Word

RATE = 16_000


def seg(text: str, start: float = 0.0, end: float = 2.0, confidence: float | None = 0.9) -> Segment:
    return Segment(start=start, end=end, text=text, confidence=confidence)


def speech_like(seconds: float) -> np.ndarray:
    """Loud enough to be speech (-17 dBFS), not silence."""
    t = np.arange(int(seconds * RATE)) / RATE
    return (0.2 * np.sin(2 * np.pi * 220 * t)).astype(np.float32)


def test_normalise() -> None:
    assert normalise("  Thank you!! ") == "thank you"
    assert normalise("Don't — STOP.") == "don't stop"
    assert normalise("♪ ♪") == ""


def test_single_word_loop_collapses_and_keeps_the_rest() -> None:
    out, removed = filter_hallucinations([seg("So the the the the the plan is simple.")])
    assert [s.text for s in out] == ["So the plan is simple."]
    assert removed == 1


def test_phrase_loop_collapses() -> None:
    text = "and then I said " + "we can do it " * 5 + "tomorrow."
    out, removed = filter_hallucinations([seg(text)])
    assert out[0].text == "and then I said we can do it tomorrow."
    assert removed == 1


def test_short_repeats_are_real_speech() -> None:
    texts = ["No, no, no, that's wrong.", "It was very very good.", "Go go go!"]
    out, removed = filter_hallucinations([seg(t) for t in texts])
    assert [s.text for s in out] == texts
    assert removed == 0


def test_never_drop_a_long_segment_for_one_repeat() -> None:
    long_text = (
        "We reviewed the budget for the next quarter and agreed that the marketing team "
        "will get more money, but I I I I think we should revisit it in two weeks when the "
        "numbers from the sales team are in, thank you."
    )
    out, removed = filter_hallucinations([seg(long_text, end=15.0, confidence=0.3)])
    assert len(out) == 1
    assert "but I think we should revisit" in out[0].text
    assert out[0].text.startswith("We reviewed the budget")
    assert out[0].text.endswith("thank you.")
    assert removed == 1


def test_loop_collapse_keeps_words_in_step() -> None:
    words = [
        Word(start=i * 0.3, end=i * 0.3 + 0.25, word=w)
        for i, w in enumerate([" Hello", " go", " go", " go", " go", " home."])
    ]
    segment = Segment(start=0.0, end=2.0, text=" Hello go go go go home.", words=words, confidence=0.9)
    out, _ = filter_hallucinations([segment])
    assert out[0].text == "Hello go home."
    assert [w.word for w in out[0].words] == [" Hello", " go", " home."]
    assert out[0].words[2].start == words[5].start


def test_collapse_loops_prefers_the_longest_cover() -> None:
    keys = ["a", "b", "a", "b", "a", "b", "a", "b", "c"]
    keep, loops = collapse_loops(keys)
    assert [keys[i] for i in keep] == ["a", "b", "c"]
    assert loops == 1


def test_fillers_dropped_when_low_confidence() -> None:
    segments = [
        seg("Thank you.", 0, 2, confidence=0.2),
        seg("Thanks for watching!", 2, 4, confidence=0.3),
        seg("Subtitles by the Amara.org community", 4, 6, confidence=0.1),
        seg("Please subscribe", 6, 8, confidence=0.4),
        seg(" you", 8, 9, confidence=0.25),
    ]
    out, removed = filter_hallucinations(segments)
    assert out == []
    assert removed == 5


def test_fillers_dropped_in_near_silence_even_if_confident() -> None:
    audio = np.concatenate([speech_like(2.0), np.full(2 * RATE, 1e-4, np.float32)])
    segments = [seg("Let us begin.", 0, 2, confidence=0.9), seg("Thank you.", 2, 4, confidence=0.95)]
    out, removed = filter_hallucinations(segments, audio=audio)
    assert [s.text for s in out] == ["Let us begin."]
    assert removed == 1


def test_clear_confident_filler_in_speech_is_kept() -> None:
    audio = speech_like(4.0)
    segments = [seg("Thank you.", 0, 2, confidence=0.9), seg("You", 2, 4, confidence=0.8)]
    out, removed = filter_hallucinations(segments, audio=audio)
    assert [s.text for s in out] == ["Thank you.", "You"]
    assert removed == 0


def test_filler_inside_real_speech_is_kept() -> None:
    out, _ = filter_hallucinations([seg("Thank you for coming, please subscribe to the newsletter.", confidence=0.2)])
    assert len(out) == 1


def test_empty_and_music_only_segments_dropped() -> None:
    out, removed = filter_hallucinations([seg("   "), seg("♪ ♪"), seg("..."), seg("Real words.")])
    assert [s.text for s in out] == ["Real words."]
    assert removed == 3


def test_looping_segments_keep_the_first() -> None:
    segments = (
        [seg("Okay, next item.", 0, 1)] + [seg("I'm not sure.", i, i + 1) for i in range(1, 7)] + [seg("Done.", 7, 8)]
    )
    out, removed = filter_hallucinations(segments)
    assert [s.text for s in out] == ["Okay, next item.", "I'm not sure.", "Done."]
    assert removed == 5
    # Three in a row is still plausible speech.
    out, removed = filter_hallucinations([seg("Yes.", i, i + 1) for i in range(3)])
    assert len(out) == 3 and removed == 0


def test_filler_detection() -> None:
    assert is_filler_text("Thank you.")
    assert is_filler_text("THANKS FOR WATCHING!")
    assert is_filler_text("Subtitles by Jane Doe")
    assert is_filler_text("Transcription by CastingWords")
    assert not is_filler_text("Thank you, Mr. President.")
    assert not is_filler_text("The subtitles were made by hand")
