"""Every core on one file, and a batched path that keeps its words.

- How a worker's cores are shared: between the workers of one machine (``maie serve --workers N``,
  ``MAIE_WORKERS_PER_HOST``), then between the blocks one worker decodes at once and their threads.
- Blocks decoded in parallel (real tiny.en on real speech) give the transcript decoding them one after
  another gives, in the same order, with the same times; a cancel stops every block.
- The batched path: where faster-whisper's batched pipeline drops a sentence, MAIE's decodes that
  stretch again and keeps every word.
"""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest

from maie.cli import worker_env
from maie.config import AsrSettings, Settings, usable_cores
from maie.pipeline.asr import gate, transcribe
from maie.pipeline.asr import whisper as whisper_backend
from maie.pipeline.context import SAMPLE_RATE, Cancelled, DecodedAudio, TaskContext, Transcript
from maie.pipeline.registry import ModelRegistry
from maie.pipeline.vad import detect_speech
from maie.schemas import TaskOptions, TaskStatus

import speech_mix


def plan(**settings: object) -> tuple[int, int]:
    asr = {k: v for k, v in settings.items() if k.startswith("whisper_")}
    top = {k: v for k, v in settings.items() if not k.startswith("whisper_")}
    return whisper_backend.thread_plan(Settings(asr=AsrSettings(**asr), **top), "cpu")  # type: ignore[arg-type]


def test_threads_times_blocks_stay_within_the_cores() -> None:
    """(threads per decode, blocks at once) from the worker's cores."""
    assert plan(worker_cores=1) == (1, 1)
    assert plan(worker_cores=2) == (1, 2)  # one block per core, one thread each
    assert plan(worker_cores=8) == (2, 4)  # at most 4 blocks (memory), the threads shared out
    assert plan(worker_cores=2, whisper_cpu_threads=2) == (2, 1)  # the threads kept as set
    assert plan(worker_cores=8, whisper_cpu_threads=3) == (3, 2)
    assert plan(worker_cores=2, whisper_cpu_threads=4) == (4, 1)  # more than the cores: still one block
    assert plan(worker_cores=2, whisper_parallel_blocks=3) == (1, 3)
    assert plan(worker_cores=2, whisper_parallel_blocks=3, whisper_cpu_threads=2) == (2, 3)  # both by hand
    for cores in range(1, 17):
        threads, blocks = plan(worker_cores=cores)
        assert 1 <= threads * blocks <= cores
    # On a GPU the blocks do not share CPU cores: one at a time unless asked, CTranslate2's threads.
    assert whisper_backend.thread_plan(Settings(), "cuda") == (0, 1)
    assert whisper_backend.thread_plan(Settings(asr=AsrSettings(whisper_parallel_blocks=2)), "cuda") == (0, 2)


def test_workers_on_one_machine_share_its_cores(monkeypatch: pytest.MonkeyPatch) -> None:
    cores = usable_cores()
    assert Settings().cores_per_worker == cores
    assert Settings(workers_per_host=2).cores_per_worker == max(1, cores // 2)
    assert Settings(workers_per_host=cores + 5).cores_per_worker == 1  # never zero
    assert Settings(workers_per_host=4, worker_cores=3).cores_per_worker == 3  # set by hand: as set

    # maie serve --workers N tells its workers how many they are, unless the operator already did.
    settings = Settings(redis_url="redis://127.0.0.1:1/0")
    assert worker_env(settings, 3, {})["MAIE_WORKERS_PER_HOST"] == "3"
    assert worker_env(settings, 3, {"MAIE_WORKERS_PER_HOST": "6"})["MAIE_WORKERS_PER_HOST"] == "6"
    assert "MAIE_WORKERS_PER_HOST" not in worker_env(settings, 0, {})
    # ... and a worker started with that environment sizes its threads to its share.
    monkeypatch.setenv("MAIE_WORKERS_PER_HOST", worker_env(settings, 2, {})["MAIE_WORKERS_PER_HOST"])
    worker = Settings()
    threads, blocks = whisper_backend.thread_plan(worker, "cpu")
    assert worker.cores_per_worker == max(1, cores // 2)
    assert threads * blocks <= worker.cores_per_worker
    spec = whisper_backend.resolve_spec(worker)
    assert (spec.cpu_threads, spec.workers) == (threads, blocks)
    assert spec.key[-2:] == (threads, blocks)  # another plan is another loaded model


@pytest.fixture(scope="module")
def registry() -> ModelRegistry:
    return ModelRegistry()


@pytest.fixture(scope="module")
def mix(shared_audio: Path) -> speech_mix.Mix:
    """Ten minutes of real speech whose words are known (only parts of it are transcribed here)."""
    return speech_mix.build(shared_audio, 600)


def excerpt(mix: speech_mix.Mix, start: float, end: float) -> tuple[np.ndarray, list[str]]:
    """The clips of ``mix`` that lie within [start, end] s, and their words."""
    inside = [(s, e, t) for s, e, t in mix.clips if s >= start and e <= end]
    lo, hi = max(inside[0][0] - 0.2, 0.0), inside[-1][1] + 0.3
    words = [w for _, _, t in inside for w in speech_mix.words(t)]
    return mix.samples[int(lo * SAMPLE_RATE) : int(hi * SAMPLE_RATE)], words


def stage(
    samples: np.ndarray,
    registry: ModelRegistry,
    settings: Settings,
    report: object = None,
    on_segments: object = None,
) -> Transcript:
    ctx = TaskContext(task_id="parallel", options=TaskOptions(word_timestamps=True), settings=settings, models=registry)
    if report is not None:
        ctx.report = report  # type: ignore[assignment]
    if on_segments is not None:
        ctx.on_segments = on_segments  # type: ignore[assignment]
    ctx.audio = DecodedAudio(
        samples=samples, duration_s=len(samples) / SAMPLE_RATE, source_format="wav", source_channels=1
    )
    ctx.speech = detect_speech(ctx)
    return transcribe(ctx)


@pytest.mark.slow
@pytest.mark.parametrize("batched", [True, False], ids=["batched", "sequential"])
def test_parallel_blocks_give_the_sequential_transcript(
    mix: speech_mix.Mix, registry: ModelRegistry, batched: bool
) -> None:
    """A minute and a quarter in 30 s blocks, decoded one at a time and two at a time (one thread
    each, so each decode does the same arithmetic): the same segments, words and times, in order."""
    samples, reference = excerpt(mix, 220.0, 300.0)

    def settings(parallel: int) -> Settings:
        return Settings(
            asr=AsrSettings(
                block_s=30.0, whisper_parallel_blocks=parallel, whisper_cpu_threads=1, whisper_batched=batched
            )
        )

    progress: list[float] = []
    streamed: list[tuple[float, object]] = []  # (progress when handed over, segment)

    def hand_over(segments: list[object]) -> None:
        streamed.extend((progress[-1] if progress else 0.0, s) for s in segments)

    one = stage(samples, registry, settings(1))
    two = stage(samples, registry, settings(2), report=lambda s, f: progress.append(f), on_segments=hand_over)
    assert two.versions["decoding"]["parallel_blocks"] == 2 and two.versions["decoding"]["blocks"] >= 3
    # Sampling (a temperature above 0) is random in CTranslate2: identity holds for greedy decodes,
    # which is all this excerpt needs.
    assert {s.temperature for s in one.segments} == {0.0}, [(s.text, s.temperature) for s in one.segments]
    assert [s.model_dump() for s in two.segments] == [s.model_dump() for s in one.segments]
    # The sequential decoder loses a phrase of the licence text here (a window's closing timestamp
    # lands past its last words, and the next window starts there: bare faster-whisper does the same).
    assert speech_mix.wer(speech_mix.words(two.text), reference) <= (0.02 if batched else 0.07)
    assert progress == sorted(progress) and progress[-1] == 1.0
    # Streamed in order as blocks finish, while others still decode: the transcript's very segments.
    assert [s for _, s in streamed] == two.segments
    assert streamed[0][0] < 0.75, [p for p, _ in streamed]


@pytest.mark.slow
def test_a_cancel_stops_every_block(mix: speech_mix.Mix, registry: ModelRegistry) -> None:
    samples, _ = excerpt(mix, 220.0, 300.0)
    calls: list[float] = []

    def report(stage: TaskStatus, fraction: float) -> None:
        calls.append(fraction)
        if len(calls) == 2:
            raise Cancelled

    settings = Settings(asr=AsrSettings(block_s=30.0, whisper_parallel_blocks=2, whisper_cpu_threads=1))
    with pytest.raises(Cancelled):
        stage(samples, registry, settings, report=report)
    # Raised in the job's thread, after the block threads stopped: none is left decoding.
    assert not [t for t in threading.enumerate() if t.name.startswith("maie-asr-block")]


@pytest.mark.slow
def test_batched_path_decodes_again_what_the_batch_dropped(mix: speech_mix.Mix, registry: ModelRegistry) -> None:
    """Licence text, the left-channel sentence, JFK, licence text: faster-whisper's batched pipeline,
    on the very clips MAIE gives it, returns the sentence before JFK and stops (its clip holds both);
    MAIE sees a stretch of sound without words, decodes it alone, and keeps every word."""
    from faster_whisper import BatchedInferencePipeline

    samples, reference = excerpt(mix, 420.0, 500.0)
    settings = Settings(asr=AsrSettings(whisper_parallel_blocks=1, whisper_batched=True))
    transcript = stage(samples, registry, settings)
    ours = speech_mix.words(transcript.text)

    ctx = TaskContext(task_id="plain", options=TaskOptions(), settings=settings, models=registry)
    ctx.audio = DecodedAudio(
        samples=samples, duration_s=len(samples) / SAMPLE_RATE, source_format="wav", source_channels=1
    )
    gated, timeline = gate(samples, detect_speech(ctx).regions)
    clips = whisper_backend._clips(gated, list(zip(timeline.gated_starts, timeline.gated_ends, strict=True)))
    model = whisper_backend.get_model(registry, whisper_backend.resolve_spec(settings)).model
    segments, _ = BatchedInferencePipeline(model).transcribe(
        gated,
        language="en",
        beam_size=5,
        without_timestamps=True,
        vad_filter=False,
        clip_timestamps=[{"start": s, "end": e} for s, e in clips],
    )
    plain = speech_mix.words(" ".join(s.text for s in segments))

    jfk = speech_mix.words(speech_mix.JFK)
    assert " ".join(jfk) not in " ".join(plain)  # what the batch alone loses
    assert len(reference) - len(plain) >= len(jfk) - 2
    decoding = transcript.versions["decoding"]
    assert decoding["batched"] is True and decoding["gaps_redecoded"] >= 1
    assert " ".join(jfk) in " ".join(ours)
    assert speech_mix.wer(ours, reference) <= 0.02  # "sublicence" for "sublicense", twice
    starts = [s.start for s in transcript.segments]
    assert starts == sorted(starts)
