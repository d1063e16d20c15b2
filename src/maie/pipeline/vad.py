"""Voice activity detection with the Silero VAD ONNX model bundled in faster-whisper (no torch)."""

from __future__ import annotations

from faster_whisper.vad import VadOptions, get_speech_timestamps, get_vad_model

from maie.errors import ErrorCode, MaieError
from maie.pipeline.context import SAMPLE_RATE, SpeechRegions, TaskContext

MIN_SPEECH_MS = 0
"""No minimum, as faster-whisper's own VAD filter: Silero marks a short word said alone ("ask" in
JFK's "... for your country. And so ... Americans, ask not") as under 100 ms of speech, and a 250 ms
minimum dropped it. What Whisper makes of a click or a breath ("you") is the hallucination
filter's to judge (confidence, level), not VAD's to hide."""
MAX_REGION_S = 30.0
"""Long regions are split (at a short pause when there is one) so every region fits one Whisper
window: batched decoding needs that, and it keeps per-region work bounded for other backends."""
VAD_MODEL_KEY = ("vad", "silero_vad_v6")
WINDOW_S = 300.0
"""Audio is scanned in windows of this length, so VAD memory does not grow with the recording, and
the deadline is checked between windows (one takes 1-3 s on a busy 2-core machine)."""


def vad_enabled(ctx: TaskContext) -> bool:
    """The request's ``enable_vad``, else the configured default."""
    return ctx.settings.vad.enabled if ctx.options.enable_vad is None else ctx.options.enable_vad


def vad_threshold(ctx: TaskContext) -> float:
    """The request's ``vad_threshold``, else the configured default."""
    threshold = ctx.options.vad_threshold
    return ctx.settings.vad.threshold if threshold is None else threshold


def detect_speech(ctx: TaskContext) -> SpeechRegions:
    """Speech regions of ``ctx.audio`` in seconds; one region over everything when VAD is off."""
    if ctx.audio is None:
        raise MaieError(ErrorCode.PIPELINE_ERROR, "VAD ran before the audio was decoded")
    samples = ctx.audio.samples
    duration = len(samples) / SAMPLE_RATE
    if not vad_enabled(ctx):
        return SpeechRegions(regions=[(0.0, duration)], coverage=1.0, enabled=False)
    if duration == 0:
        return SpeechRegions(regions=[], coverage=0.0)

    # The ONNX session is process-wide (lru_cache in faster-whisper); registering it keeps the
    # worker's list of warm models complete and loads it once.
    ctx.models.get(VAD_MODEL_KEY, get_vad_model)
    options = VadOptions(
        threshold=vad_threshold(ctx),
        min_speech_duration_ms=MIN_SPEECH_MS,
        max_speech_duration_s=MAX_REGION_S,
        min_silence_duration_ms=ctx.settings.vad.min_silence_ms,
        speech_pad_ms=ctx.settings.vad.speech_pad_ms,
    )
    regions: list[tuple[float, float]] = []
    window = int(WINDOW_S * SAMPLE_RATE)
    for offset in range(0, len(samples), window):
        ctx.check_deadline()
        # Silero runs window by window: its padded working copies stay the size of a window.
        chunks = get_speech_timestamps(samples[offset : offset + window], options, sampling_rate=SAMPLE_RATE)
        for c in chunks:
            start, end = (offset + c["start"]) / SAMPLE_RATE, (offset + c["end"]) / SAMPLE_RATE
            if end <= start:
                continue
            if regions and start - regions[-1][1] < 0.05 and end - regions[-1][0] <= MAX_REGION_S:
                regions[-1] = (regions[-1][0], end)  # one region cut by the window edge
            else:
                regions.append((start, end))
    speech = sum(end - start for start, end in regions)
    return SpeechRegions(regions=regions, coverage=min(speech / duration, 1.0), enabled=True)
