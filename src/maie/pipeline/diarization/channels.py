"""Diarization by channel: a stereo (or multi-track) recording with one speaker per channel.

A channel talks where webrtcvad hears speech on it, it is within ``floor_db`` of that channel's
own loud speech, and it is within ``dominance_db`` of the loudest channel at that moment; the last
test drops cross-talk, the other speaker's voice bleeding quietly into this microphone. Two
channels loud at once is real overlap and gives overlapping turns.

The decoder feeds each block of samples to a ``ChannelAnalyzer`` as it goes, which keeps only
per-frame energy and speech flags: the channels' samples are never held, so memory follows the
duration of the recording, not channels x duration.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from maie.errors import ErrorCode, MaieError
from maie.pipeline.decoded import SAMPLE_RATE, ChannelFeatures
from maie.pipeline.diarization.speech import FRAME, FRAME_S, frames_to_regions, gate

MIN_TURN_S = 0.2
"""Shorter bursts on a channel (a cough, a click) are not turns."""
_FLUSH_SAMPLES = 200 * FRAME
"""Samples buffered before frames are analysed (6 s): few, large feature blocks instead of one per
decoded frame."""


class ChannelAnalyzer:
    """Per-channel energy and webrtcvad flags of 30 ms frames, fed block by block while decoding."""

    def __init__(self, channels: int, vad_mode: int) -> None:
        self.channels = channels
        try:
            import webrtcvad

            self._vads: list[Any] | None = [webrtcvad.Vad(vad_mode) for _ in range(channels)]
        except ImportError:  # the diarization extra is missing: diarize() says so
            self._vads = None
        self._pending: list[np.ndarray] = []
        self._pending_samples = 0
        self._energy: list[np.ndarray] = []
        self._speech: list[np.ndarray] = []

    def push(self, block: np.ndarray) -> None:
        """``block``: (samples, channels) float32 at 16 kHz (the decoder's packed layout)."""
        self._pending.append(block)
        self._pending_samples += block.shape[0]
        if self._pending_samples >= _FLUSH_SAMPLES:
            self._flush(final=False)

    def finish(self) -> ChannelFeatures:
        self._flush(final=True)
        energy = np.concatenate(self._energy, axis=1) if self._energy else np.zeros((self.channels, 0), np.float32)
        speech = None
        if self._vads is not None:
            speech = np.concatenate(self._speech, axis=1) if self._speech else np.zeros((self.channels, 0), bool)
        return ChannelFeatures(energy_db=energy, speech=speech)

    def _flush(self, *, final: bool) -> None:
        if not self._pending:
            return
        data = np.concatenate(self._pending, axis=0) if len(self._pending) > 1 else self._pending[0]
        frames = data.shape[0] // FRAME
        rest = data[frames * FRAME :]
        self._pending = [rest.copy()] if len(rest) and not final else []
        self._pending_samples = len(rest) if not final else 0
        if frames == 0:
            return
        # (channels, frames, FRAME), one contiguous copy of at most a few seconds
        whole = np.ascontiguousarray(data[: frames * FRAME].T).reshape(self.channels, frames, FRAME)
        self._energy.append((10 * np.log10(np.mean(whole**2, axis=2) + 1e-12)).astype(np.float32))
        if self._vads is None:
            return
        pcm = (np.clip(whole, -1.0, 1.0) * 32767).astype(np.int16)
        flags = np.zeros((self.channels, frames), dtype=bool)
        width = FRAME * 2
        for index, vad in enumerate(self._vads):
            raw = pcm[index].tobytes()
            for i in range(frames):
                flags[index, i] = vad.is_speech(raw[i * width : (i + 1) * width], SAMPLE_RATE)
        self._speech.append(flags)


def channel_turns(
    features: ChannelFeatures,
    *,
    floor_db: float,
    dominance_db: float,
    min_gap_s: float,
) -> list[tuple[float, float, int]]:
    """(start, end, channel index) turns, sorted by start."""
    if features.speech is None:
        raise MaieError(
            ErrorCode.DIARIZATION_FAILED,
            "diarizing by channel needs webrtcvad; install the maie[diarization] extra",
        )
    energies = features.energy_db
    if energies.shape[1] == 0:
        return []
    loudest = np.max(energies, axis=0)
    turns: list[tuple[float, float, int]] = []
    for index in range(features.channels):
        energy = energies[index]
        talking = gate(features.speech[index], energy, floor_db) & (energy >= loudest - dominance_db)
        for start, end in frames_to_regions(talking, min_gap_s):
            if end - start >= MIN_TURN_S:
                turns.append((start, min(end, len(talking) * FRAME_S), index))
    return sorted(turns)
