"""How many channels a file may have: checked on the container header by the API at submit and by the
decoder. Apart from ``maie.pipeline.audio`` so that the API checks it without importing NumPy."""

from __future__ import annotations

from maie.errors import ErrorCode, MaieError

MAX_CHANNELS = 64
"""Most channels a file may have: FFmpeg's resampler takes at most 64 (SWR_CH_MAX); above, its
layouts are unnamed or missing and conversion fails."""


def check_channels(channels: int, *, by_channel: bool, max_channels: int | None) -> None:
    """Raise AUDIO_TOO_MANY_CHANNELS for more channels than decoding (``MAX_CHANNELS``) or, when
    diarizing by channel, ``max_channels`` allows. The API calls it on the header at submit."""
    if channels > MAX_CHANNELS:
        raise MaieError(
            ErrorCode.AUDIO_TOO_MANY_CHANNELS,
            f"the audio has {channels} channels; at most {MAX_CHANNELS} are supported",
        )
    if by_channel and max_channels is not None and channels > max_channels:
        raise MaieError(
            ErrorCode.AUDIO_TOO_MANY_CHANNELS,
            f"diarizing by channel takes at most {max_channels} channels; the audio has {channels}",
        )
