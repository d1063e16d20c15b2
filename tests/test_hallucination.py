"""Hallucination filtering: loops collapse, fillers go only when suspicious, real speech stays."""

from __future__ import annotations

import numpy as np

from maie.pipeline.asr.hallucination import (
    HallucinationFilter,
    collapse_loops,
    filter_hallucinations,
    is_filler_text,
    normalise,
)
from maie.pipeline.context import SegmentSignals
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
    assert removed == {"loop": 1}


def test_phrase_loop_collapses() -> None:
    text = "and then I said " + "we can do it " * 5 + "tomorrow."
    out, removed = filter_hallucinations([seg(text)])
    assert out[0].text == "and then I said we can do it tomorrow."
    assert removed == {"loop": 1}


def test_short_repeats_are_real_speech() -> None:
    texts = ["No, no, no, that's wrong.", "It was very very good.", "Go go go!"]
    out, removed = filter_hallucinations([seg(t) for t in texts])
    assert [s.text for s in out] == texts
    assert removed == {}


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
    assert removed == {"loop": 1}


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
    assert removed == {"filler": 5}


def test_fillers_dropped_in_near_silence_even_if_confident() -> None:
    audio = np.concatenate([speech_like(2.0), np.full(2 * RATE, 1e-4, np.float32)])
    segments = [seg("Let us begin.", 0, 2, confidence=0.9), seg("Thank you.", 2, 4, confidence=0.95)]
    out, removed = filter_hallucinations(segments, audio=audio)
    assert [s.text for s in out] == ["Let us begin."]
    assert removed == {"filler": 1}


def test_clear_confident_filler_in_speech_is_kept() -> None:
    audio = speech_like(4.0)
    segments = [seg("Thank you.", 0, 2, confidence=0.9), seg("You", 2, 4, confidence=0.8)]
    out, removed = filter_hallucinations(segments, audio=audio)
    assert [s.text for s in out] == ["Thank you.", "You"]
    assert removed == {}


def test_filler_inside_real_speech_is_kept() -> None:
    out, _ = filter_hallucinations([seg("Thank you for coming, please subscribe to the newsletter.", confidence=0.2)])
    assert len(out) == 1


def test_empty_and_music_only_segments_dropped() -> None:
    out, removed = filter_hallucinations([seg("   "), seg("♪ ♪"), seg("..."), seg("Real words.")])
    assert [s.text for s in out] == ["Real words."]
    assert removed == {"empty": 3}


def test_looping_segments_the_model_invented_keep_the_first() -> None:
    """A repeat goes when Whisper's signals say it was made up: an unsure decoding loop (high
    compression ratio, low log-prob) or a window the model itself thought silent (high no-speech
    probability, low log-prob)."""
    looped = SegmentSignals(no_speech_prob=0.1, avg_logprob=-1.3, compression_ratio=3.1)
    silent = SegmentSignals(no_speech_prob=0.9, avg_logprob=-1.4, compression_ratio=1.2)
    spoken = SegmentSignals(no_speech_prob=0.01, avg_logprob=-0.2, compression_ratio=1.3)
    segments = (
        [seg("Okay, next item.", 0, 1)] + [seg("I'm not sure.", i, i + 1) for i in range(1, 7)] + [seg("Done.", 7, 8)]
    )
    signals = [spoken, spoken, looped, silent, looped, silent, looped, spoken]
    out, removed = filter_hallucinations(segments, signals=signals)
    assert [s.text for s in out] == ["Okay, next item.", "I'm not sure.", "Done."]
    assert removed == {"repeat": 5}


def test_repeats_over_silence_or_outside_vad_speech_go() -> None:
    audio = np.concatenate([speech_like(2.0), np.full(6 * RATE, 1e-4, np.float32)])
    segments = [seg("Is anyone there?", i * 2, i * 2 + 2) for i in range(4)]
    out, removed = filter_hallucinations(segments, audio=audio)
    assert [s.start for s in out] == [0.0] and removed == {"repeat": 3}
    # VAD found speech only in the first two seconds: the later repeats have none under them.
    out, removed = filter_hallucinations(segments, audio=speech_like(8.0), speech=[(0.0, 2.0)])
    assert [s.start for s in out] == [0.0] and removed == {"repeat": 3}


def test_repeated_real_speech_is_never_dropped_for_repeating() -> None:
    """A sentence said again and again (a chant, a refrain, a test recording) is real speech: confident,
    over loud audio, inside VAD speech. Repetition alone removes nothing."""
    # A window of one sentence said three times compresses like a loop: not evidence on its own.
    spoken = SegmentSignals(no_speech_prob=0.01, avg_logprob=-0.2, compression_ratio=2.9)
    segments = [seg("I'm not sure.", i, i + 1) for i in range(8)]
    out, removed = filter_hallucinations(segments, signals=[spoken] * 8, audio=speech_like(8.0), speech=[(0.0, 8.0)])
    assert len(out) == 8 and removed == {}
    # Without any evidence at all (no signals, no audio) nothing is removed either.
    out, removed = filter_hallucinations(segments)
    assert len(out) == 8 and removed == {}


def test_filler_detection() -> None:
    assert is_filler_text("Thank you.")
    assert is_filler_text("THANKS FOR WATCHING!")
    assert is_filler_text("Subtitles by Jane Doe")
    assert is_filler_text("Transcription by CastingWords")
    assert not is_filler_text("Thank you, Mr. President.")
    assert not is_filler_text("The subtitles were made by hand")


def test_streaming_filter_passes_segments_on_as_soon_as_they_are_decided() -> None:
    """Fed one segment at a time (as ASR decodes), the filter gives exactly the batch result, and a
    segment waits only while it is a repeat in a run still too short to call a loop."""
    looped = SegmentSignals(no_speech_prob=0.1, avg_logprob=-1.3, compression_ratio=3.1)
    spoken = SegmentSignals(no_speech_prob=0.01, avg_logprob=-0.2, compression_ratio=1.3)
    texts = ["Okay.", "Next item.", "I'm not sure.", "I'm not sure.", "Thank you.", "I'm not sure.", "Hmm."]
    texts += ["I'm not sure."] * 4 + ["Done.", "No, no, no.", "No, no, no.", "♪"]
    segments = [seg(t, i, i + 1, confidence=0.3 if t == "Thank you." else 0.9) for i, t in enumerate(texts)]
    signals = [looped if i in (8, 9) else spoken for i in range(len(segments))]
    expected = filter_hallucinations(segments, signals=signals)

    stream = HallucinationFilter()
    decided_at: list[tuple[int, str]] = []
    for i, (segment, signal) in enumerate(zip(segments, signals, strict=True)):
        decided_at += [(i, s.text) for s in stream.feed(segment, signal)]
    decided_at += [(len(segments), s.text) for s in stream.flush()]
    assert [text for _, text in decided_at] == [s.text for s in expected[0]]
    assert stream.removed == expected[1] == {"filler": 1, "repeat": 2, "empty": 1}
    # Every segment that starts a run comes out the moment it is fed; held repeats come out when the
    # run ends ("I'm not sure." twice, the filler between does not break it) or reaches a loop.
    assert decided_at[:3] == [(0, "Okay."), (1, "Next item."), (2, "I'm not sure.")]
    assert (6, "I'm not sure.") in decided_at and (6, "Hmm.") in decided_at
    assert (10, "I'm not sure.") in decided_at  # the fourth of a run: a loop, decided there
    assert decided_at[-2:] == [(12, "No, no, no."), (len(segments), "No, no, no.")]
