"""DIARIZING stage: who spoke when, and the transcript's words given to those speakers.

Backends, in order of preference:

- ``channel``: ``options.diarize_by_channel`` on a recording with two or more channels (at most
  ``settings.diarization.max_channels``); each channel is one speaker (see ``diarization.channels``).
- ``pyannote``: when ``settings.diarization.pyannote_path`` names a local pipeline.
- ``resemblyzer``: the built-in offline default (the ``maie[diarization]`` extra): Resemblyzer
  speaker embeddings of 1.5 s windows every 0.75 s over the speech, the speaker count estimated
  by divisive splitting unless the request fixes it, spectral clustering with that count.

Every failure surfaces as ``MaieError(DIARIZATION_FAILED)``: the runner keeps the transcript and
records a warning.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from maie.errors import ErrorCode, MaieError
from maie.pipeline.context import SAMPLE_RATE, Cancelled, Diarization, LabelledSpan, TaskContext
from maie.pipeline.diarization.assign import assign_speakers, attributed_text, speaker_stats
from maie.pipeline.diarization.turns import name_speakers
from maie.schemas import TaskStatus

__all__ = ["assign_speakers", "attributed_text", "diarize", "speaker_stats"]

log = logging.getLogger(__name__)


def diarize(ctx: TaskContext) -> Diarization:
    """Speaker turns of ``ctx.audio`` (named S1, S2, ... by first appearance) and talk time each."""
    started = time.perf_counter()
    if ctx.audio is None:
        raise MaieError(ErrorCode.DIARIZATION_FAILED, "there is no decoded audio to diarize")
    lo, hi = ctx.options.min_speakers, ctx.options.max_speakers
    if lo is not None and hi is not None and lo > hi:
        raise MaieError(ErrorCode.DIARIZATION_FAILED, f"min_speakers ({lo}) is larger than max_speakers ({hi})")
    ctx.report(TaskStatus.DIARIZING, 0.0)
    try:
        method, raw = _run(ctx)
    except (MaieError, Cancelled):
        raise
    except MemoryError:
        raise MaieError(ErrorCode.DIARIZATION_FAILED, "speaker diarization ran out of memory") from None
    except Exception as exc:
        log.exception("diarization failed")
        raise MaieError(ErrorCode.DIARIZATION_FAILED, f"speaker diarization failed: {exc}") from exc
    turns = name_speakers(raw)
    ctx.report(TaskStatus.DIARIZING, 1.0)
    return Diarization(
        turns=turns,
        speakers=speaker_stats(turns),
        method=method,
        processing_time_s=time.perf_counter() - started,
    )


def _run(ctx: TaskContext) -> tuple[str, list[LabelledSpan]]:
    audio = ctx.audio
    assert audio is not None
    settings = ctx.settings.diarization
    features = audio.channel_features
    if ctx.options.diarize_by_channel and features is not None and features.channels >= 2:
        from maie.pipeline.diarization.channels import channel_turns

        return "channel", list(
            channel_turns(
                features,
                floor_db=settings.energy_floor_db,
                dominance_db=settings.channel_dominance_db,
                min_gap_s=settings.min_gap_s,
            )
        )
    if settings.pyannote_path:
        return "pyannote", list(_pyannote(ctx))
    return "resemblyzer", list(_resemblyzer(ctx))


def _pyannote(ctx: TaskContext) -> list[LabelledSpan]:
    from maie.pipeline.diarization.embedding import resolve_device
    from maie.pipeline.diarization.pyannote_backend import PYANNOTE_KIND, load_pipeline, pyannote_turns

    settings = ctx.settings.diarization
    path = settings.pyannote_path
    assert path is not None
    device = settings.device
    pipeline = ctx.model((PYANNOTE_KIND, path, device), lambda: load_pipeline(path, resolve_device(device)))
    ctx.report(TaskStatus.DIARIZING, 0.1)
    assert ctx.audio is not None
    return pyannote_turns(
        pipeline, ctx.audio.samples, min_speakers=ctx.options.min_speakers, max_speakers=ctx.options.max_speakers
    )


def _resemblyzer(ctx: TaskContext) -> list[tuple[float, float, int]]:
    from maie.pipeline.diarization.clustering import SplitRule, cluster
    from maie.pipeline.diarization.embedding import (
        ENCODER_KIND,
        EXTRA_HINT,
        TARGET_DBFS,
        embed_regions,
        load_encoder,
        resolve_device,
    )
    from maie.pipeline.diarization.speech import frames_to_regions, level_db, speech_frames
    from maie.pipeline.diarization.turns import windows_to_turns

    settings = ctx.settings.diarization
    assert ctx.audio is not None
    samples = ctx.audio.samples

    def load() -> object:
        # Inside the load: importing torch for the device check takes seconds on a busy machine, and
        # only the load can be waited for with the deadline.
        try:
            device = resolve_device(settings.device)
        except ImportError as exc:
            raise MaieError(
                ErrorCode.DIARIZATION_FAILED, f"speaker diarization needs torch ({exc}); {EXTRA_HINT}"
            ) from exc
        return load_encoder(device)

    encoder = ctx.model((ENCODER_KIND, settings.device), load)

    mask, energy_db = speech_frames(samples, mode=settings.vad_mode, floor_db=settings.energy_floor_db)
    regions = frames_to_regions(mask, settings.min_gap_s)
    level = level_db(energy_db, mask)
    if level is None or not regions:
        return []
    ctx.report(TaskStatus.DIARIZING, 0.05)
    windows = embed_regions(
        encoder,
        samples,
        regions,
        gain=10 ** ((TARGET_DBFS - level) / 20),
        window_s=settings.window_s,
        step_s=settings.step_s,
        min_region_s=settings.min_region_s,
        batch_size=settings.batch_size,
        cpu_threads=settings.cpu_threads,
        on_progress=_throttled(ctx, 0.05, 0.85),
        checkpoint=ctx.check_deadline,
    )
    if len(windows) == 0:
        return []
    labels = cluster(
        windows.embeddings,
        windows.centers,
        min_speakers=ctx.options.min_speakers,
        max_speakers=ctx.options.max_speakers,
        default_max=settings.max_speakers,
        rule=SplitRule(
            min_z=settings.split_min_z,
            min_gap=settings.split_min_gap,
            max_between=settings.split_max_between,
            overlap_s=settings.window_s + 0.1,  # windows closer than this share audio
        ),
        max_spectral_size=settings.max_spectral_size,
        checkpoint=ctx.check_deadline,  # spectral runs take seconds on long audio at a fine step
    )
    ctx.report(TaskStatus.DIARIZING, 0.95)
    log.debug("diarized %.1f s: %d windows, %d speakers", len(samples) / SAMPLE_RATE, len(windows), labels.max() + 1)
    return windows_to_turns(regions, windows.spans, labels)


def _throttled(ctx: TaskContext, low: float, high: float, step: float = 0.02) -> Callable[[float], None]:
    """Progress callback mapping 0..1 onto low..high, reporting only every ``step`` (an hour has
    hundreds of speech regions; each report may be a Redis write). Cancellation still surfaces."""
    last = [-1.0]

    def report(fraction: float) -> None:
        ctx.check_deadline()  # every region, not only when a report is due (and every window: checkpoint)
        value = low + (high - low) * fraction
        if value - last[0] >= step or fraction >= 1.0:
            last[0] = value
            ctx.report(TaskStatus.DIARIZING, value)

    return report
