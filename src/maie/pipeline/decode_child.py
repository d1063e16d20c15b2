"""Decoding in a child process: no input file can crash the worker, whatever FFmpeg or PyAV do with it.

The known crash (PyAV reading 8+ planar channels, a SIGSEGV) is fixed at its source in ``audio``, but
the decoder is native code fed untrusted bytes: a crash there would take the worker, its warm models
and its job with it (twice, then ``WORKER_LOST``). Here a crash costs one ``AUDIO_DECODE_ERROR``.

A child is started ahead of its file and waits, with its imports done (about half a second of a
task's latency otherwise), for one request line on its stdin: the next file's decode then starts at
once. Each child decodes one file and exits; after a decode that ended normally the next one is started
(``_Spare``), so a worker holds one idle child (PyAV and NumPy imported, ~60 MB) between tasks.

The child runs ``decode_file`` and answers on its stdout: ``progress <fraction>`` lines, then one
``result <json>`` (or ``error <json>``) line followed by the arrays as raw bytes (mono float32
samples, then the per-channel energy and speech flags when asked for). Nothing touches the disk, so
nothing is left behind whatever happens. Memory: while the samples cross the pipe both processes
hold them (2 x the mono samples, for a moment); the child exits right after.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import numpy as np

from maie.errors import ErrorCode, MaieError
from maie.pipeline.decoded import ChannelFeatures, DecodedAudio
from maie.procs import die_with_parent

CHILD_COMMAND = [sys.executable, "-m", "maie.pipeline.decode_child"]
"""How the child is started (tests point it at a program that crashes like the decoder once did)."""


class _Spare:
    """The child waiting for the next file (None before the first decode or after a failed one)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._proc: subprocess.Popen[bytes] | None = None
        self._command: list[str] = []

    def take(self) -> subprocess.Popen[bytes]:
        """The waiting child if it is alive and was started with today's ``CHILD_COMMAND``, else a new one."""
        with self._lock:
            proc, command, self._proc = self._proc, self._command, None
        if proc is not None and proc.poll() is None and command == CHILD_COMMAND:
            return proc
        if proc is not None:
            _reap(proc)
        return _start()

    def refill(self) -> None:
        with self._lock:
            if self._proc is None:
                self._proc, self._command = _start(), list(CHILD_COMMAND)

    def drop(self) -> None:
        with self._lock:
            proc, self._proc = self._proc, None
        if proc is not None:
            _reap(proc)


def _start() -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        list(CHILD_COMMAND),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        env={**os.environ, "PYTHONFAULTHANDLER": "1"},  # a native crash leaves its stack in the log
        preexec_fn=die_with_parent,  # no idle child outlives its worker
    )


def _reap(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.kill()
    proc.wait()
    for stream in (proc.stdin, proc.stdout):
        if stream is not None:
            stream.close()


SPARE = _Spare()


def prepare() -> None:
    """Start the child for the first file now (the worker's warm-up calls this), from the thread that
    will decode: the child gets SIGTERM when the thread that started it ends (``die_with_parent``)."""
    SPARE.refill()


def decode_isolated(
    path: Path,
    *,
    on_progress: Callable[[float], None] | None = None,
    **options: Any,
) -> DecodedAudio:
    """``decode_file(path, **options)`` in a child process; same result and MaieErrors. A child that
    dies (a signal, or exits without a result) is AUDIO_DECODE_ERROR, never a dead worker."""
    path = Path(path)
    request = json.dumps({"path": str(path), "options": options})
    proc = _hand_over(SPARE.take(), request)
    assert proc.stdout is not None
    ended = False
    try:
        audio: DecodedAudio | None = None
        while line := proc.stdout.readline():
            kind, _, payload = line.decode().strip().partition(" ")
            if kind == "progress" and on_progress is not None:
                on_progress(float(payload))
            elif kind == "error":
                proc.wait()
                error = json.loads(payload)
                ended = True
                raise MaieError(ErrorCode(error["code"]), error["message"])
            elif kind == "result":
                audio = _receive(proc.stdout, json.loads(payload))
                break
        code = proc.wait()
        if audio is None or code != 0:
            how = f"signal {signal.Signals(-code).name}" if code < 0 else f"exit status {code}"
            raise MaieError(
                ErrorCode.AUDIO_DECODE_ERROR,
                f"the decoder crashed on {path.name} ({how}); the file cannot be decoded",
            )
        ended = True
        return audio
    finally:
        _reap(proc)  # cancelled or out of time while decoding: killed here
        if ended:  # a decode that ended normally (a result or a MaieError): the next file's child
            SPARE.refill()


def _hand_over(proc: subprocess.Popen[bytes], request: str) -> subprocess.Popen[bytes]:
    """Send ``request`` to a waiting child. One that died while it waited (killed, out of memory)
    never saw the file: a fresh child takes it, so the task does not fail for it."""
    for attempt in range(2):
        assert proc.stdin is not None
        try:
            proc.stdin.write(request.encode() + b"\n")
            proc.stdin.close()
            return proc
        except BrokenPipeError:
            _reap(proc)
            if attempt == 0:
                proc = _start()
    return proc  # a fresh child that died at once: its exit status is reported as the crash


def _read_array(stream: IO[bytes], shape: tuple[int, ...], dtype: type) -> np.ndarray:
    out: np.ndarray = np.empty(shape, dtype=dtype)
    view = memoryview(out.reshape(-1).view(np.uint8).data)
    got = 0
    while got < len(view):
        n = stream.readinto(view[got:])  # type: ignore[attr-defined]
        if not n:
            raise MaieError(ErrorCode.AUDIO_DECODE_ERROR, "the decoder stopped while sending its result")
        got += n
    return out


def _receive(stream: IO[bytes], meta: dict[str, Any]) -> DecodedAudio:
    samples = _read_array(stream, (meta["samples"],), np.float32)
    features = None
    if meta["features"] is not None:
        shape = tuple(meta["features"])
        energy = _read_array(stream, shape, np.float32)
        speech = _read_array(stream, shape, np.bool_) if meta["speech"] else None
        features = ChannelFeatures(energy_db=energy, speech=speech)
    return DecodedAudio(
        samples=samples,
        duration_s=meta["duration_s"],
        source_format=meta["source_format"],
        source_channels=meta["source_channels"],
        declared_duration_s=meta["declared_duration_s"],
        channel_features=features,
    )


def main() -> int:
    from maie.pipeline.audio import decode_file

    out = sys.stdout.buffer
    line = sys.stdin.readline()  # waits here, imports done, until the worker has a file
    if not line:
        return 0  # the worker stopped without one

    def emit(kind: str, payload: str) -> None:
        out.write(f"{kind} {payload}\n".encode())
        out.flush()

    request = json.loads(line)
    try:
        audio = decode_file(
            Path(request["path"]),
            on_progress=lambda fraction: emit("progress", f"{fraction:.6f}"),
            **request["options"],
        )
    except MaieError as exc:
        emit("error", json.dumps({"code": exc.code.value, "message": exc.message}))
        return 0
    features = audio.channel_features
    meta = {
        "samples": int(audio.samples.shape[0]),
        "duration_s": audio.duration_s,
        "source_format": audio.source_format,
        "source_channels": audio.source_channels,
        "declared_duration_s": audio.declared_duration_s,
        "features": list(features.energy_db.shape) if features is not None else None,
        "speech": features is not None and features.speech is not None,
    }
    emit("result", json.dumps(meta))
    out.write(np.ascontiguousarray(audio.samples, dtype=np.float32).reshape(-1).view(np.uint8).data)
    if features is not None:
        out.write(np.ascontiguousarray(features.energy_db, dtype=np.float32).reshape(-1).view(np.uint8).data)
        if features.speech is not None:
            out.write(np.ascontiguousarray(features.speech, dtype=np.bool_).reshape(-1).view(np.uint8).data)
    out.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
