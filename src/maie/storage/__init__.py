"""Where uploaded audio lives: the data dir (``file://``, the default) or an S3-compatible bucket (``s3://``).

One small interface, used by the API (streamed uploads, probing, the audio route, deletes) and by the
workers (fetching the audio of a job):

* ``open_upload(task_id, ext) -> UploadSink``: the upload parser hands the file's bytes to the sink as
  they arrive (``submit``), waits while it is ``busy`` (``drain``), then ``commit()`` returns the
  ``StoredRef`` the task record keeps, or ``abort()`` leaves nothing behind.
* ``fetch(ref)``: a context manager yielding a private local path for the job (the file itself, or a
  0600 scratch copy downloaded from the bucket and deleted when the context exits, whatever happens).
* ``source(ref)``: what PyAV opens to probe a stored upload (a path, or a seekable ranged-GET reader).
* ``size(ref)``, ``exists(ref)``, ``local_path(ref)``, ``read_range(ref, start, end)``: the audio route.
* ``delete(task_id)``: DELETE, cancel and retention. ``purge_orphans``: uploads that never became a task.

Object keys and file names hold only the task id (``<prefix>/<task_id>/source.<ext>``), never anything
the client sent. ``storage_for(settings)`` returns the process's storage (one per configuration).
"""

from __future__ import annotations

import os
import re
import threading
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from pathlib import Path
from typing import BinaryIO, Protocol

from maie.config import Settings

StoredRef = str
"""What a task record keeps as ``audio_path``: a local path (file storage) or ``s3://bucket/key``."""

_TASK_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,127}$")


def check_task_id(task_id: str) -> str:
    """Task ids become path components and key segments: only ``[A-Za-z0-9_-]`` (uuid4 in practice)."""
    if not _TASK_ID.match(task_id):
        raise ValueError(f"not a task id: {task_id!r}")
    return task_id


class UploadSink(Protocol):
    """One upload being stored. Used from the event loop: no method blocks on I/O."""

    def submit(self, data: bytes | bytearray | memoryview) -> None:
        """Hand over the next bytes. The buffer must not change afterwards."""

    @property
    def busy(self) -> bool:
        """True when the caller should ``await drain()`` before handing over more (bounds memory)."""

    async def drain(self) -> None:
        """Wait until the sink is no longer busy; raises what a failed write raised."""

    async def commit(self) -> StoredRef:
        """Everything handed over is stored; returns the reference the task record keeps."""

    def abort(self) -> None:
        """Remove whatever was stored, even after ``commit``. Synchronous and never raises, so it is safe
        in cleanup paths and under cancellation (remote clean-up finishes in a background thread)."""


class Storage(Protocol):
    local: bool
    """True when refs are paths on this machine's disk (free-space checks apply)."""

    def open_upload(self, task_id: str, ext: str) -> UploadSink: ...

    def fetch(self, ref: StoredRef | None) -> AbstractContextManager[Path | None]: ...

    def source(self, ref: StoredRef) -> AbstractContextManager[Path | BinaryIO]: ...

    def size(self, ref: StoredRef) -> int | None:
        """Bytes stored, or None when the audio is gone."""

    def exists(self, ref: StoredRef) -> bool: ...

    def local_path(self, ref: StoredRef) -> Path | None:
        """The file itself when it is on this machine, else None (use ``read_range``)."""

    def read_range(self, ref: StoredRef, start: int, end: int) -> Iterator[bytes]:
        """Bytes ``start..end`` (inclusive), streamed in pieces."""

    def delete(self, task_id: str) -> None: ...

    def purge_orphans(self, max_age_s: float, is_task: Callable[[str], bool]) -> int:
        """Remove stored uploads older than ``max_age_s`` whose task id ``is_task`` does not know (and, for
        S3, multipart uploads left by a process that died mid-upload). Returns how many were removed."""


_cache: dict[tuple[object, ...], Storage] = {}
_by_settings: dict[tuple[object, ...], Storage] = {}
"""The same instances by the settings' own values: a hit costs no ``Path.resolve`` (two per call, each
an lstat per path component: 4.6% of the API's event loop during a burst of uploads, measured)."""
_cache_lock = threading.Lock()


def storage_for(settings: Settings) -> Storage:
    """The storage the settings name; one instance (and S3 client) per configuration and process."""
    s3 = settings.s3
    audio_dir, data_dir = settings.audio_dir, settings.data_dir
    relative_to = None if audio_dir.is_absolute() and data_dir.is_absolute() else os.getcwd()
    as_given = (settings.storage_url, audio_dir, data_dir, relative_to, s3.endpoint_url, s3.region, s3.addressing_style)
    storage = _by_settings.get(as_given)
    if storage is not None:
        return storage
    key = (
        settings.storage_url,
        str(audio_dir.resolve()),
        str(data_dir.resolve()),
        s3.endpoint_url,
        s3.region,
        s3.addressing_style,
    )
    with _cache_lock:
        storage = _cache.get(key)
        if storage is None:
            bucket = settings.s3_bucket
            if bucket is None:
                from maie.storage.file import FileStorage

                storage = FileStorage(audio_dir)
            else:
                from maie.storage.s3 import S3Storage

                storage = S3Storage(settings, bucket, settings.s3_prefix)
            _cache[key] = storage
        _by_settings[as_given] = storage
        return storage
