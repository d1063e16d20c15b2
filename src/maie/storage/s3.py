"""S3 storage: audio at ``s3://<bucket>/<prefix>/<task_id>/source.<ext>`` (``MAIE_STORAGE_URL=s3://...``).

The client is boto3: AWS's own SDK, maintained in step with S3, with the standard credential chain
(environment, profiles, SSO, instance and pod roles) and plain ``endpoint_url`` support for MinIO, Ceph
RGW and Garage. Its calls block, so they run in a small shared thread pool and the event loop never waits
on S3. (aiobotocore is async but pins narrow botocore ranges and trails boto3; obstore is fast but young,
with its own credential handling. Neither buys anything here: the parser already hands whole parts to
threads.)

Uploads stream as a multipart upload while the body arrives, with no local spool: received bytes fill an
8 MiB part buffer; a full buffer is uploaded by a thread while the next one fills; when the next is full
before the previous part is stored, the sink is busy and the parser stops reading. So an upload holds at
most two part buffers (16 MiB plus one received chunk). A file smaller than one part is a single
PutObject. A refused, broken or cancelled upload aborts its multipart upload (nothing is left in the
bucket); uploads left by a process that died mid-way are aborted by the retention pass.

Checksums are sent only where S3 requires them (``when_required``): boto3 >= 1.36 otherwise adds CRC
trailers that several S3-compatible servers reject.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import logging
import os
import re
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor, wait
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, BinaryIO

from maie.config import Settings
from maie.errors import ErrorCode, MaieError
from maie.storage import StoredRef, check_task_id

log = logging.getLogger(__name__)

PART_BYTES = 8 * 1024 * 1024
"""Multipart part size (S3's minimum is 5 MiB for all parts but the last)."""
S3_THREADS = 16
"""Threads shared by all S3 calls of the process (and the client's connection pool size)."""
DOWNLOAD_BYTES = 1024 * 1024
"""Piece size when a worker streams an object to its scratch file."""
PROBE_READ_BYTES = 256 * 1024
"""Ranged-GET block size when PyAV probes a stored upload (most containers need one or two)."""
RANGE_PIECE_BYTES = 256 * 1024
"""Piece size when the audio route streams a range."""
ORPHAN_SWEEP_S = 300.0
"""Listing the bucket for orphans happens at most this often per process."""
SCRATCH_SWEEP_S = 3600.0
"""A worker looks for stale scratch copies at most this often."""
_EXT = re.compile(r"^[a-z0-9]{1,8}$")

_executor: ThreadPoolExecutor | None = None
_executor_lock = threading.Lock()


def _s3_executor() -> ThreadPoolExecutor:
    global _executor
    with _executor_lock:
        if _executor is None:
            _executor = ThreadPoolExecutor(max_workers=S3_THREADS, thread_name_prefix="maie-s3")
        return _executor


def _error_code(exc: BaseException) -> str:
    response = getattr(exc, "response", None)
    if isinstance(response, dict):
        return str(response.get("Error", {}).get("Code") or type(exc).__name__)
    return type(exc).__name__


@contextmanager
def _s3_errors(what: str) -> Iterator[None]:
    """botocore errors become STORAGE_UNAVAILABLE naming the S3 error code (never the endpoint or key)."""
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        yield
    except (BotoCoreError, ClientError) as exc:
        log.warning("S3 %s failed: %s", what, exc)
        raise MaieError(
            ErrorCode.STORAGE_UNAVAILABLE, f"audio storage failed while {what} ({_error_code(exc)})"
        ) from None


class S3Sink:
    """One upload streamed into a multipart upload (or a single PutObject when it fits one part)."""

    def __init__(self, storage: S3Storage, key: str) -> None:
        self.storage = storage
        self.key = key
        self.buf = bytearray()
        self.size = 0
        self.upload_id: str | None = None
        self.parts: list[dict[str, Any]] = []
        self.future: Future[None] | None = None  # the one S3 call under way for this upload
        self.committed = False
        self.aborted = False
        self.executor = _s3_executor()

    def submit(self, data: bytes | bytearray | memoryview) -> None:
        self.buf += data  # copied: the caller's buffer may be reused
        self.size += len(data)
        if len(self.buf) >= PART_BYTES and (self.future is None or self.future.done()):
            self._reap()
            self._send_part()

    @property
    def busy(self) -> bool:
        # A full buffer is only kept while the previous part is still being stored.
        return len(self.buf) >= PART_BYTES

    def _reap(self) -> None:
        if self.future is not None:
            future, self.future = self.future, None
            future.result()  # a failed S3 call raises here

    def _send_part(self) -> None:
        data, self.buf = self.buf, bytearray()
        self.future = self.executor.submit(self._upload_part, len(self.parts) + 1, data)

    async def _settle(self) -> None:
        if self.future is not None:
            await asyncio.wrap_future(self.future)
            self._reap()

    async def drain(self) -> None:
        while self.busy:
            await self._settle()
            if self.busy:
                self._send_part()

    async def commit(self) -> StoredRef:
        await self._settle()
        if self.upload_id is None:
            data, self.buf = self.buf, bytearray()
            self.future = self.executor.submit(self._put, data)
        else:
            if self.buf:
                self._send_part()
                await self._settle()
            self.future = self.executor.submit(self._complete)
        await self._settle()
        return self.storage.ref(self.key)

    def abort(self) -> None:
        self.aborted = True
        self.buf = bytearray()
        future, self.future = self.future, None
        if future is not None:
            future.cancel()
        if future is not None or self.upload_id is not None or self.committed:
            self.executor.submit(self._clean_up, future)

    # -- in the S3 threads ----------------------------------------------------------------------------
    def _upload_part(self, number: int, data: bytearray) -> None:
        if self.aborted:
            return
        client, bucket = self.storage.client, self.storage.bucket
        with _s3_errors("storing the upload"):
            if self.upload_id is None:
                self.upload_id = client.create_multipart_upload(Bucket=bucket, Key=self.key)["UploadId"]
            etag = client.upload_part(
                Bucket=bucket, Key=self.key, UploadId=self.upload_id, PartNumber=number, Body=data
            )["ETag"]
        self.parts.append({"PartNumber": number, "ETag": etag})

    def _put(self, data: bytearray) -> None:
        with _s3_errors("storing the upload"):
            self.storage.client.put_object(Bucket=self.storage.bucket, Key=self.key, Body=data)
        self.committed = True

    def _complete(self) -> None:
        with _s3_errors("storing the upload"):
            self.storage.client.complete_multipart_upload(
                Bucket=self.storage.bucket,
                Key=self.key,
                UploadId=self.upload_id,
                MultipartUpload={"Parts": self.parts},
            )
        self.committed = True

    def _clean_up(self, future: Future[None] | None) -> None:
        if future is not None:
            wait([future])  # cancelled, or running in another thread: either way done soon
        client, bucket = self.storage.client, self.storage.bucket
        try:
            if self.committed:
                client.delete_object(Bucket=bucket, Key=self.key)
            elif self.upload_id is not None:
                client.abort_multipart_upload(Bucket=bucket, Key=self.key, UploadId=self.upload_id)
        except Exception as exc:  # the retention pass aborts what is left
            log.warning("could not clean up an aborted upload: %s", exc)


class _RangeReader(io.RawIOBase):
    """A seekable read-only view of one object, one ranged GET per read (wrap it in a BufferedReader)."""

    def __init__(self, client: Any, bucket: str, key: str, size: int) -> None:
        self.client, self.bucket, self.key, self.length = client, bucket, key, size
        self.pos = 0
        self.gets = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self.pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self.pos, io.SEEK_END: self.length}[whence]
        self.pos = max(0, base + offset)
        return self.pos

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        if self.pos >= self.length or not len(view):
            return 0
        end = min(self.length, self.pos + len(view)) - 1
        with _s3_errors("reading the upload"):
            data = self.client.get_object(Bucket=self.bucket, Key=self.key, Range=f"bytes={self.pos}-{end}")[
                "Body"
            ].read()
        self.gets += 1
        view[: len(data)] = data
        self.pos += len(data)
        return len(data)


class S3Storage:
    """Audio in an S3-compatible bucket: API replicas and workers share no disk."""

    local = False

    def __init__(self, settings: Settings, bucket: str, prefix: str) -> None:
        self.settings = settings
        self.bucket = bucket
        self.base = f"{prefix}/" if prefix else ""
        self.scratch_dir = settings.scratch_dir
        self._client: Any = None
        self._client_lock = threading.Lock()
        self._last_sweep = 0.0
        self._last_scratch_sweep = 0.0
        self._seen: dict[str, float] = {}  # sweep entries by when this process first listed them

    @property
    def client(self) -> Any:
        """boto3's S3 client (thread-safe), made on first use so start-up needs no network."""
        if self._client is None:
            with self._client_lock:
                if self._client is None:
                    self._client = _make_client(self.settings)
        return self._client

    def ref(self, key: str) -> StoredRef:
        return f"s3://{self.bucket}/{key}"

    def key(self, ref: StoredRef) -> str:
        bucket, _, key = ref.removeprefix("s3://").partition("/")
        if not ref.startswith("s3://") or bucket != self.bucket or not key.startswith(self.base):
            raise MaieError(ErrorCode.STORAGE_UNAVAILABLE, "the task's audio is not in the configured bucket")
        return key

    def open_upload(self, task_id: str, ext: str) -> S3Sink:
        if not _EXT.match(ext):
            raise ValueError(f"not a container extension: {ext!r}")
        return S3Sink(self, f"{self.base}{check_task_id(task_id)}/source.{ext}")

    @contextmanager
    def fetch(self, ref: StoredRef | None) -> Iterator[Path | None]:
        """Stream the object to a private scratch file (0600, in a 0700 dir); delete it on exit."""
        if not ref:
            yield None
            return
        key = self.key(ref)
        task_id, _, name = key.removeprefix(self.base).partition("/")
        self.scratch_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        self._sweep_scratch()
        fd, scratch = tempfile.mkstemp(prefix=f"{task_id}-", suffix=Path(name).suffix, dir=self.scratch_dir)
        path = Path(scratch)  # mkstemp creates it 0600
        try:
            with os.fdopen(fd, "wb") as out:
                self._download(key, out)
            yield path
        finally:
            path.unlink(missing_ok=True)

    def _sweep_scratch(self) -> None:
        """Remove copies left by a worker killed mid-job: older than the longest job can run, they cannot
        belong to a running one (workers sharing this data dir included)."""
        now = time.time()
        if now - self._last_scratch_sweep < SCRATCH_SWEEP_S:
            return
        self._last_scratch_sweep = now
        s = self.settings
        longest = s.job_timeout_base_s + s.job_timeout_per_audio_s * s.max_audio_minutes * 60
        for entry in self.scratch_dir.iterdir():
            with contextlib.suppress(OSError):
                if now - entry.stat().st_mtime > 2 * longest:
                    entry.unlink()

    def _download(self, key: str, out: BinaryIO) -> None:
        from botocore.exceptions import ClientError

        try:
            with _s3_errors("fetching the task's audio"):
                body = self.client.get_object(Bucket=self.bucket, Key=key)["Body"]
                for piece in body.iter_chunks(DOWNLOAD_BYTES):
                    out.write(piece)
        except MaieError as exc:
            if isinstance(exc.__context__, ClientError) and _error_code(exc.__context__) in ("NoSuchKey", "404"):
                raise MaieError(ErrorCode.AUDIO_DECODE_ERROR, "the task's audio is no longer stored") from None
            raise

    @contextmanager
    def source(self, ref: StoredRef) -> Iterator[Path | BinaryIO]:
        key = self.key(ref)
        size = self.size(ref)
        if size is None:
            raise MaieError(ErrorCode.STORAGE_UNAVAILABLE, "the upload is not in the bucket")
        with io.BufferedReader(_RangeReader(self.client, self.bucket, key, size), PROBE_READ_BYTES) as reader:
            yield reader

    def size(self, ref: StoredRef) -> int | None:
        from botocore.exceptions import ClientError

        try:
            with _s3_errors("looking up the task's audio"):
                return int(self.client.head_object(Bucket=self.bucket, Key=self.key(ref))["ContentLength"])
        except MaieError as exc:
            if isinstance(exc.__context__, ClientError) and _error_code(exc.__context__) in ("404", "NoSuchKey"):
                return None
            raise

    def exists(self, ref: StoredRef) -> bool:
        return self.size(ref) is not None

    def local_path(self, ref: StoredRef) -> Path | None:
        return None

    def read_range(self, ref: StoredRef, start: int, end: int) -> Iterator[bytes]:
        with _s3_errors("reading the task's audio"):
            body = self.client.get_object(Bucket=self.bucket, Key=self.key(ref), Range=f"bytes={start}-{end}")["Body"]
        return _pieces(body)

    def delete(self, task_id: str) -> None:
        prefix = f"{self.base}{check_task_id(task_id)}/"
        with _s3_errors("deleting the task's audio"):
            listing = self.client.list_objects_v2(Bucket=self.bucket, Prefix=prefix)
            for obj in listing.get("Contents", []):
                self.client.delete_object(Bucket=self.bucket, Key=obj["Key"])

    def purge_orphans(self, max_age_s: float, is_task: Callable[[str], bool]) -> int:
        """Ages are measured here, from when this process first listed an entry, as well as by the S3
        server's timestamps: a server clock that is off (or a server reporting odd dates) must never
        make a live upload, or an object whose task is being created, look abandoned."""
        now = time.time()
        if now - self._last_sweep < min(max_age_s, ORPHAN_SWEEP_S):
            return 0
        self._last_sweep = now
        cutoff = datetime.now(UTC) - timedelta(seconds=max_age_s)
        seen, self._seen = self._seen, {}

        def old(entry_id: str, stamp: datetime) -> bool:
            first = self._seen[entry_id] = seen.get(entry_id, now)
            return stamp < cutoff and now - first >= max_age_s

        removed = 0
        client, bucket = self.client, self.bucket
        with _s3_errors("sweeping abandoned uploads"):
            for page in client.get_paginator("list_multipart_uploads").paginate(Bucket=bucket, Prefix=self.base):
                for upload in page.get("Uploads", []):
                    if old("upload:" + upload["UploadId"], upload["Initiated"]):
                        client.abort_multipart_upload(Bucket=bucket, Key=upload["Key"], UploadId=upload["UploadId"])
                        removed += 1
            for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=self.base):
                for obj in page.get("Contents", []):
                    task_id = obj["Key"].removeprefix(self.base).split("/", 1)[0]
                    if old("object:" + obj["Key"], obj["LastModified"]) and not is_task(task_id):
                        client.delete_object(Bucket=bucket, Key=obj["Key"])
                        removed += 1
        return removed


def _pieces(body: Any) -> Iterator[bytes]:
    try:
        with _s3_errors("reading the task's audio"):
            yield from body.iter_chunks(RANGE_PIECE_BYTES)
    finally:
        body.close()


def _make_client(settings: Settings) -> Any:
    import boto3
    from botocore.config import Config

    s3 = settings.s3
    style = s3.addressing_style or ("path" if s3.endpoint_url else "auto")
    config = Config(
        s3={"addressing_style": style},
        max_pool_connections=S3_THREADS + 4,
        connect_timeout=10,
        read_timeout=60,
        retries={"mode": "standard", "max_attempts": 4},
        request_checksum_calculation="when_required",
        response_checksum_validation="when_required",
    )
    return boto3.session.Session().client("s3", endpoint_url=s3.endpoint_url, region_name=s3.region, config=config)
