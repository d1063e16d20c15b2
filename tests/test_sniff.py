"""Container recognition from the first bytes: real recordings, re-encoded into each container, and
non-audio files that must be refused."""

from __future__ import annotations

import io
import random
import struct
import zipfile
import zlib
from pathlib import Path

import av
import numpy as np
import pytest

from maie.api.sniff import MAX_SNIFF_BYTES, SNIFF_BYTES, head_bytes_wanted, sniff_container


def _head(data: bytes) -> bytes:
    """What an upload would sniff: the first ``head_bytes_wanted`` bytes."""
    return data[: head_bytes_wanted(data)]


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("jfk.flac", "flac"),
        ("hotwords.mp3", "mp3"),
        ("multilingual.mp3", "mp3"),
        ("stereo_diarization.wav", "wav"),
        ("two_speakers_sample.wav", "wav"),
    ],
)
def test_reference_recordings(shared_audio: Path, name: str, expected: str) -> None:
    data = (shared_audio / name).read_bytes()
    assert sniff_container(_head(data)) == expected
    # a head cut short (a tiny upload) still names the container
    assert sniff_container(data[:64]) == expected


@pytest.fixture(scope="module")
def speech(shared_audio: Path) -> tuple[np.ndarray, int]:
    """Two seconds of jfk.flac as mono float samples."""
    with av.open(str(shared_audio / "jfk.flac")) as container:
        resampler = av.AudioResampler(format="flt", layout="mono", rate=16000)
        chunks = []
        for frame in container.decode(audio=0):
            chunks += [f.to_ndarray() for f in resampler.resample(frame)]
            if sum(c.shape[-1] for c in chunks) >= 32000:
                break
    return np.concatenate(chunks, axis=-1)[:, :32000], 16000


def _encode(
    speech: tuple[np.ndarray, int],
    fmt: str,
    codec: str,
    rate: int,
    sample_fmt: str,
    options: dict[str, str] | None = None,
) -> bytes:
    samples, src_rate = speech
    buf = io.BytesIO()
    with av.open(buf, "w", format=fmt, options=options or {}) as out:
        stream = out.add_stream(codec, rate=rate)
        stream.layout = "mono"
        stream.bit_rate = 32000  # some encoders (wmav2) have no default
        resampler = av.AudioResampler(format=sample_fmt, layout="mono", rate=rate)
        frame = av.AudioFrame.from_ndarray(samples, format="flt", layout="mono")
        frame.sample_rate = src_rate
        for source in (frame, None):
            for resampled in resampler.resample(source):
                out.mux(stream.encode(resampled))
        out.mux(stream.encode(None))
    return buf.getvalue()


ENCODINGS = [
    # (muxer, codec, rate, sample format, muxer options, expected)
    ("wav", "pcm_s16le", 16000, "s16", None, "wav"),
    ("wav", "pcm_s16le", 16000, "s16", {"rf64": "always"}, "wav"),
    ("w64", "pcm_s16le", 16000, "s16", None, "w64"),
    ("aiff", "pcm_s16be", 16000, "s16", None, "aiff"),
    ("flac", "flac", 16000, "s16", None, "flac"),
    ("ogg", "libopus", 48000, "s16", None, "ogg"),
    ("mp3", "libmp3lame", 16000, "s16p", None, "mp3"),
    ("mp3", "libmp3lame", 44100, "s16p", {"id3v2_version": "0"}, "mp3"),
    ("mp2", "mp2", 16000, "s16", None, "mp3"),
    ("adts", "aac", 16000, "fltp", None, "aac"),
    ("ipod", "aac", 16000, "fltp", None, "m4a"),
    ("mp4", "aac", 16000, "fltp", None, "mp4"),
    ("mov", "aac", 16000, "fltp", None, "mov"),
    ("3gp", "aac", 16000, "fltp", None, "3gp"),  # phones also put AMR in it: see test_amr_storage_format
    ("webm", "libopus", 48000, "s16", None, "webm"),
    ("matroska", "libopus", 48000, "s16", None, "mkv"),
    ("asf", "wmav2", 16000, "fltp", None, "wma"),
    ("caf", "alac", 16000, "s16p", None, "caf"),
    ("au", "pcm_mulaw", 16000, "s16", None, "au"),
    ("wv", "wavpack", 16000, "fltp", None, "wv"),
    ("tta", "tta", 16000, "s16", None, "tta"),
    ("ac3", "ac3", 48000, "fltp", None, "ac3"),
    ("flv", "libmp3lame", 44100, "s16p", None, "flv"),
    ("mpegts", "mp2", 48000, "s16", None, "ts"),
    ("mpeg", "mp2", 48000, "s16", None, "mpg"),
    ("avi", "pcm_s16le", 16000, "s16", None, "avi"),
]


@pytest.mark.parametrize(
    ("fmt", "codec", "rate", "sample_fmt", "options", "expected"),
    ENCODINGS,
    ids=[f"{e[0]}-{e[1]}{'-opts' if e[4] else ''}" for e in ENCODINGS],
)
def test_encoded_containers(
    speech: tuple[np.ndarray, int],
    fmt: str,
    codec: str,
    rate: int,
    sample_fmt: str,
    options: dict[str, str] | None,
    expected: str,
) -> None:
    data = _encode(speech, fmt, codec, rate, sample_fmt, options)
    assert sniff_container(_head(data)) == expected


def test_amr_storage_format() -> None:
    # Built by hand: PyAV 18.1.1's FFmpeg has no AMR encoder (libopencore_amrnb) to make one with.
    # RFC 4867 section 5: the magic, then frames; 0x3C heads a 12.2 kbit/s frame of 31 bytes.
    data = b"#!AMR\n" + (b"\x3c" + bytes(31)) * 50
    assert sniff_container(_head(data)) == "amr"
    with av.open(io.BytesIO(data)) as container:  # a real AMR file: FFmpeg decodes its second of audio
        stream = container.streams.audio[0]
        assert stream.codec_context.name == "amrnb"
        assert sum(frame.samples for frame in container.decode(stream)) == 8000


def _id3(payload_size: int) -> bytes:
    size = bytes(((payload_size >> s) & 0x7F) for s in (21, 14, 7, 0))
    return b"ID3\x04\x00\x00" + size + b"\x00" * payload_size


def test_id3_tag_is_skipped_to_the_real_stream(speech: tuple[np.ndarray, int]) -> None:
    adts = _encode(speech, "adts", "aac", 16000, "fltp")
    flac = _encode(speech, "flac", "flac", 16000, "s16")
    assert sniff_container(_id3(100) + adts) == "aac"
    assert sniff_container(_id3(100) + flac) == "flac"
    assert sniff_container(_id3(100) + _id3(50) + flac) == "flac"


def test_large_id3_tag_asks_for_a_longer_head(speech: tuple[np.ndarray, int]) -> None:
    flac = _encode(speech, "flac", "flac", 16000, "s16")
    data = _id3(100_000) + flac
    wanted = head_bytes_wanted(data[:SNIFF_BYTES])
    assert wanted == 100_010 + SNIFF_BYTES
    assert sniff_container(data[:SNIFF_BYTES]) == "mp3"  # tag only: assumed MP3
    assert sniff_container(data[:wanted]) == "flac"
    # cover art bigger than the sniff window is not waited for
    assert head_bytes_wanted(_id3(5_000_000)[:SNIFF_BYTES]) == MAX_SNIFF_BYTES


def _png() -> bytes:
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", 1, 1, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00\x00")) + chunk(b"IEND", b"")
    )


def _zip() -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as archive:
        archive.writestr("a.txt", "hello" * 100)
    return buf.getvalue()


def _ftyp(brand: bytes) -> bytes:
    return struct.pack(">I", 24) + b"ftyp" + brand + b"\x00\x00\x00\x00" + brand + b"mif1" + b"\x00" * 64


NOT_AUDIO = {
    "empty": b"",
    "tiny": b"ab",
    "text": b"Hello, this is a plain text file.\n" * 50,
    "html": b"<!DOCTYPE html><html><body>hi</body></html>",
    "json": b'{"file": "audio.wav"}',
    "png": _png(),
    "jpeg": b"\xff\xd8\xff\xe0\x00\x10JFIF\x00\x01\x01\x00\x00\x01\x00\x01\x00\x00" + b"\x00" * 200,
    "gif": b"GIF89a\x01\x00\x01\x00\x00\x00\x00;",
    "pdf": b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n1 0 obj\n<<>>\nendobj\n",
    "zip": _zip(),
    "gzip": b"\x1f\x8b\x08\x00" + b"\x00" * 100,
    "elf": b"\x7fELF\x02\x01\x01" + b"\x00" * 100,
    "heic": _ftyp(b"heic"),
    "avif": _ftyp(b"avif"),
    "webp": b"RIFF\x24\x00\x00\x00WEBPVP8 " + b"\x00" * 40,
    "bad-id3-size": b"ID3\x04\x00\x00\x80\x80\x80\x80" + b"\x00" * 100,
    "lone-frame-sync": b"\xff\xfb\x90\x64" + b"\x55" * 4000,
    "random": random.Random(7).randbytes(SNIFF_BYTES),
}


@pytest.mark.parametrize("name", sorted(NOT_AUDIO))
def test_not_audio(name: str) -> None:
    assert sniff_container(NOT_AUDIO[name]) is None
