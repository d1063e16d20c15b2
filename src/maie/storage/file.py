"""File storage: audio at ``<audio_dir>/<task_id>/source.<ext>`` (the default, ``MAIE_STORAGE_URL=file://``).

Uploads are written with ``os.pwrite`` on a raw fd from a few shared writer threads, so the event loop
only parses: disk writes overlap with reading the socket and cannot stall other requests, and each byte
is written once. At most ``MAX_IN_FLIGHT_BYTES`` per upload, and about ``MAX_QUEUED_BYTES`` of all
uploads together, wait for the writers: beyond that an upload stops reading its socket until its writes
catch up, so a burst of uploads waits in the clients' TCP windows, not in this process's memory.
"""

from __future__ import annotations

import asyncio
import errno
import os
import shutil
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor, wait
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

from maie.errors import ErrorCode, MaieError
from maie.storage import StoredRef, check_task_id

MAX_IN_FLIGHT_BYTES = 2 * 1024 * 1024
"""Received bytes handed to the writer threads but not yet written; beyond this the sink is busy."""
MAX_QUEUED_BYTES = 64 * 1024 * 1024
"""Received bytes of all uploads together waiting for the writers. Above it every upload with writes of
its own pending is busy. ``MAX_IN_FLIGHT_BYTES`` alone bounds only each upload: 2 MiB times every open
connection (``MAIE_HTTP_MAX_CONNECTIONS``), 8 GiB at the default."""
WRITE_THREADS = 4
"""Threads shared by all uploads for disk writes."""
READ_BYTES = 256 * 1024
"""Piece size when the audio route streams a range."""


def _pwrite_all(fd: int, data: bytes | bytearray | memoryview, offset: int) -> None:
    view = memoryview(data)
    try:
        while view:
            written = os.pwrite(fd, view, offset)
            view = view[written:]
            offset += written
    except OSError as exc:
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            raise MaieError(ErrorCode.INSUFFICIENT_STORAGE, "the server is out of disk space") from exc
        raise


_executor: ThreadPoolExecutor | None = None


class _Queued:
    """Bytes handed to the writer threads and not yet written, summed over every sink."""

    def __init__(self) -> None:
        self.lock = threading.Lock()  # shared by the sinks of every event loop in the process, whatever its thread
        self.bytes = 0

    def add(self, n: int) -> None:
        with self.lock:
            self.bytes += n


QUEUED = _Queued()


def _write_executor() -> ThreadPoolExecutor:
    global _executor
    if _executor is None:
        _executor = ThreadPoolExecutor(max_workers=WRITE_THREADS, thread_name_prefix="maie-upload-write")
    return _executor


class FileSink:
    """Writes one upload to ``<dest_dir>/source.<ext>`` from a few threads at explicit offsets.

    Creates ``dest_dir`` (0700) if needed and the file (0600, exclusively). ``abort`` removes the file,
    and ``dest_dir`` if this sink created it.
    """

    def __init__(self, dest_dir: Path, ext: str) -> None:
        self.dest_dir = dest_dir
        self.created_dir = False
        if not dest_dir.exists():
            dest_dir.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            dest_dir.mkdir(mode=0o700)
            self.created_dir = True
        self.path = dest_dir / f"source.{ext}"
        self.fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        self.offset = 0
        self.in_flight = 0
        self.pending: deque[tuple[Future[None], int]] = deque()
        self.executor = _write_executor()

    def submit(self, data: bytes | bytearray | memoryview) -> None:
        size = len(data)
        self.pending.append((self.executor.submit(_pwrite_all, self.fd, data, self.offset), size))
        self.offset += size
        self.in_flight += size
        QUEUED.add(size)
        pending = self.pending
        while pending and pending[0][0].done():
            self._reap()

    @property
    def busy(self) -> bool:
        return self.in_flight > MAX_IN_FLIGHT_BYTES or (self.in_flight > 0 and QUEUED.bytes > MAX_QUEUED_BYTES)

    def _reap(self) -> None:
        future, size = self.pending.popleft()
        self.in_flight -= size
        QUEUED.add(-size)
        future.result()  # a failed write raises here

    async def _wait_oldest(self) -> None:
        await asyncio.wrap_future(self.pending[0][0])
        self._reap()

    async def _drain_to(self, limit: int) -> None:
        while self.in_flight > limit:
            await self._wait_oldest()

    async def drain(self) -> None:
        await self._drain_to(MAX_IN_FLIGHT_BYTES // 2)
        # While all uploads together are over their share, each waits for its own writes: the oldest
        # are written first (one FIFO executor), so the total falls and every upload keeps moving.
        while self.in_flight > 0 and QUEUED.bytes > MAX_QUEUED_BYTES:
            await self._wait_oldest()

    async def commit(self) -> StoredRef:
        await self._drain_to(0)
        os.close(self.fd)
        self.fd = -1
        return str(self.path)

    def abort(self) -> None:
        # Drop queued writes and wait for running ones, so the fd can be closed safely.
        futures = [future for future, _ in self.pending]
        for future in futures:
            future.cancel()
        wait(futures)
        self.pending.clear()
        QUEUED.add(-self.in_flight)
        self.in_flight = 0
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
        self.path.unlink(missing_ok=True)
        if self.created_dir:
            shutil.rmtree(self.dest_dir, ignore_errors=True)


def _pieces(fh: BinaryIO, left: int) -> Iterator[bytes]:
    with fh:
        while left > 0 and (piece := fh.read(min(left, READ_BYTES))):
            left -= len(piece)
            yield piece


class FileStorage:
    """Audio in a directory every worker can read (local disk for one machine, NFS/EFS beyond)."""

    local = True

    def __init__(self, audio_dir: Path) -> None:
        self.audio_dir = audio_dir

    def task_dir(self, task_id: str) -> Path:
        return self.audio_dir / check_task_id(task_id)

    def open_upload(self, task_id: str, ext: str) -> FileSink:
        return FileSink(self.task_dir(task_id), ext)

    @contextmanager
    def fetch(self, ref: StoredRef | None) -> Iterator[Path | None]:
        yield Path(ref) if ref else None

    @contextmanager
    def source(self, ref: StoredRef) -> Iterator[Path | BinaryIO]:
        yield Path(ref)

    def size(self, ref: StoredRef) -> int | None:
        path = Path(ref)
        return path.stat().st_size if path.is_file() else None

    def exists(self, ref: StoredRef) -> bool:
        return Path(ref).is_file()

    def local_path(self, ref: StoredRef) -> Path | None:
        return Path(ref)

    def read_range(self, ref: StoredRef, start: int, end: int) -> Iterator[bytes]:
        fh = open(ref, "rb")  # noqa: SIM115 (closed by _pieces; opened now so a missing file fails early)
        fh.seek(start)
        return _pieces(fh, end - start + 1)

    def delete(self, task_id: str) -> None:
        shutil.rmtree(self.task_dir(task_id), ignore_errors=True)

    def purge_orphans(self, max_age_s: float, is_task: Callable[[str], bool]) -> int:
        removed = 0
        if self.audio_dir.exists():
            for d in self.audio_dir.iterdir():
                if time.time() - d.stat().st_mtime > max_age_s and not is_task(d.name):
                    shutil.rmtree(d, ignore_errors=True)
                    removed += 1
        return removed
