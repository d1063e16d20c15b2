"""The header probe at submit: a WAV is read from its header alone, with what FFmpeg's full probe finds."""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pytest

from maie.api.sniff import sniff_container
from maie.api.submission import probe_duration
from maie.errors import ErrorCode, MaieError


def wav(path: Path, *, rate: int, channels: int, seconds: float, extra_chunk: bool = False, bits: int = 16) -> Path:
    """A PCM WAV written byte by byte, optionally with a LIST chunk between ``fmt `` and ``data``."""
    frames = int(rate * seconds)
    width = bits // 8
    rng = np.random.default_rng(7)
    data = (rng.standard_normal(frames * channels) * 2000).astype("<i2").tobytes()
    if width == 3:
        samples = rng.integers(-(2**20), 2**20, frames * channels).astype("<i4")
        data = samples.view(np.uint8).reshape(-1, 4)[:, :3].tobytes()  # the low 3 bytes of each
    fmt = struct.pack("<HHIIHH", 1, channels, rate, rate * channels * width, channels * width, bits)
    chunks = b"fmt " + struct.pack("<I", len(fmt)) + fmt
    if extra_chunk:
        info = b"INFOISFT" + struct.pack("<I", 6) + b"maie\x00\x00"
        chunks += b"LIST" + struct.pack("<I", len(info)) + info
    chunks += b"data" + struct.pack("<I", len(data)) + data
    path.write_bytes(b"RIFF" + struct.pack("<I", 4 + len(chunks)) + b"WAVE" + chunks)
    return path


def full_probe(path: Path) -> float | None:
    return probe_duration(path)


@pytest.mark.parametrize(
    ("rate", "channels", "seconds", "extra", "bits"),
    [(16000, 1, 32.0, False, 16), (44100, 2, 3.5, True, 16), (48000, 6, 1.25, False, 24), (8000, 1, 0.05, True, 16)],
)
def test_header_probe_of_a_wav_finds_what_the_full_probe_finds(
    tmp_path: Path, rate: int, channels: int, seconds: float, extra: bool, bits: int
) -> None:
    path = wav(tmp_path / "a.wav", rate=rate, channels=channels, seconds=seconds, extra_chunk=extra, bits=bits)
    assert sniff_container(path.read_bytes()[:4096]) == "wav"
    header = probe_duration(path, sniffed="wav")
    assert header == pytest.approx(full_probe(path), abs=1e-3)
    assert header == pytest.approx(seconds, abs=1e-3)


@pytest.mark.parametrize("name", ["stereo_diarization.wav", "two_speakers_sample.wav"])
def test_header_probe_of_the_reference_wavs(shared_audio: Path, name: str) -> None:
    path = shared_audio / name
    assert probe_duration(path, sniffed="wav") == pytest.approx(full_probe(path), abs=1e-3)


def test_header_probe_still_refuses_too_many_channels(tmp_path: Path) -> None:
    path = wav(tmp_path / "six.wav", rate=16000, channels=6, seconds=0.5)
    with pytest.raises(MaieError) as refused:
        probe_duration(path, sniffed="wav", by_channel=True, max_channels=4)
    assert refused.value.code == ErrorCode.AUDIO_TOO_MANY_CHANNELS
    assert "at most 4" in refused.value.message


def test_header_probe_refuses_a_wav_header_with_no_audio_after_it(tmp_path: Path) -> None:
    path = tmp_path / "broken.wav"
    path.write_bytes(b"RIFF\x24\x00\x00\x00WAVEjunk")
    with pytest.raises(MaieError) as refused:
        probe_duration(path, sniffed="wav")
    assert refused.value.code == ErrorCode.UNSUPPORTED_MEDIA_TYPE
