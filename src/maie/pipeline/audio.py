"""Decode any audio or video file to 16 kHz mono float32 with PyAV (no system ffmpeg needed).

Decoding streams frame by frame into one growing buffer, so a long file is held in memory once
(plus at most one amortised growth step), never as a list of frames and a concatenated copy.
"""

from __future__ import annotations

import logging
import struct
from collections.abc import Callable
from pathlib import Path

import av
import numpy as np

from maie.errors import ErrorCode, MaieError
from maie.pipeline.context import SAMPLE_RATE, DecodedAudio, TaskContext
from maie.schemas import TaskError, TaskStatus

log = logging.getLogger(__name__)

TRUNCATED_RATIO = 0.9
"""Decoding less than this share of the declared duration counts as a truncated file."""
PROGRESS_STEPS = 20
"""Most progress reports sent while decoding one file."""
_MIN_CAPACITY = SAMPLE_RATE * 10


class _SampleBuffer:
    """A (channels, n) float32 buffer grown with amortised doubling and trimmed at the end.

    Mono (the common, possibly hours-long case) lives in one 1-D array resized in place
    (``ndarray.resize`` reallocs), so growing and trimming never need a second full copy.
    """

    def __init__(self, channels: int, capacity: int) -> None:
        self.channels = channels
        self.size = 0
        self._data = np.zeros(channels * max(capacity, _MIN_CAPACITY), dtype=np.float32)

    @property
    def _capacity(self) -> int:
        return self._data.shape[0] // self.channels

    def append(self, chunk: np.ndarray) -> None:
        n = chunk.shape[-1]
        needed = self.size + n
        if needed > self._capacity:
            self._grow(max(needed, 2 * self._capacity))
        if self.channels == 1:
            self._data[self.size : needed] = chunk.reshape(-1)
        else:
            self._data.reshape(self.channels, -1)[:, self.size : needed] = chunk
        self.size = needed

    def _grow(self, capacity: int) -> None:
        if self.channels == 1:
            self._data.resize(capacity, refcheck=False)
            return
        grown = np.zeros((self.channels, capacity), dtype=np.float32)
        grown[:, : self.size] = self._data.reshape(self.channels, -1)[:, : self.size]
        self._data = grown.reshape(-1)

    def finish(self) -> list[np.ndarray]:
        """One array per channel, exactly ``size`` samples long."""
        data, self._data = self._data, np.zeros(0, dtype=np.float32)
        if self.channels == 1:
            data.resize(self.size, refcheck=False)
            return [data]
        # Views of the (pre-sized, so barely larger) buffer: no copy of all channels.
        return list(data.reshape(self.channels, -1)[:, : self.size])


def _declared_duration(container: av.container.InputContainer, stream: av.audio.AudioStream) -> float | None:
    if stream.duration is not None and stream.time_base is not None:
        seconds = float(stream.duration * stream.time_base)
        if seconds > 0:
            return seconds
    if container.duration is not None and container.duration > 0:
        return container.duration / av.time_base
    return None


def _wav_declared_duration(path: Path) -> float | None:
    """Duration the RIFF header of a WAV file declares.

    ffmpeg clamps a WAV's duration to the bytes actually present, which hides truncation; the
    ``data`` chunk size in the header still says how long the file was meant to be.
    """
    try:
        with path.open("rb") as f:
            head = f.read(12)
            if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"WAVE":
                return None
            byte_rate = 0
            while chunk := f.read(8):
                if len(chunk) < 8:
                    return None
                size = struct.unpack("<I", chunk[4:])[0]
                if chunk[:4] == b"fmt ":
                    fmt = f.read(size + (size & 1))
                    byte_rate = struct.unpack("<I", fmt[8:12])[0] if len(fmt) >= 12 else 0
                elif chunk[:4] == b"data":
                    # 0 and 0xFFFFFFFF mean "unknown" (streamed or RF64 files).
                    if not byte_rate or size in (0, 0xFFFFFFFF):
                        return None
                    return size / byte_rate
                else:
                    f.seek(size + (size & 1), 1)
    except OSError:
        return None
    return None


def _open(path: Path) -> av.container.InputContainer:
    try:
        return av.open(str(path), mode="r", metadata_errors="ignore")
    except FileNotFoundError:
        raise MaieError(ErrorCode.AUDIO_DECODE_ERROR, f"audio file not found: {path.name}") from None
    except (av.error.FFmpegError, UnicodeDecodeError, ValueError) as exc:
        raise MaieError(ErrorCode.AUDIO_DECODE_ERROR, f"could not read {path.name} as audio or video: {exc}") from None


def decode_file(
    path: Path,
    *,
    keep_channels: bool = False,
    max_seconds: float | None = None,
    min_seconds: float = 0.0,
    on_progress: Callable[[float], None] | None = None,
) -> DecodedAudio:
    """Decode the first audio stream of ``path`` to 16 kHz mono float32.

    ``keep_channels``: also return each source channel at 16 kHz (when the source has 2+ channels).
    ``max_seconds``: stop as soon as more audio than this was decoded (AUDIO_TOO_LONG).
    ``on_progress``: called with the decoded fraction of the declared duration, at most ~20 times.
    Raises MaieError with AUDIO_DECODE_ERROR, AUDIO_NO_STREAM, AUDIO_EMPTY, AUDIO_TOO_SHORT or
    AUDIO_TOO_LONG.
    """
    path = Path(path)
    with _open(path) as container:
        if not container.streams.audio:
            raise MaieError(ErrorCode.AUDIO_NO_STREAM, f"{path.name} has no audio stream")
        stream = container.streams.audio[0]
        source_channels = stream.codec_context.channels or 1
        declared = _declared_duration(container, stream)
        if container.format.name == "wav":
            declared = _wav_declared_duration(path) or declared
        per_channel = keep_channels and source_channels >= 2
        out_channels = source_channels if per_channel else 1
        # Planar float at 16 kHz: mono for the usual case, every channel when diarizing by channel
        # (mono is then the plain mean of the channels; ffmpeg's own downmix is a little louder).
        resampler = av.AudioResampler(
            format="fltp",
            layout=stream.codec_context.layout if per_channel else "mono",
            rate=SAMPLE_RATE,
        )
        limit = int(max_seconds * SAMPLE_RATE) if max_seconds is not None else None
        capacity = int(declared * SAMPLE_RATE * 1.02) + SAMPLE_RATE if declared else 0
        if limit is not None:
            capacity = min(capacity, limit + SAMPLE_RATE)
        buffer = _SampleBuffer(out_channels, capacity)
        source_format = f"{container.format.name.split(',')[0]}/{stream.codec_context.name}"

        step = 1.0 / PROGRESS_STEPS
        next_report = step
        bad_packets = 0
        good_frames = 0

        def push(frames: list[av.AudioFrame]) -> None:
            nonlocal next_report
            for out in frames:
                buffer.append(out.to_ndarray().reshape(out_channels, -1))
            if limit is not None and buffer.size > limit:
                raise MaieError(
                    ErrorCode.AUDIO_TOO_LONG,
                    f"audio is longer than the limit of {max_seconds / 60:g} minutes",
                )
            if on_progress and declared:
                fraction = buffer.size / SAMPLE_RATE / declared
                if fraction >= next_report:
                    on_progress(min(fraction, 1.0))
                    next_report = (int(fraction / step) + 1) * step

        try:
            for packet in container.demux(stream):
                try:
                    frames = packet.decode()
                except av.error.InvalidDataError:
                    # A damaged packet (typically the cut end of a truncated file): skip it.
                    bad_packets += 1
                    continue
                for frame in frames:
                    good_frames += 1
                    push(resampler.resample(frame))
            push(resampler.resample(None))
        except av.error.FFmpegError as exc:
            if good_frames == 0:
                raise MaieError(ErrorCode.AUDIO_DECODE_ERROR, f"could not decode {path.name}: {exc}") from None
            # Demuxing broke off mid-file: keep what was decoded; the truncation check below warns.
            log.warning("decoding %s stopped early: %s", path.name, exc)

    if bad_packets:
        log.warning("skipped %d undecodable packets in %s", bad_packets, path.name)
    data = buffer.finish()
    n = data[0].shape[0]
    if n == 0:
        if bad_packets:
            raise MaieError(ErrorCode.AUDIO_DECODE_ERROR, f"no packet of {path.name} could be decoded")
        raise MaieError(ErrorCode.AUDIO_EMPTY, f"{path.name} contains no audio samples")
    duration = n / SAMPLE_RATE
    if duration < min_seconds:
        raise MaieError(
            ErrorCode.AUDIO_TOO_SHORT,
            f"audio is {duration:.2f} s long; the shortest accepted is {min_seconds:g} s",
        )
    if per_channel:
        channels = data
        samples = channels[0].copy()
        for channel in channels[1:]:
            samples += channel
        samples /= len(channels)
    else:
        channels = None
        samples = data[0]
    return DecodedAudio(
        samples=samples,
        duration_s=duration,
        source_format=source_format,
        source_channels=source_channels,
        declared_duration_s=declared,
        channels=channels,
    )


def is_truncated(audio: DecodedAudio) -> bool:
    """The file decoded to clearly less than the duration its container declares."""
    declared = audio.declared_duration_s
    return bool(declared) and audio.duration_s < TRUNCATED_RATIO * declared


def decode_audio(ctx: TaskContext) -> DecodedAudio:
    """PREPROCESSING stage: decode ``ctx.audio_path``; a truncated file only adds a warning."""
    if ctx.audio_path is None:
        raise MaieError(ErrorCode.AUDIO_DECODE_ERROR, "the task has no audio file")
    ctx.report(TaskStatus.PREPROCESSING, 0.0)
    audio = decode_file(
        ctx.audio_path,
        keep_channels=ctx.options.diarize_by_channel,
        max_seconds=ctx.settings.max_audio_minutes * 60,
        min_seconds=ctx.settings.min_audio_seconds,
        on_progress=lambda fraction: ctx.report(TaskStatus.PREPROCESSING, fraction),
    )
    if is_truncated(audio):
        ctx.warnings.append(
            TaskError(
                code=ErrorCode.AUDIO_TRUNCATED.value,
                message=(
                    f"the file declares {audio.declared_duration_s:.1f} s of audio but only "
                    f"{audio.duration_s:.1f} s could be decoded; it may be truncated"
                ),
                stage=TaskStatus.PREPROCESSING.value,
            )
        )
    ctx.report(TaskStatus.PREPROCESSING, 1.0)
    return audio
