"""Which frames hold speech worth embedding: webrtcvad plus an energy floor, frame by frame.

Silero (the ASR's VAD) pads and merges generously, which suits recognition; speaker embeddings
want the opposite: pauses full of hum or room tone pull a window's embedding towards the noise
(measured on jfk.flac, whose pauses are rumble 25 dB below the voice). So the diarizer keeps only
frames webrtcvad calls speech that are also within ``floor_db`` of the recording's loud speech.
"""

from __future__ import annotations

import numpy as np

from maie.pipeline.decoded import SAMPLE_RATE

FRAME_S = 0.03
"""webrtcvad accepts 10, 20 or 30 ms frames; 30 ms is the most reliable."""
FRAME = int(SAMPLE_RATE * FRAME_S)
_CHUNK_FRAMES = 2000
"""Frames converted to PCM at a time (one minute), so an hour never becomes one int16 copy."""
LOUD_PERCENTILE = 95
"""The loud-speech reference level: this percentile of the speech frames' energy."""


def frame_energy_db(samples: np.ndarray) -> np.ndarray:
    """Mean-square energy of each whole 30 ms frame, in dB."""
    n = len(samples) // FRAME
    out = np.empty(n, dtype=np.float32)
    for start in range(0, n, _CHUNK_FRAMES):
        stop = min(start + _CHUNK_FRAMES, n)
        block = samples[start * FRAME : stop * FRAME].reshape(stop - start, FRAME)
        out[start:stop] = 10 * np.log10(np.mean(block.astype(np.float32) ** 2, axis=1) + 1e-12)
    return out


def vad_frames(samples: np.ndarray, mode: int) -> np.ndarray:
    """webrtcvad's speech flag for each whole 30 ms frame."""
    import webrtcvad

    vad = webrtcvad.Vad(mode)
    n = len(samples) // FRAME
    flags = np.zeros(n, dtype=bool)
    for start in range(0, n, _CHUNK_FRAMES):
        stop = min(start + _CHUNK_FRAMES, n)
        pcm = (np.clip(samples[start * FRAME : stop * FRAME], -1.0, 1.0) * 32767).astype(np.int16).tobytes()
        width = FRAME * 2
        for i in range(stop - start):
            flags[start + i] = vad.is_speech(pcm[i * width : (i + 1) * width], SAMPLE_RATE)
    return flags


def gate(flags: np.ndarray, energy_db: np.ndarray, floor_db: float) -> np.ndarray:
    """Speech frames within ``floor_db`` of the loud speech, widened by one frame each side."""
    if not flags.any():
        return flags
    loud = float(np.percentile(energy_db[flags], LOUD_PERCENTILE))
    kept = flags & (energy_db > loud - floor_db)
    widened = kept.copy()
    widened[1:] |= kept[:-1]
    widened[:-1] |= kept[1:]
    return widened


def speech_frames(samples: np.ndarray, *, mode: int, floor_db: float) -> tuple[np.ndarray, np.ndarray]:
    """Boolean mask over 30 ms frames (speech to embed) and every frame's energy in dB."""
    energy_db = frame_energy_db(samples)
    return gate(vad_frames(samples, mode), energy_db, floor_db), energy_db


def frames_to_regions(mask: np.ndarray, min_gap_s: float) -> list[tuple[float, float]]:
    """Runs of True frames as (start, end) seconds, bridging pauses shorter than ``min_gap_s``."""
    padded = np.concatenate([[False], mask, [False]]).astype(np.int8)
    edges = np.flatnonzero(np.diff(padded))
    regions: list[tuple[float, float]] = []
    for start, stop in zip(edges[::2], edges[1::2], strict=True):
        begin, end = start * FRAME_S, stop * FRAME_S
        if regions and begin - regions[-1][1] < min_gap_s:
            regions[-1] = (regions[-1][0], end)
        else:
            regions.append((begin, end))
    return regions


def level_db(energy_db: np.ndarray, mask: np.ndarray) -> float | None:
    """Mean power of the masked frames in dB (dBFS for samples in -1..1); None without any."""
    if not mask.any():
        return None
    return float(10 * np.log10(np.mean(10 ** (energy_db[mask].astype(np.float64) / 10))))
