"""Re-assembled time is exact and no word is lost or invented at block edges (real tiny.en, real speech).

A file of JFK's 11 s sentence repeated past several block lengths goes through the ASR stage in small
(30 s) blocks, with and without VAD. Every repetition must start where it is in the file, and the
number of words must match bare faster-whisper (``WhisperModel.transcribe``) on the same audio: a word
cut in two at a block edge would come back twice, and a filter that drops repeated sentences would
lose words.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

from maie.config import AsrSettings, Settings
from maie.pipeline.asr import transcribe
from maie.pipeline.asr import whisper as whisper_backend
from maie.pipeline.audio import decode_file
from maie.pipeline.context import SAMPLE_RATE, DecodedAudio, TaskContext, Transcript
from maie.pipeline.registry import ModelRegistry
from maie.pipeline.vad import detect_speech
from maie.schemas import TaskOptions

pytestmark = pytest.mark.slow

BLOCK_S = 30.0
REPEATS = 12
"""12 x 11 s = 132 s: four full 30 s blocks and a bit."""


def words(text: str) -> list[str]:
    return re.sub(r"[^a-z0-9' ]+", " ", text.lower()).split()


@pytest.fixture(scope="module")
def jfk(shared_audio: Path) -> np.ndarray:
    return decode_file(shared_audio / "jfk.flac").samples


@pytest.fixture(scope="module")
def registry() -> ModelRegistry:
    return ModelRegistry()


def stage(samples: np.ndarray, registry: ModelRegistry, *, vad: bool, block_s: float = BLOCK_S) -> Transcript:
    """The ASR stage as the pipeline runs it: VAD (or not), then blocks, backend, time map, filter."""
    ctx = TaskContext(
        task_id="edges",
        options=TaskOptions(enable_vad=vad, word_timestamps=True),
        settings=Settings(asr=AsrSettings(block_s=block_s)),
        models=registry,
    )
    ctx.audio = DecodedAudio(
        samples=samples, duration_s=len(samples) / SAMPLE_RATE, source_format="wav", source_channels=1
    )
    ctx.speech = detect_speech(ctx)
    return transcribe(ctx)


def bare_words(samples: np.ndarray, registry: ModelRegistry, *, vad: bool) -> list[str]:
    """faster-whisper alone on the same audio, with the decoding and VAD parameters MAIE uses."""
    settings = Settings()
    model = whisper_backend.get_model(registry, whisper_backend.resolve_spec(settings))
    segments, _ = model.model.transcribe(
        samples,
        language="en",
        beam_size=5,
        vad_filter=vad,
        vad_parameters={
            "threshold": settings.vad.threshold,
            "min_silence_duration_ms": settings.vad.min_silence_ms,
            "speech_pad_ms": settings.vad.speech_pad_ms,
        },
        condition_on_previous_text=False,
        temperature=list(whisper_backend.TEMPERATURES),
    )
    return words(" ".join(s.text for s in segments))


def repetition_starts(transcript: Transcript) -> list[float]:
    """Where each repetition is, by the start of its word "fellow" ("... my fellow Americans").

    An inner word, not the first: tiny.en puts the first word after a pause at the end of the pause
    (up to 0.8 s early, bare faster-whisper too), which would measure the model, not the time map.
    """
    return [
        w.start for s in transcript.segments for w in s.words or [] if re.sub(r"[^a-z]", "", w.word.lower()) == "fellow"
    ]


@pytest.mark.parametrize("vad", [False, True], ids=["vad-off", "vad-on"])
def test_repetitions_start_where_they_are_and_no_word_repeats_at_a_cut(
    jfk: np.ndarray, registry: ModelRegistry, vad: bool
) -> None:
    clip_s = len(jfk) / SAMPLE_RATE
    samples = np.tile(jfk, REPEATS)
    single = repetition_starts(stage(jfk, registry, vad=vad))
    assert len(single) == 1
    onset = single[0]  # where "fellow" starts inside one clip

    transcript = stage(samples, registry, vad=vad)
    starts = repetition_starts(transcript)
    expected = [k * clip_s + onset for k in range(REPEATS)]
    assert len(starts) == REPEATS, (starts, transcript.text)
    for got, want in zip(starts, expected, strict=True):
        assert abs(got - want) <= 0.3, (got, want)
    assert transcript.versions["decoding"].get("times_clamped", 0) == 0

    # No word doubled or lost at the cuts: the same count as faster-whisper on the whole file.
    ours, bare = words(transcript.text), bare_words(samples, registry, vad=vad)
    assert abs(len(ours) - len(bare)) <= 0.03 * len(bare), (len(ours), len(bare))
    for segment in transcript.segments:
        for word in segment.words or []:
            assert word.end - word.start < 2.0, word  # nothing stretched over a cut


def test_repeated_real_speech_survives_the_hallucination_filter(jfk: np.ndarray, registry: ModelRegistry) -> None:
    """JFK x 15 with the default blocks: the filter must not take a repeated real sentence for a loop."""
    samples = np.tile(jfk, 15)
    transcript = stage(samples, registry, vad=True, block_s=AsrSettings().block_s)
    ours, bare = words(transcript.text), bare_words(samples, registry, vad=True)
    assert abs(len(ours) - len(bare)) <= 0.03 * len(bare), (len(ours), len(bare))
    assert transcript.removed_hallucinations.get("repeat", 0) == 0
