"""A worker's warm-up: the default ASR model and VAD loaded, and the first decoder child started, before
the first job. Apart from ``maie.jobs.worker`` (RQ, Redis, the task store) so that a starting worker can
begin loading while it imports those: CTranslate2 loads a model without holding the GIL, and those
imports then run beside the load (0.1-0.15 s of every start, measured)."""

from __future__ import annotations

import logging
import threading

from maie.config import Settings
from maie.pipeline.registry import ModelRegistry

log = logging.getLogger(__name__)


def warm_up(settings: Settings, models: ModelRegistry) -> None:
    """Load the default ASR model and VAD and run VAD once on a second of silence, so the first upload
    is not the slow one. Needs no Redis: a worker does this while an embedded Redis is still starting.

    Whisper is run once on silence only on a GPU, where the first call sets up the CUDA libraries.
    On CPU that call costs a whole 30 s window's encoder pass (0.4–0.6 s on 2 cores, measured) and
    the first job after it was no faster (jfk.flac and a 132 s file, each with and without it)."""
    import numpy as np
    from faster_whisper.vad import VadOptions, get_speech_timestamps, get_vad_model

    from maie.pipeline.asr.whisper import get_model, resolve_spec
    from maie.pipeline.context import SAMPLE_RATE
    from maie.pipeline.vad import VAD_MODEL_KEY

    silence = np.zeros(SAMPLE_RATE, dtype=np.float32)
    try:
        if settings.vad.enabled:
            models.get(VAD_MODEL_KEY, get_vad_model)
            get_speech_timestamps(silence, VadOptions())
        spec = resolve_spec(settings)
        model = get_model(models, spec)
        if spec.device != "cpu":
            segments, _ = model.model.transcribe(silence, beam_size=1, language="en", vad_filter=False)
            list(segments)
    except Exception as exc:
        log.warning("could not preload the VAD or ASR model: %s", exc)
        return
    if spec.device == "cpu":
        log.info(
            "ASR on %d of this machine's cores: %d block(s) at once x %d thread(s) (MAIE_WORKER_CORES, "
            "MAIE_WORKERS_PER_HOST, MAIE_ASR__WHISPER_PARALLEL_BLOCKS, MAIE_ASR__WHISPER_CPU_THREADS)",
            settings.cores_per_worker,
            spec.workers,
            spec.cpu_threads,
        )


def start_decoder_child(settings: Settings) -> None:
    """The first file's decoder child, importing while the models load. Started from the thread that
    runs jobs: Linux sends a child its parent-death signal when the *thread* that started it ends, so
    a child started by the warm-up thread was killed as that thread finished (and the first job then
    waited for a new one)."""
    if settings.decode_in_subprocess:
        from maie.pipeline.decode_child import prepare

        prepare()


def start_warm_up(settings: Settings, models: ModelRegistry) -> threading.Thread:
    """``warm_up`` in a thread of its own (the decoder child started here, in the caller's thread);
    join it before the first job."""
    start_decoder_child(settings)
    thread = threading.Thread(target=warm_up, args=(settings, models), name="maie-warm-up", daemon=True)
    thread.start()
    return thread


def launch_worker(settings: Settings, *, burst: bool = False) -> None:
    """``maie worker`` and the workers ``maie serve`` starts: the warm-up begun, then RQ, Redis and the
    task store imported beside the model load, then ``run_worker`` (which waits for the warm-up)."""
    models = ModelRegistry()
    warming = start_warm_up(settings, models)
    from maie.jobs.worker import run_worker  # here, not at the top: imported while the models load

    run_worker(settings, burst=burst, models=models, warming=warming)
