"""Speaker embeddings of short sliding windows with Resemblyzer's pretrained encoder.

The encoder (a 3-layer LSTM, 256-d output) ships inside the ``resemblyzer`` wheel, so nothing is
downloaded. It reads 40-band mel power spectra at 100 frames/s; windows are cut from each speech
region's spectrogram, so overlapping windows share one STFT.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np

from maie.errors import ErrorCode, MaieError
from maie.pipeline.context import SAMPLE_RATE

ENCODER_KIND = "resemblyzer"
EXTRA_HINT = "install the diarization extra: pip install 'maie[diarization]'"
TARGET_DBFS = -30.0
"""Speech is brought to this level before embedding: the level Resemblyzer was trained at (the
encoder reads linear mel power, so its output depends on loudness)."""
FRAMES_PER_S = 100
"""Resemblyzer's mel hop is 10 ms."""


@dataclass
class Windows:
    """Embedded windows in time order."""

    embeddings: np.ndarray
    """(n, 256) float32, each row L2-normalised."""
    spans: np.ndarray
    """(n, 2) start and end in seconds."""

    def __len__(self) -> int:
        return len(self.embeddings)

    @property
    def centers(self) -> np.ndarray:
        return self.spans.mean(axis=1) if len(self.spans) else np.zeros(0)


def resolve_device(setting: str) -> str:
    if setting != "auto":
        return setting
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def load_encoder(device: str) -> Any:
    """Resemblyzer's VoiceEncoder on ``device`` (weights from the wheel)."""
    try:
        with warnings.catch_warnings():
            # resemblyzer imports scipy.ndimage.morphology, deprecated in SciPy 1.x: not our call to make.
            warnings.simplefilter("ignore", DeprecationWarning)
            from resemblyzer import VoiceEncoder
    except ImportError as exc:
        raise MaieError(
            ErrorCode.DIARIZATION_FAILED, f"speaker diarization is not installed ({exc}); {EXTRA_HINT}"
        ) from exc
    encoder = VoiceEncoder(device=device, verbose=False)
    encoder.eval()
    warm_up(encoder)
    return encoder


def warm_up(encoder: Any) -> None:
    """Pay every first-call cost of the diarizer here, inside the model load (which a job waits for
    only until its deadline) rather than in the first job's uninterruptible steps: librosa's first
    mel spectrogram (1.8 s measured), spectralcluster's first run (1.3 s) and the encoder's first pass."""
    import torch
    from resemblyzer.audio import wav_to_mel_spectrogram

    from maie.pipeline.diarization.clustering import warm_up as warm_up_clustering

    noise = np.random.default_rng(0).standard_normal(SAMPLE_RATE).astype(np.float32) * np.float32(0.01)
    mel = wav_to_mel_spectrogram(noise)
    with torch.inference_mode():
        encoder(torch.from_numpy(np.ascontiguousarray(mel[None])).to(encoder.device))
    warm_up_clustering()


def window_starts(n_frames: int, width: int, step: int) -> list[int]:
    """Start frames of windows covering ``n_frames``; the last window is aligned to the end."""
    if n_frames <= width:
        return [0]
    starts = list(range(0, n_frames - width + 1, step))
    if starts[-1] + width < n_frames:
        starts.append(n_frames - width)
    return starts


@contextmanager
def torch_threads(count: int | None) -> Iterator[None]:
    """Run with ``count`` torch CPU threads (None: leave torch's setting), restored afterwards."""
    import torch

    previous = torch.get_num_threads()
    if count:
        torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


class _Batcher:
    """Collects equal-length mel windows and embeds them a batch at a time."""

    def __init__(self, encoder: Any, batch_size: int) -> None:
        self.encoder = encoder
        self.batch_size = batch_size
        self.pending: dict[int, list[tuple[np.ndarray, tuple[float, float]]]] = {}
        self.embeddings: list[np.ndarray] = []
        self.spans: list[tuple[float, float]] = []

    def add(self, mel: np.ndarray, span: tuple[float, float]) -> None:
        group = self.pending.setdefault(len(mel), [])
        group.append((mel, span))
        if len(group) >= self.batch_size:
            self._flush(len(mel))

    def finish(self) -> Windows:
        for length in list(self.pending):
            self._flush(length)
        if not self.embeddings:
            return Windows(np.zeros((0, 256), np.float32), np.zeros((0, 2)))
        embeddings = np.concatenate(self.embeddings)
        spans = np.asarray(self.spans, dtype=np.float64)
        order = np.argsort(spans[:, 0], kind="stable")
        # A window the encoder maps to the zero vector (nothing voiced) has no direction.
        keep = order[np.isfinite(embeddings[order]).all(axis=1)]
        return Windows(embeddings[keep], spans[keep])

    def _flush(self, length: int) -> None:
        import torch

        group = self.pending.pop(length, [])
        if not group:
            return
        batch = torch.from_numpy(np.stack([mel for mel, _ in group])).to(self.encoder.device)
        with torch.inference_mode():
            self.embeddings.append(self.encoder(batch).cpu().numpy().astype(np.float32))
        self.spans.extend(span for _, span in group)


def embed_regions(
    encoder: Any,
    samples: np.ndarray,
    regions: list[tuple[float, float]],
    *,
    gain: float,
    window_s: float,
    step_s: float,
    min_region_s: float,
    batch_size: int,
    cpu_threads: int | None = None,
    on_progress: Callable[[float], None] = lambda fraction: None,
    checkpoint: Callable[[], None] = lambda: None,
) -> Windows:
    """Embed windows of ``window_s`` every ``step_s`` inside each region; a region shorter than a
    window but at least ``min_region_s`` long is embedded whole. ``on_progress`` runs after each
    region; ``checkpoint`` (it may raise: a deadline) before every window, since one long region
    holds hundreds of them."""
    from resemblyzer.audio import wav_to_mel_spectrogram

    width = round(window_s * FRAMES_PER_S)
    step = max(1, round(step_s * FRAMES_PER_S))
    batcher = _Batcher(encoder, batch_size)
    total = sum(end - start for start, end in regions) or 1.0
    done = 0.0
    with torch_threads(cpu_threads):
        for start, end in regions:
            done += end - start
            if end - start < min_region_s:
                continue
            segment = samples[int(start * SAMPLE_RATE) : int(end * SAMPLE_RATE)] * np.float32(gain)
            mel = wav_to_mel_spectrogram(segment)
            for first in window_starts(len(mel), width, step):
                piece = mel[first : first + width]
                span = (start + first / FRAMES_PER_S, min(end, start + (first + len(piece)) / FRAMES_PER_S))
                checkpoint()
                batcher.add(np.ascontiguousarray(piece), span)
            on_progress(done / total)
        return batcher.finish()
