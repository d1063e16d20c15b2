"""Recognise an audio (or audio-carrying) container from its first bytes, never from a file name.

``sniff_container(head)`` returns the extension the upload is stored under (``source.<ext>``) or
``None`` for anything that is not a container the decoder (FFmpeg via PyAV) can read audio from.
Video containers (mp4, mov, webm, mkv, wmv, avi, ts...) are accepted: they usually carry an audio track,
and one without audio fails later in the worker with ``AUDIO_NO_STREAM``.
"""

from __future__ import annotations

import struct

SNIFF_BYTES = 8192
"""Head bytes the sniffer wants; enough for two MPEG/ADTS frames and the EBML/ASF headers."""
MAX_SNIFF_BYTES = 256 * 1024
"""Most head bytes worth waiting for: an ID3 tag larger than this (cover art) is taken as MP3 unseen."""

# ftyp major brands of still-image formats built on the ISO base media file format.
_IMAGE_BRANDS = frozenset(
    {b"heic", b"heix", b"hevc", b"hevx", b"heim", b"heis", b"hevm", b"hevs", b"mif1", b"msf1", b"avif"}
    | {b"avis", b"avci", b"crx ", b"jp2 ", b"jpx ", b"jpm "}
)
_M4A_BRANDS = frozenset({b"M4A ", b"M4B ", b"M4P ", b"F4A ", b"F4B "})
# Classic QuickTime files may start with one of these atoms instead of ftyp.
_QT_ATOMS = frozenset({b"moov", b"mdat", b"wide", b"pnot"})

_ASF_HEADER = bytes.fromhex("3026b2758e66cf11a6d900aa0062ce6c")
_ASF_VIDEO_MEDIA = bytes.fromhex("c0ef19bc4d5bcf11a8fd00805f5c442b")
_W64_RIFF = bytes.fromhex("726966662e91cf11a5d628db04c10000")
_EBML = b"\x1a\x45\xdf\xa3"

# MPEG-1/2/2.5 audio: bitrates (kbit/s) by (is_mpeg1, layer) and sample rates by version bits.
_BITRATES: dict[tuple[bool, int], tuple[int, ...]] = {
    (True, 1): (0, 32, 64, 96, 128, 160, 192, 224, 256, 288, 320, 352, 384, 416, 448),
    (True, 2): (0, 32, 48, 56, 64, 80, 96, 112, 128, 160, 192, 224, 256, 320, 384),
    (True, 3): (0, 32, 40, 48, 56, 64, 80, 96, 112, 128, 160, 192, 224, 256, 320),
    (False, 1): (0, 32, 48, 56, 64, 80, 96, 112, 128, 144, 160, 176, 192, 224, 256),
    (False, 2): (0, 8, 16, 24, 32, 40, 48, 56, 64, 80, 96, 112, 128, 144, 160),
    (False, 3): (0, 8, 16, 24, 32, 40, 48, 56, 64, 80, 96, 112, 128, 144, 160),
}
_SAMPLE_RATES = {3: (44100, 48000, 32000), 2: (22050, 24000, 16000), 0: (11025, 12000, 8000)}


def _id3_end(head: bytes | bytearray) -> int | None:
    """Offset just past an ID3v2 tag at the start of ``head``; None when there is no valid tag."""
    if len(head) < 10 or head[:3] != b"ID3" or not 2 <= head[3] <= 4 or head[4] == 0xFF:
        return None
    size_bytes = head[6:10]
    if any(b & 0x80 for b in size_bytes):
        return None
    size = (size_bytes[0] << 21) | (size_bytes[1] << 14) | (size_bytes[2] << 7) | size_bytes[3]
    footer = 10 if head[5] & 0x10 else 0
    return 10 + size + footer


def head_bytes_wanted(head: bytes | bytearray) -> int:
    """How many head bytes ``sniff_container`` should see: more than ``SNIFF_BYTES`` only past ID3 tags."""
    offset = 0
    while (end := _id3_end(head[offset:])) is not None:
        offset += end
        if offset >= len(head):
            break
    return min(offset + SNIFF_BYTES, MAX_SNIFF_BYTES)


def _mpeg_frame(head: bytes, i: int) -> tuple[int, tuple[int, int, int]] | None:
    """(frame length, (version, layer, sample rate)) of an MPEG audio frame header at ``i``, or None."""
    if i + 4 > len(head) or head[i] != 0xFF or head[i + 1] & 0xE0 != 0xE0:
        return None
    b1, b2 = head[i + 1], head[i + 2]
    version = (b1 >> 3) & 3  # 3: MPEG-1, 2: MPEG-2, 0: MPEG-2.5, 1: reserved
    layer = 4 - ((b1 >> 1) & 3)  # bits 11/10/01 -> layer I/II/III; 00 (-> 4) is reserved (ADTS)
    bitrate_index, rate_index, padding = b2 >> 4, (b2 >> 2) & 3, (b2 >> 1) & 1
    if version == 1 or layer == 4 or bitrate_index in (0, 15) or rate_index == 3 or head[i + 3] & 3 == 2:
        return None
    mpeg1 = version == 3
    bitrate = _BITRATES[(mpeg1, layer)][bitrate_index] * 1000
    rate = _SAMPLE_RATES[version][rate_index]
    if layer == 1:
        length = (12 * bitrate // rate + padding) * 4
    elif layer == 3 and not mpeg1:
        length = 72 * bitrate // rate + padding
    else:
        length = 144 * bitrate // rate + padding
    return length, (version, layer, rate)


def _is_mpeg_audio(head: bytes) -> bool:
    first = _mpeg_frame(head, 0)
    if first is None:
        return False
    length, kind = first
    if length + 4 > len(head):  # a stream shorter than two frames: one valid header is all there is
        return True
    second = _mpeg_frame(head, length)
    return second is not None and second[1] == kind


def _adts_length(head: bytes, i: int) -> int | None:
    if i + 7 > len(head) or head[i] != 0xFF or head[i + 1] & 0xF6 != 0xF0:
        return None
    if (head[i + 2] >> 2) & 0xF >= 13:  # sampling frequency index
        return None
    length = ((head[i + 3] & 3) << 11) | (head[i + 4] << 3) | (head[i + 5] >> 5)
    return length if length >= 7 else None


def _is_adts(head: bytes) -> bool:
    length = _adts_length(head, 0)
    if length is None:
        return False
    return length + 7 > len(head) or _adts_length(head, length) is not None


def _ftyp(head: bytes) -> str | None:
    size = struct.unpack(">I", head[:4])[0]
    if size < 8 and size not in (0, 1):
        return None
    brand = head[8:12]
    if brand in _IMAGE_BRANDS:
        return None
    if brand in _M4A_BRANDS:
        return "m4a"
    if brand == b"qt  ":
        return "mov"
    if brand[:3] in (b"3gp", b"3g2", b"3ge", b"3gs"):
        return "3gp"
    return "mp4"


def _riff(head: bytes) -> str | None:
    form = head[8:12]
    if form == b"WAVE":
        return "wav"
    if form == b"AVI " and head[:4] == b"RIFF":
        return "avi"
    return None


def _is_mpeg_ts(head: bytes) -> bool:
    # Transport stream packets are 188 bytes, each starting with the 0x47 sync byte.
    return len(head) >= 188 * 3 and all(head[k] == 0x47 for k in range(0, 188 * 3, 188))


def _is_ac3(head: bytes) -> bool:
    # AC-3 / E-AC-3 sync word; fscod 3 is reserved only for AC-3 (bsid <= 10), bsid > 16 is not AC-3.
    if len(head) < 6 or head[:2] != b"\x0b\x77":
        return False
    bsid = head[5] >> 3
    if bsid > 16:
        return False
    return bsid > 10 or (head[4] >> 6 != 3 and head[4] & 0x3F < 38)


def sniff_container(head: bytes) -> str | None:
    """The container of an upload from its first bytes, as the extension to store it under.

    ``head`` should hold ``head_bytes_wanted(head)`` bytes (or the whole file if shorter). Returns one of
    wav, w64, aiff, flac, ogg, mp3, aac, m4a, mp4, mov, 3gp, webm, mkv, wma, wmv, amr, caf, au, ape, wv,
    mpc, tta, dsf, dff, ac3, dts, avi, flv, ts, mpg, rm; or None when the bytes are not such a container.
    """
    if len(head) < 4:
        return None
    magic4 = head[:4]

    if end := _id3_end(head):
        # An ID3v2 tag prefixes MP3 (and sometimes AAC or FLAC): look at what follows when it is here.
        rest = head[end:].lstrip(b"\x00")
        if len(rest) >= 4:
            inner = sniff_container(rest)
            if inner is not None:
                return inner
        return "mp3"
    if magic4 in (b"RIFF", b"RIFX", b"RF64", b"BW64"):
        return _riff(head)
    if head[:16] == _W64_RIFF:
        return "w64"
    if magic4 == b"FORM":
        if head[8:12] in (b"AIFF", b"AIFC"):
            return "aiff"
        return None
    if magic4 == b"fLaC":
        return "flac"
    if magic4 == b"OggS":
        return "ogg" if len(head) < 5 or head[4] == 0 else None
    if head[4:8] == b"ftyp":
        return _ftyp(head)
    if head[4:8] in _QT_ATOMS:
        return "mov"
    if magic4 == _EBML:
        window = head[:256]
        return "webm" if b"webm" in window else "mkv"
    if head[:16] == _ASF_HEADER:
        return "wmv" if _ASF_VIDEO_MEDIA in head else "wma"
    if head.startswith((b"#!AMR\n", b"#!AMR-WB\n", b"#!AMR_MC1.0\n", b"#!AMR-WB_MC1.0\n")):
        return "amr"
    if magic4 == b"caff" and head[4:6] == b"\x00\x01":
        return "caf"
    simple = {
        b".snd": "au",
        b"MAC ": "ape",
        b"wvpk": "wv",
        b"MPCK": "mpc",
        b"TTA1": "tta",
        b"DSD ": "dsf",
        b".RMF": "rm",
        b"ADIF": "aac",
        b"\x7f\xfe\x80\x01": "dts",
        b"\x00\x00\x01\xba": "mpg",
    }
    if magic4 in simple:
        return simple[magic4]
    if head[:3] == b"MP+":
        return "mpc"
    if magic4 == b"FRM8" and head[12:16] == b"DSD ":
        return "dff"
    if head[:3] == b"FLV" and len(head) > 4 and head[3] == 1:
        return "flv" if head[4] & 0x04 else None  # flag bit 2: the file has an audio stream
    if _is_adts(head):
        return "aac"
    if _is_mpeg_audio(head):
        return "mp3"
    if _is_ac3(head):
        return "ac3"
    if _is_mpeg_ts(head):
        return "ts"
    return None
