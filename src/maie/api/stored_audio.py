"""``GET /v1/tasks/{id}/audio`` for either storage: a local file through ``FileResponse``, an S3 object
streamed through the API with single-range support (clients never need to reach the bucket)."""

from __future__ import annotations

import re

from fastapi import Request, Response
from fastapi.responses import FileResponse, StreamingResponse

from maie.errors import ErrorCode, MaieError
from maie.storage import Storage, StoredRef

_RANGE = re.compile(r"^bytes=(\d*)-(\d*)$")


def byte_range(header: str | None, size: int) -> tuple[int, int] | None:
    """The one range a ``Range`` header asks for, inclusive, or None to send the whole body.

    Several ranges, or a header that does not parse, get the whole body (RFC 9110 lets a server ignore
    Range); a range that starts past the end is RANGE_NOT_SATISFIABLE.
    """
    match = _RANGE.match(header.strip()) if header else None
    if match is None or not (match.group(1) or match.group(2)):
        return None
    first, last = match.group(1), match.group(2)
    if not first:  # suffix: the last N bytes
        length = int(last)
        if length == 0:
            raise _unsatisfiable(size)
        return max(0, size - length), size - 1
    start = int(first)
    end = min(int(last), size - 1) if last else size - 1
    if start >= size or end < start:
        raise _unsatisfiable(size)
    return start, end


def _unsatisfiable(size: int) -> MaieError:
    return MaieError(
        ErrorCode.RANGE_NOT_SATISFIABLE,
        f"the range is outside the {size}-byte audio",
        headers={"Content-Range": f"bytes */{size}"},
    )


def audio_response(
    storage: Storage, ref: StoredRef, request: Request, *, media_type: str, headers: dict[str, str]
) -> Response:
    path = storage.local_path(ref)
    if path is not None:
        return FileResponse(path, media_type=media_type, headers=headers)
    size = storage.size(ref)
    if size is None:
        raise MaieError(ErrorCode.TASK_NOT_READY, "this task has no audio (text task, cancelled or deleted)")
    headers = {**headers, "Accept-Ranges": "bytes"}
    wanted = byte_range(request.headers.get("range"), size)
    start, end = wanted or (0, size - 1)
    if wanted is not None:
        headers["Content-Range"] = f"bytes {start}-{end}/{size}"
    headers["Content-Length"] = str(end - start + 1)
    if size == 0:
        return Response(b"", media_type=media_type, headers=headers)
    # The GET is made here, so a storage failure is a clean 503 before any header is sent.
    return StreamingResponse(
        storage.read_range(ref, start, end),
        status_code=206 if wanted is not None else 200,
        media_type=media_type,
        headers=headers,
    )
