"""Diarization by channel: a stereo (or multi-track) recording with one speaker per channel.

A channel talks where webrtcvad hears speech on it, it is within ``floor_db`` of that channel's
own loud speech, and it is within ``dominance_db`` of the loudest channel at that moment; the last
test drops cross-talk, the other speaker's voice bleeding quietly into this microphone. Two
channels loud at once is real overlap and gives overlapping turns.
"""

from __future__ import annotations

import numpy as np

from maie.pipeline.diarization.speech import FRAME_S, frame_energy_db, frames_to_regions, gate, vad_frames

MIN_TURN_S = 0.2
"""Shorter bursts on a channel (a cough, a click) are not turns."""


def channel_turns(
    channels: list[np.ndarray],
    *,
    mode: int,
    floor_db: float,
    dominance_db: float,
    min_gap_s: float,
) -> list[tuple[float, float, int]]:
    """(start, end, channel index) turns, sorted by start."""
    length = min(len(c) for c in channels)
    energies = [frame_energy_db(c[:length]) for c in channels]
    loudest = np.max(np.stack(energies), axis=0)
    turns: list[tuple[float, float, int]] = []
    for index, (samples, energy) in enumerate(zip(channels, energies, strict=True)):
        talking = gate(vad_frames(samples[:length], mode), energy, floor_db) & (energy >= loudest - dominance_db)
        for start, end in frames_to_regions(talking, min_gap_s):
            if end - start >= MIN_TURN_S:
                turns.append((start, min(end, len(talking) * FRAME_S), index))
    return sorted(turns)
