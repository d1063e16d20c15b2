"""What decoding gives: 16 kHz mono samples and, for diarizing by channel, per-channel features.

Only NumPy here: the decoder child imports this (through ``maie.pipeline.audio``) and starts sooner
without pydantic and the settings.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

SAMPLE_RATE = 16_000


@dataclass
class ChannelFeatures:
    """What diarizing by channel needs of each channel, per 30 ms frame, computed while decoding.

    The channels' samples themselves are never kept: a recording costs memory by its duration (the
    mono mix), not by channels x duration (seven channels of 2.5 hours were 4 GB as float32)."""

    energy_db: np.ndarray
    """(channels, frames) float32: mean-square energy of each frame in dB."""
    speech: np.ndarray | None
    """(channels, frames) bool: webrtcvad's speech flag per frame; None without webrtcvad installed."""

    @property
    def channels(self) -> int:
        return int(self.energy_db.shape[0])


@dataclass
class DecodedAudio:
    """Audio decoded to 16 kHz mono float32."""

    samples: np.ndarray
    duration_s: float
    source_format: str
    source_channels: int
    declared_duration_s: float | None = None
    channel_features: ChannelFeatures | None = None
    """Per-channel frame features, only when diarizing by channel a file of 2+ channels."""
