"""Decoding: every container to 16 kHz mono, and each failure to its stable code."""

from __future__ import annotations

import tracemalloc
import wave
from pathlib import Path

import av
import numpy as np
import pytest

from maie.config import Settings
from maie.errors import ErrorCode, MaieError
from maie.pipeline.audio import decode_audio, decode_file
from maie.pipeline.context import SAMPLE_RATE
from maie.schemas import TaskStatus

JFK_SECONDS = 11.0


@pytest.fixture(scope="module")
def jfk_pcm(shared_audio: Path) -> np.ndarray:
    return decode_file(shared_audio / "jfk.flac").samples


def encode(samples: np.ndarray, path: Path, fmt: str, codec: str, rate: int, video_codec: str | None = None) -> Path:
    """Write 16 kHz mono float samples with PyAV; optionally add a tiny black video stream."""
    with av.open(str(path), "w", format=fmt) as out:
        video = None
        if video_codec:
            video = out.add_stream(video_codec, rate=10)
            video.width, video.height, video.pix_fmt = 64, 64, "yuv420p"
        audio = out.add_stream(codec, rate=rate)
        audio.layout = "mono"
        resampler = av.AudioResampler(format=audio.codec_context.format.name, layout="mono", rate=rate)
        pcm = (samples * 32767).clip(-32768, 32767).astype(np.int16)
        step = SAMPLE_RATE // 10
        for index, start in enumerate(range(0, len(pcm), step)):
            frame = av.AudioFrame.from_ndarray(pcm[None, start : start + step], format="s16", layout="mono")
            frame.sample_rate = SAMPLE_RATE
            for resampled in resampler.resample(frame):
                out.mux(audio.encode(resampled))
            if video is not None:
                picture = av.VideoFrame.from_ndarray(np.zeros((64, 64, 3), np.uint8), format="rgb24")
                picture.pts = index
                out.mux(video.encode(picture))
        for resampled in resampler.resample(None):
            out.mux(audio.encode(resampled))
        out.mux(audio.encode(None))
        if video is not None:
            out.mux(video.encode(None))
    return path


VARIANTS = [
    ("wav", "wav", "pcm_s16le", 16000, None),
    ("mp3", "mp3", "libmp3lame", 22050, None),
    ("m4a", "ipod", "aac", 44100, None),
    ("aac", "adts", "aac", 44100, None),
    ("flac", "flac", "flac", 16000, None),
    ("ogg", "ogg", "libopus", 48000, None),
    ("opus", "opus", "libopus", 24000, None),
    ("webm", "webm", "libopus", 48000, None),
    ("mp4", "mp4", "aac", 44100, "libx264"),
    ("avi", "avi", "mp3", 44100, "mpeg4"),
]


@pytest.mark.parametrize(("ext", "fmt", "codec", "rate", "video"), VARIANTS, ids=[v[0] for v in VARIANTS])
def test_every_container_decodes_to_16k_mono(
    tmp_path: Path, jfk_pcm: np.ndarray, ext: str, fmt: str, codec: str, rate: int, video: str | None
) -> None:
    path = encode(jfk_pcm, tmp_path / f"jfk.{ext}", fmt, codec, rate, video)
    if video:
        with av.open(str(path)) as container:
            assert container.streams.video, "the variant must really carry a video stream"
    decoded = decode_file(path)
    assert decoded.samples.dtype == np.float32
    assert decoded.samples.ndim == 1
    assert decoded.duration_s == pytest.approx(JFK_SECONDS, abs=0.1)
    assert len(decoded.samples) == pytest.approx(JFK_SECONDS * SAMPLE_RATE, abs=0.1 * SAMPLE_RATE)
    assert decoded.source_channels == 1
    # Same speech, not silence: lossy codecs keep the envelope of the original.
    assert 0.3 < float(np.abs(decoded.samples).max()) < 1.5
    n = min(len(decoded.samples), len(jfk_pcm))
    env_a = np.abs(decoded.samples[:n]).reshape(-1, 1600)[: n // 1600].mean(axis=1)
    env_b = np.abs(jfk_pcm[:n]).reshape(-1, 1600)[: n // 1600].mean(axis=1)
    assert np.corrcoef(env_a, env_b)[0, 1] > 0.9


def test_reference_files(shared_audio: Path) -> None:
    jfk = decode_file(shared_audio / "jfk.flac")
    assert jfk.duration_s == pytest.approx(11.0, abs=0.01)
    assert jfk.source_format == "flac/flac"
    assert jfk.declared_duration_s == pytest.approx(11.0, abs=0.01)
    mp3 = decode_file(shared_audio / "multilingual.mp3")
    assert mp3.duration_s == pytest.approx(59.9, abs=0.2)
    assert mp3.channel_features is None


def test_stereo_channels_kept_only_when_asked(shared_audio: Path, make_ctx) -> None:
    path = shared_audio / "stereo_diarization.wav"
    plain = decode_audio(make_ctx(path))
    assert plain.channel_features is None
    assert plain.source_channels == 2

    audio = decode_audio(make_ctx(path, diarize_by_channel=True))
    features = audio.channel_features
    assert features is not None and features.speech is not None
    assert features.energy_db.shape == features.speech.shape == (2, 5 * SAMPLE_RATE // 480)
    assert len(audio.samples) == 5 * SAMPLE_RATE
    # A different speaker on each channel: each channel is loud where the other is not.
    left, right = features.energy_db
    assert abs(np.corrcoef(left, right)[0, 1]) < 0.5
    # The mix is the same with or without the per-channel analysis: the mean of both channels.
    np.testing.assert_allclose(audio.samples, plain.samples, atol=1e-6)
    with av.open(str(path)) as c:
        pcm = np.concatenate([f.to_ndarray().reshape(-1, 2) for f in c.decode(audio=0)]).astype(np.float32) / 32768
    np.testing.assert_allclose(audio.samples, pcm.mean(axis=1), atol=1e-4)


def test_progress_reported_at_most_about_20_times(shared_audio: Path, make_ctx) -> None:
    seen: list[tuple[TaskStatus, float]] = []
    ctx = make_ctx(shared_audio / "multilingual.mp3", report=lambda s, f: seen.append((s, f)))
    decode_audio(ctx)
    fractions = [f for s, f in seen if s == TaskStatus.PREPROCESSING]
    assert 10 <= len(fractions) <= 23
    assert fractions == sorted(fractions)
    assert fractions[-1] == 1.0


def test_decoding_holds_the_samples_about_once(shared_audio: Path) -> None:
    """Streaming into one pre-sized buffer: peak memory is close to the result, not 2x or more."""
    tracemalloc.start()
    try:
        audio = decode_file(shared_audio / "multilingual.mp3")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 1.3 * audio.samples.nbytes + 512 * 1024, (peak, audio.samples.nbytes)


def test_not_audio_is_decode_error(tmp_path: Path) -> None:
    junk = tmp_path / "notes.mp3"
    junk.write_bytes(b"this is a text file, not audio\n" * 200)
    with pytest.raises(MaieError) as err:
        decode_file(junk)
    assert err.value.code == ErrorCode.AUDIO_DECODE_ERROR


def test_video_without_audio_is_no_stream(tmp_path: Path) -> None:
    path = tmp_path / "silent_film.mp4"
    with av.open(str(path), "w") as out:
        video = out.add_stream("libx264", rate=10)
        video.width, video.height, video.pix_fmt = 64, 64, "yuv420p"
        for i in range(10):
            picture = av.VideoFrame.from_ndarray(np.zeros((64, 64, 3), np.uint8), format="rgb24")
            picture.pts = i
            out.mux(video.encode(picture))
        out.mux(video.encode(None))
    with pytest.raises(MaieError) as err:
        decode_file(path)
    assert err.value.code == ErrorCode.AUDIO_NO_STREAM


def test_zero_samples_is_empty(tmp_path: Path) -> None:
    path = tmp_path / "empty.wav"
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(16000)
    with pytest.raises(MaieError) as err:
        decode_file(path)
    assert err.value.code == ErrorCode.AUDIO_EMPTY


@pytest.mark.parametrize(
    ("ext", "fmt", "codec", "rate"), [("wav", "wav", "pcm_s16le", 16000), ("mp3", "mp3", "libmp3lame", 22050)]
)
def test_truncated_file_warns_but_decodes(
    tmp_path: Path, jfk_pcm: np.ndarray, make_ctx, ext: str, fmt: str, codec: str, rate: int
) -> None:
    full = encode(jfk_pcm, tmp_path / f"full.{ext}", fmt, codec, rate)
    cut = tmp_path / f"cut.{ext}"
    data = full.read_bytes()
    cut.write_bytes(data[: int(len(data) * 0.4)])

    ctx = make_ctx(cut)
    audio = decode_audio(ctx)
    assert audio.duration_s == pytest.approx(0.4 * JFK_SECONDS, abs=0.6)
    assert audio.declared_duration_s == pytest.approx(JFK_SECONDS, abs=0.1)
    assert [w.code for w in ctx.warnings] == ["AUDIO_TRUNCATED"]
    assert ctx.warnings[0].stage == "PREPROCESSING"

    whole = make_ctx(full)
    decode_audio(whole)
    assert whole.warnings == []


def test_too_long_stops_early(shared_audio: Path, make_ctx) -> None:
    seen: list[float] = []
    settings = Settings(max_audio_minutes=0.1)  # 6 s; the file is 60 s
    ctx = make_ctx(shared_audio / "multilingual.mp3", settings=settings, report=lambda s, f: seen.append(f))
    with pytest.raises(MaieError) as err:
        decode_audio(ctx)
    assert err.value.code == ErrorCode.AUDIO_TOO_LONG
    # Decoding stopped as soon as the limit was crossed, not after reading the whole file.
    assert max(seen) < 0.2


def test_too_short(shared_audio: Path, make_ctx) -> None:
    ctx = make_ctx(shared_audio / "jfk.flac", settings=Settings(min_audio_seconds=20))
    with pytest.raises(MaieError) as err:
        decode_audio(ctx)
    assert err.value.code == ErrorCode.AUDIO_TOO_SHORT
