"""VAD: Silero (ONNX, from faster-whisper) finds the speech and honours the request's options."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from maie.config import Settings, VadSettings
from maie.pipeline.audio import decode_file
from maie.pipeline.context import SAMPLE_RATE, DecodedAudio
from maie.pipeline.vad import detect_speech


def with_audio(ctx, samples: np.ndarray):
    ctx.audio = DecodedAudio(
        samples=samples, duration_s=len(samples) / SAMPLE_RATE, source_format="test", source_channels=1
    )
    return ctx


@pytest.fixture(scope="module")
def jfk(shared_audio: Path) -> np.ndarray:
    return decode_file(shared_audio / "jfk.flac").samples


def test_speech_found_in_jfk(make_ctx, jfk: np.ndarray) -> None:
    speech = detect_speech(with_audio(make_ctx(), jfk))
    assert speech.enabled
    assert speech.regions, "JFK is speech"
    assert 0.6 < speech.coverage < 0.98  # pauses between phrases are not speech
    starts = [s for s, _ in speech.regions]
    assert starts == sorted(starts)
    for (start, end), following in zip(speech.regions, [*starts[1:], 11.0], strict=True):
        assert 0.0 <= start < end <= following <= 11.0


def test_silence_has_no_speech(make_ctx) -> None:
    rng = np.random.default_rng(1)
    quiet = (rng.standard_normal(10 * SAMPLE_RATE) * 1e-3).astype(np.float32)
    speech = detect_speech(with_audio(make_ctx(), quiet))
    assert speech.regions == []
    assert speech.coverage == 0.0


def test_speech_located_between_silences(make_ctx, jfk: np.ndarray) -> None:
    pad = np.zeros(5 * SAMPLE_RATE, np.float32)
    speech = detect_speech(with_audio(make_ctx(), np.concatenate([pad, jfk, pad])))
    assert speech.regions[0][0] > 4.5
    assert speech.regions[-1][1] < 16.5
    assert speech.coverage == pytest.approx(sum(e - s for s, e in speech.regions) / 21.0)


def test_disabled_covers_everything(make_ctx, jfk: np.ndarray) -> None:
    speech = detect_speech(with_audio(make_ctx(enable_vad=False), jfk))
    assert not speech.enabled
    assert speech.regions == [(0.0, 11.0)]
    assert speech.coverage == 1.0

    off_by_default = make_ctx(settings=Settings(vad=VadSettings(enabled=False)))
    assert not detect_speech(with_audio(off_by_default, jfk)).enabled
    # The request wins over the setting.
    forced_on = make_ctx(settings=Settings(vad=VadSettings(enabled=False)), enable_vad=True)
    assert detect_speech(with_audio(forced_on, jfk)).enabled


def test_threshold_and_silence_options(make_ctx, jfk: np.ndarray) -> None:
    default = detect_speech(with_audio(make_ctx(), jfk))
    strict = detect_speech(with_audio(make_ctx(vad_threshold=0.97), jfk))
    lenient = detect_speech(with_audio(make_ctx(vad_threshold=0.05), jfk))
    assert strict.coverage < default.coverage <= lenient.coverage

    merged = detect_speech(with_audio(make_ctx(settings=Settings(vad=VadSettings(min_silence_ms=3000))), jfk))
    assert len(merged.regions) < len(default.regions)
    unpadded = detect_speech(with_audio(make_ctx(settings=Settings(vad=VadSettings(speech_pad_ms=0))), jfk))
    assert unpadded.coverage < default.coverage
