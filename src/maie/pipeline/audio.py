"""Decode any audio or video file to 16 kHz mono float32 with PyAV (no system ffmpeg needed).

Decoding streams frame by frame into one growing buffer, so a long file is held in memory once
(plus at most one amortised growth step), never as a list of frames and a concatenated copy. Every
channel is mixed in (numpy, not FFmpeg's downmix); diarizing by channel keeps per-frame features of
each channel, never the channels' samples, so memory follows the duration alone.
"""

from __future__ import annotations

import logging
import struct
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import av
import numpy as np

from maie.errors import ErrorCode, MaieError
from maie.pipeline.channels import check_channels
from maie.pipeline.decoded import SAMPLE_RATE, DecodedAudio

if TYPE_CHECKING:
    from maie.pipeline.context import TaskContext

log = logging.getLogger(__name__)

TRUNCATED_RATIO = 0.9
"""Decoding less than this share of the declared duration counts as a truncated file."""
PROGRESS_STEPS = 20
"""Most progress reports sent while decoding one file."""
_MIN_CAPACITY = SAMPLE_RATE * 10


class _SampleBuffer:
    """A 1-D float32 buffer grown with amortised doubling and trimmed at the end.

    One array resized in place (``ndarray.resize`` reallocs), so growing and trimming a possibly
    hours-long recording never needs a second full copy.
    """

    def __init__(self, capacity: int) -> None:
        self.size = 0
        self._data = np.zeros(max(capacity, _MIN_CAPACITY), dtype=np.float32)

    def append(self, chunk: np.ndarray) -> None:
        needed = self.size + chunk.shape[0]
        if needed > self._data.shape[0]:
            self._data.resize(max(needed, 2 * self._data.shape[0]), refcheck=False)
        self._data[self.size : needed] = chunk
        self.size = needed

    def finish(self) -> np.ndarray:
        """The samples, exactly ``size`` long."""
        data, self._data = self._data, np.zeros(0, dtype=np.float32)
        data.resize(self.size, refcheck=False)
        return data


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
                    return float(size / byte_rate)
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
    max_channels: int | None = None,
    vad_mode: int = 3,
    max_seconds: float | None = None,
    min_seconds: float = 0.0,
    on_progress: Callable[[float], None] | None = None,
) -> DecodedAudio:
    """Decode the first audio stream of ``path`` to 16 kHz mono float32 (the mix of every channel).

    ``keep_channels``: also analyse each source channel for diarizing by channel (when the source
    has 2+ channels, at most ``max_channels``; ``vad_mode`` is webrtcvad's aggressiveness there).
    ``max_seconds``: stop as soon as more audio than this was decoded (AUDIO_TOO_LONG).
    ``on_progress``: called with the decoded fraction of the declared duration, at most ~20 times.
    Raises MaieError with AUDIO_DECODE_ERROR, AUDIO_NO_STREAM, AUDIO_TOO_MANY_CHANNELS, AUDIO_EMPTY,
    AUDIO_TOO_SHORT or AUDIO_TOO_LONG.
    """
    path = Path(path)
    with _open(path) as container:
        if not container.streams.audio:
            raise MaieError(ErrorCode.AUDIO_NO_STREAM, f"{path.name} has no audio stream")
        stream = container.streams.audio[0]
        source_channels = stream.codec_context.channels or 1
        check_channels(source_channels, by_channel=keep_channels, max_channels=max_channels)
        declared = _declared_duration(container, stream)
        if container.format.name == "wav":
            declared = _wav_declared_duration(path) or declared
        analyzer = None
        if keep_channels and source_channels >= 2:
            from maie.pipeline.diarization.channels import ChannelAnalyzer

            analyzer = ChannelAnalyzer(source_channels, vad_mode)
        # Packed float at 16 kHz in the source's own layout: FFmpeg only changes the rate, numpy
        # mixes. Asking FFmpeg for mono fails on 9+ channels of an unnamed layout ("Invalid
        # argument": the file then came back AUDIO_EMPTY) and drops channels past the 8th of a
        # 16-channel one; asking for planar output of 8+ channels crashed the worker (SIGSEGV):
        # PyAV's AudioFrame.planes counts planes by reading extended_data until a NULL that FFmpeg
        # never writes (8 planes: it reads linesize[0] as a 9th pointer). Packed output has one plane.
        resampler = av.AudioResampler(format="flt", layout=stream.codec_context.layout, rate=SAMPLE_RATE)
        limit = int(max_seconds * SAMPLE_RATE) if max_seconds is not None else None
        capacity = int(declared * SAMPLE_RATE * 1.02) + SAMPLE_RATE if declared else 0
        if limit is not None:
            capacity = min(capacity, limit + SAMPLE_RATE)
        buffer = _SampleBuffer(capacity)
        source_format = f"{container.format.name.split(',')[0]}/{stream.codec_context.name}"

        step = 1.0 / PROGRESS_STEPS
        next_report = step
        bad_packets = 0
        good_frames = 0
        channel_peaks = np.zeros(source_channels, dtype=np.float32)
        mix_peak = 0.0

        def push(frames: list[av.AudioFrame]) -> None:
            nonlocal next_report, mix_peak
            for out in frames:
                if out.layout.nb_channels != source_channels:
                    raise MaieError(
                        ErrorCode.AUDIO_DECODE_ERROR,
                        f"the channel count of {path.name} changes mid-stream "
                        f"({source_channels} -> {out.layout.nb_channels})",
                    )
                block = out.to_ndarray().reshape(-1, source_channels)
                if source_channels == 1:
                    buffer.append(block.reshape(-1))
                    continue
                if analyzer is not None:
                    analyzer.push(block)
                np.maximum(channel_peaks, np.abs(block).max(axis=0, initial=0.0), out=channel_peaks)
                mono = block.mean(axis=1, dtype=np.float32)
                mix_peak = max(mix_peak, float(np.abs(mono).max(initial=0.0)))
                buffer.append(mono)
            if limit is not None and buffer.size > limit:
                raise MaieError(
                    ErrorCode.AUDIO_TOO_LONG,
                    f"audio is longer than the limit of {(max_seconds or 0) / 60:g} minutes",
                )
            if on_progress and declared:
                fraction = buffer.size / SAMPLE_RATE / declared
                if fraction >= next_report:
                    on_progress(min(fraction, 1.0))
                    next_report = (int(fraction / step) + 1) * step

        def convert(frame: av.AudioFrame | None) -> list[av.AudioFrame]:
            # A conversion FFmpeg refuses is the file's fault, not a cut-off end: say so.
            try:
                return resampler.resample(frame)
            except (av.error.FFmpegError, ValueError) as exc:
                raise MaieError(
                    ErrorCode.AUDIO_DECODE_ERROR,
                    f"could not convert the {source_channels}-channel audio of {path.name}: {exc}",
                ) from None

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
                    push(convert(frame))
            push(convert(None))
        except av.error.FFmpegError as exc:
            if good_frames == 0:
                raise MaieError(ErrorCode.AUDIO_DECODE_ERROR, f"could not decode {path.name}: {exc}") from None
            # Demuxing broke off mid-file: keep what was decoded; the truncation check below warns.
            log.warning("decoding %s stopped early: %s", path.name, exc)

    if bad_packets:
        log.warning("skipped %d undecodable packets in %s", bad_packets, path.name)
    samples = buffer.finish()
    n = samples.shape[0]
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
    if source_channels > 2 and mix_peak > 0:
        # The mean of N tracks where one speaks is N times quieter than that track (30 dB for 32):
        # below VAD and ASR thresholds. Bring the mix back up, by at most N/2: one speaker among N
        # tracks then sits 6 dB below its track, as in a stereo mean, which stays as it is (both
        # channels usually carry the same programme, and webrtcvad downstream is level dependent).
        gain = min(float(channel_peaks.max()) / mix_peak, source_channels / 2)
        if gain > 1.0:
            samples *= gain
    return DecodedAudio(
        samples=samples,
        duration_s=duration,
        source_format=source_format,
        source_channels=source_channels,
        declared_duration_s=declared,
        channel_features=analyzer.finish() if analyzer is not None else None,
    )


def is_truncated(audio: DecodedAudio) -> bool:
    """The file decoded to clearly less than the duration its container declares."""
    declared = audio.declared_duration_s
    return declared is not None and declared > 0 and audio.duration_s < TRUNCATED_RATIO * declared


def decode_audio(ctx: TaskContext) -> DecodedAudio:
    """PREPROCESSING stage: decode ``ctx.audio_path``; a truncated file only adds a warning."""
    # Here, not at the top: the decoder child imports this module and needs no pydantic.
    from maie.schemas import TaskError, TaskStatus

    if ctx.audio_path is None:
        raise MaieError(ErrorCode.AUDIO_DECODE_ERROR, "the task has no audio file")
    ctx.report(TaskStatus.PREPROCESSING, 0.0)
    decode: Callable[..., DecodedAudio] = decode_file
    if ctx.settings.decode_in_subprocess:
        from maie.pipeline.decode_child import decode_isolated

        decode = decode_isolated
    audio = decode(
        ctx.audio_path,
        keep_channels=ctx.options.diarize_by_channel,
        max_channels=ctx.settings.diarization.max_channels,
        vad_mode=ctx.settings.diarization.vad_mode,
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
