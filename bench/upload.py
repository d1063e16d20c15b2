"""Upload benchmark: the streaming ``POST /v1/process`` path against a plain FastAPI ``UploadFile`` endpoint.

    PYTHONPATH=src python bench/upload.py                  # 100 MiB + 1 GiB, oversize, 1000 concurrent
    PYTHONPATH=src python bench/upload.py --sizes 100 --concurrent 200 --quick

Every server is a fresh subprocess (uvicorn defaults: h11, asyncio loop), measured in the same run:

* ``uploadfile``  FastAPI ``file: UploadFile`` endpoint copying the spooled upload with shutil.copyfileobj
* ``stream-min``  a bare FastAPI endpoint calling ``maie.api.uploads.receive_form`` (parser cost alone)
* ``maie``        the real service: ``python -m maie serve --workers 0`` (auth, rate limit, queue, probe)
* ``maie-s3``     the same with ``MAIE_STORAGE_URL=s3://...``: a moto S3 server (``moto[server]``, a
                  subprocess on 127.0.0.1) receives the multipart uploads; "disk" is then the API's own

Per upload: server RSS growth (peak RSS during the upload, from VmHWM reset through
/proc/<pid>/clear_refs and 5 ms psutil sampling, minus RSS before), MiB/s (file bytes / wall time from
the first byte sent to the response), and disk bytes per uploaded byte from /proc/<pid>/io of the server:
``write_bytes`` counts page-cache pages dirtied for block storage (0 on tmpfs, which has no backing
device: the bench then falls back to ``wchar``, bytes passed to write(2), which also counts non-disk
writes). The client is a raw socket sending one reused 1 MiB block, so it costs little CPU; bodies
are a valid WAV header followed by generated samples, never held in memory whole.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import fcntl
import json
import os
import secrets
import select
import shutil
import signal
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import termios
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
from fastapi import File, Request, UploadFile  # module level: endpoint annotations resolve here

MiB = 1024 * 1024
ROOT = Path(__file__).resolve().parents[1]
BOUNDARY = "maieBench" + secrets.token_hex(12)
API_KEY = "bench-" + secrets.token_hex(8)
BLOCK = os.urandom(MiB)


# -- servers under test (run as: python bench/upload.py _serve <kind> --port N --dest DIR) ---------------


def _serve(kind: str, port: int, dest: Path, max_mb: int, count: bool) -> None:
    import uvicorn
    from fastapi import FastAPI
    from fastapi.responses import JSONResponse

    from maie.api.uploads import check_content_length, receive_form
    from maie.errors import MaieError

    app = FastAPI()
    received = {"last": 0}

    @app.exception_handler(MaieError)
    async def maie_error(_: Request, exc: MaieError) -> JSONResponse:
        return JSONResponse(
            {"detail": exc.message, "code": exc.code.value}, status_code=exc.status_code, headers=exc.headers
        )

    @app.get("/stats")
    async def stats() -> dict[str, int]:
        return received

    if kind == "stream-min":

        @app.post("/upload")
        async def upload_stream(request: Request) -> dict[str, int]:
            check_content_length(request, max_mb * MiB)
            form = await receive_form(request, dest_dir=dest / uuid.uuid4().hex, max_file_bytes=max_mb * MiB)
            assert form.file is not None
            return {"size": form.file.size}

    else:

        @app.post("/upload")
        def upload_plain(file: UploadFile = File(...)) -> dict[str, int]:
            target = dest / uuid.uuid4().hex
            target.mkdir()
            with open(target / "source.bin", "wb") as out:
                shutil.copyfileobj(file.file, out)
                return {"size": out.tell()}

    asgi = app
    if count:  # counts the body bytes the app reads, for the exact "read past the limit" figure

        async def counting(scope, receive, send):  # type: ignore[no-untyped-def]
            if scope["type"] == "http" and scope["path"] == "/upload":
                received["last"] = 0

                async def counted_receive():  # type: ignore[no-untyped-def]
                    message = await receive()
                    received["last"] += len(message.get("body", b""))
                    return message

                return await app(scope, counted_receive, send)
            return await app(scope, receive, send)

        asgi = counting  # type: ignore[assignment]
    # BENCH_HTTP=h11|httptools|bounded picks the HTTP protocol (bounded: maie's, maie.api.http_protocol),
    # to compare upload throughput of the protocols on the same endpoint.
    http: Any = os.environ.get("BENCH_HTTP", "auto")
    if http == "bounded":
        from maie.api.http_protocol import BoundedHttpToolsProtocol

        http = BoundedHttpToolsProtocol
    uvicorn.run(asgi, host="127.0.0.1", port=port, log_level="warning", http=http)


@dataclass
class Server:
    name: str
    proc: subprocess.Popen[bytes]
    port: int
    path: str
    data: Path
    s3_prefix: str | None = None

    @property
    def pid(self) -> int:
        return self.proc.pid

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)  # lets `maie serve` stop its embedded Redis
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def clear_data(self) -> None:
        """Delete stored uploads (``<task dir>/source.*`` or the S3 objects) so a run does not fill up."""
        for stored in list(self.data.rglob("source.*")):
            shutil.rmtree(stored.parent, ignore_errors=True)
        if self.s3_prefix is not None:
            client = _moto_client()
            for obj in client.list_objects_v2(Bucket=S3_BUCKET, Prefix=self.s3_prefix + "/").get("Contents", []):
                client.delete_object(Bucket=S3_BUCKET, Key=obj["Key"])

    def leftovers(self) -> list[str]:
        """Stored uploads and (S3) open multipart uploads."""
        found = [str(p) for p in self.data.rglob("source.*")]
        if self.s3_prefix is not None:
            client = _moto_client()
            prefix = self.s3_prefix + "/"
            found += [o["Key"] for o in client.list_objects_v2(Bucket=S3_BUCKET, Prefix=prefix).get("Contents", [])]
            found += [
                u["Key"] for u in client.list_multipart_uploads(Bucket=S3_BUCKET, Prefix=prefix).get("Uploads", [])
            ]
        return found


S3_BUCKET = "maie-bench"
_moto: dict[str, object] = {}


def _moto_endpoint(work: Path) -> str:
    """Start one moto S3 server for the run (stopped by ``_stop_moto``) and create the bucket."""
    if "endpoint" not in _moto:
        port = _free_port()
        log = open(work / "moto.log", "wb")  # noqa: SIM115 (kept open for the server's life)
        proc = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)], stdout=log, stderr=log
        )
        _moto.update(proc=proc, endpoint=f"http://127.0.0.1:{port}")
        deadline = time.monotonic() + 60
        while True:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1):
                    break
            except OSError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise RuntimeError("moto server did not start") from None
                time.sleep(0.2)
        _moto_client().create_bucket(Bucket=S3_BUCKET)
    return str(_moto["endpoint"])


def _moto_client():  # type: ignore[no-untyped-def]
    import boto3
    from botocore.config import Config

    return boto3.client(
        "s3",
        endpoint_url=str(_moto["endpoint"]),
        region_name="us-east-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
        config=Config(s3={"addressing_style": "path"}),
    )


def _stop_moto() -> None:
    proc = _moto.pop("proc", None)
    _moto.pop("endpoint", None)
    if isinstance(proc, subprocess.Popen):
        proc.terminate()
        proc.wait(10)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait_ready(proc: subprocess.Popen[bytes], port: int, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as sock:
                sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                if sock.recv(64).startswith(b"HTTP/1.1"):
                    return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError("server did not start")


def start_server(kind: str, work: Path, *, max_mb: int, queue_depth: int = 100000, count: bool = False) -> Server:
    port = _free_port()
    data = Path(tempfile.mkdtemp(prefix=f"{kind}-", dir=work))
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "TMPDIR": str(data)}
    s3_prefix = None
    if kind == "maie-s3":
        s3_prefix = data.name
        env.update(
            MAIE_STORAGE_URL=f"s3://{S3_BUCKET}/{s3_prefix}",
            MAIE_S3__ENDPOINT_URL=_moto_endpoint(work),
            MAIE_S3__REGION="us-east-1",
            AWS_ACCESS_KEY_ID="testing",
            AWS_SECRET_ACCESS_KEY="testing",
            AWS_EC2_METADATA_DISABLED="true",
        )
    if kind in ("maie", "maie-s3"):
        env.update(
            MAIE_API_KEYS=API_KEY,
            MAIE_DATA_DIR=str(data),
            MAIE_MAX_UPLOAD_MB=str(max_mb),
            MAIE_MAX_QUEUE_DEPTH=str(queue_depth),
            MAIE_RATE_LIMIT="1000000/minute",
            MAIE_DISK_FLOOR_MB="0",
            MAIE_LOG_LEVEL="WARNING",
        )
        env.pop("MAIE_REDIS_URL", None)
        cmd = [sys.executable, "-m", "maie", "serve", "--workers", "0", "--port", str(port)]
        path = "/v1/process"
    else:
        cmd = [sys.executable, __file__, "_serve", kind, "--port", str(port), "--dest", str(data)]
        cmd += ["--max-mb", str(max_mb)] + (["--count"] if count else [])
        path = "/upload"
    log = data / "server.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        _wait_ready(proc, port)
    except Exception:
        proc.kill()
        proc.wait()
        raise RuntimeError(f"{kind}: {log.read_text()[-2000:]}") from None
    return Server(kind, proc, port, path, data, s3_prefix)


# -- measuring a server process -----------------------------------------------------------------------


def _io(pid: int) -> dict[str, int]:
    with open(f"/proc/{pid}/io") as fh:
        return {k: int(v) for k, v in (line.split(": ") for line in fh)}


def _minor_faults(pid: int) -> int:
    with open(f"/proc/{pid}/stat") as fh:
        return int(fh.read().rsplit(")", 1)[1].split()[7])  # field 10: minflt, all threads


def _status_kib(pid: int, key: str) -> int:
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    return 0


class PeakRss:
    """Peak RSS of a process while the block runs: VmHWM after a reset, and 5 ms sampling as a check."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.proc = psutil.Process(pid)
        self.before = self.peak = 0
        self._stop = threading.Event()

    def __enter__(self) -> PeakRss:
        try:
            with open(f"/proc/{self.pid}/clear_refs", "w") as fh:
                fh.write("5")  # reset VmHWM to the current RSS
            self.hwm_reset = True
        except OSError:
            self.hwm_reset = False
        self.before = self.peak = self.proc.memory_info().rss
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(0.005):
            with contextlib.suppress(psutil.Error):
                self.peak = max(self.peak, self.proc.memory_info().rss)

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        if self.hwm_reset:
            self.peak = max(self.peak, _status_kib(self.pid, "VmHWM") * 1024)

    @property
    def growth(self) -> int:
        return self.peak - self.before


# -- the client -----------------------------------------------------------------------------------------


def wav_header(data_bytes: int) -> bytes:
    return (
        b"RIFF"
        + struct.pack("<I", 36 + data_bytes)
        + b"WAVEfmt "
        + struct.pack("<IHHIIHH", 16, 1, 1, 16000, 32000, 2, 16)
        + b"data"
        + struct.pack("<I", data_bytes)
    )


def body_parts(file_bytes: int) -> tuple[bytes, int, bytes]:
    """(bytes before the file content, file content length, bytes after) of a multipart body."""
    fields = f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="features"\r\n\r\nraw_transcript\r\n'
    head = (
        fields + f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="file"; filename="bench.wav"\r\n'
        "Content-Type: audio/wav\r\n\r\n"
    ).encode()
    return head, file_bytes, f"\r\n--{BOUNDARY}--\r\n".encode()


def file_content(file_bytes: int) -> Iterator[memoryview]:
    """A WAV header then generated samples, one reused 1 MiB block at a time."""
    header = wav_header(file_bytes - 44)
    yield memoryview(header)
    left = file_bytes - len(header)
    block = memoryview(BLOCK)
    while left > 0:
        piece = block[: min(left, MiB)]
        left -= len(piece)
        yield piece


def request_head(server: Server, length: int | None) -> bytes:
    lines = [
        f"POST {server.path} HTTP/1.1",
        f"Host: 127.0.0.1:{server.port}",
        f"Content-Type: multipart/form-data; boundary={BOUNDARY}",
        f"X-API-Key: {API_KEY}",
        "Connection: close",
        f"Content-Length: {length}" if length is not None else "Transfer-Encoding: chunked",
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def read_response(sock: socket.socket) -> tuple[int, bytes]:
    chunks = []
    with contextlib.suppress(ConnectionResetError):
        while data := sock.recv(65536):
            chunks.append(data)
    raw = b"".join(chunks)
    head, _, body = raw.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1]) if head.startswith(b"HTTP/") else 0
    return status, body


@dataclass
class UploadResult:
    server: str
    size: int
    status: int
    seconds: float
    rss_growth: int
    disk_bytes: int
    disk_counter: str
    cancelled: int
    cpu_seconds: float
    faults: int
    detail: bytes = b""
    notes: list[str] = field(default_factory=list)

    @property
    def mib_s(self) -> float:
        return self.size / MiB / self.seconds

    @property
    def cpu_s_per_gib(self) -> float:
        return self.cpu_seconds / (self.size / (1024 * MiB))

    @property
    def disk_per_byte(self) -> float:
        return self.disk_bytes / self.size


def timed_upload(server: Server, file_bytes: int, tmpfs: bool) -> UploadResult:
    head, n, tail = body_parts(file_bytes)
    io_before = _io(server.pid)
    cpu_before = psutil.Process(server.pid).cpu_times()
    faults_before = _minor_faults(server.pid)
    with PeakRss(server.pid) as rss:
        sock = socket.create_connection(("127.0.0.1", server.port))
        start = time.perf_counter()
        sock.sendall(request_head(server, len(head) + n + len(tail)) + head)
        for piece in file_content(file_bytes):
            sock.sendall(piece)
        sock.sendall(tail)
        status, detail = read_response(sock)
        seconds = time.perf_counter() - start
        sock.close()
    io_after = _io(server.pid)
    cpu_after = psutil.Process(server.pid).cpu_times()
    faults = _minor_faults(server.pid) - faults_before
    counter = "wchar" if tmpfs else "write_bytes"
    return UploadResult(
        server=server.name,
        size=file_bytes,
        status=status,
        seconds=seconds,
        rss_growth=rss.growth,
        disk_bytes=io_after[counter] - io_before[counter],
        disk_counter=counter,
        cancelled=io_after["cancelled_write_bytes"] - io_before["cancelled_write_bytes"],
        cpu_seconds=(cpu_after.user + cpu_after.system) - (cpu_before.user + cpu_before.system),
        faults=faults,
        detail=detail[:300],
    )


def _unsent(sock: socket.socket) -> int:
    buf = fcntl.ioctl(sock.fileno(), termios.TIOCOUTQ, b"\0\0\0\0")  # SIOCOUTQ: bytes not yet acked
    return struct.unpack("i", buf)[0]


def oversized_upload(server: Server, limit: int) -> tuple[int, int, int]:
    """Stream a chunked upload without end; return (status, file bytes past the limit the client had
    handed to the kernel and the server had acknowledged when the refusal arrived, app-read bytes or -1)."""
    head, _, _ = body_parts(0)
    sock = socket.create_connection(("127.0.0.1", server.port))
    sock.sendall(request_head(server, None))
    overhead = len(head)
    sent = 0
    block = b"%x\r\n" % MiB + BLOCK + b"\r\n"
    first = head + wav_header(2**31)
    sock.sendall(b"%x\r\n" % len(first) + first + b"\r\n")
    sent += len(first)
    acked = sent
    try:
        while sent < limit + 512 * MiB:
            readable, writable, _ = select.select([sock], [sock], [], 5)
            if readable:
                break
            if writable:
                sock.sendall(block)
                sent += MiB
    except (BrokenPipeError, ConnectionResetError):
        pass
    with contextlib.suppress(OSError):
        acked = sent - _unsent(sock)
    status, _ = read_response(sock)
    sock.close()
    app_read = -1
    if server.name == "stream-min":
        app_read = json.loads(_get(server, "/stats"))["last"]
    return status, acked - overhead - limit, (app_read - overhead - limit) if app_read >= 0 else -1


def _get(server: Server, path: str) -> bytes:
    with socket.create_connection(("127.0.0.1", server.port)) as sock:
        sock.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
        return read_response(sock)[1]


async def concurrent_uploads(server: Server, count: int, file_bytes: int) -> dict[str, Any]:
    import httpx

    wav = wav_header(file_bytes - 44) + BLOCK[: file_bytes - 44]
    statuses: dict[int, int] = {}
    errors: dict[str, int] = {}
    limits = httpx.Limits(max_connections=count + 10, max_keepalive_connections=count + 10)
    async with httpx.AsyncClient(
        base_url=f"http://127.0.0.1:{server.port}",
        headers={"X-API-Key": API_KEY},
        limits=limits,
        timeout=httpx.Timeout(300.0),
    ) as client:

        async def one() -> None:
            try:
                response = await client.post(
                    server.path,
                    data={"features": "raw_transcript"},
                    files={"file": ("talk.wav", wav, "audio/wav")},
                )
                statuses[response.status_code] = statuses.get(response.status_code, 0) + 1
            except httpx.HTTPError as exc:
                name = type(exc).__name__
                errors[name] = errors.get(name, 0) + 1

        cpu_before = _server_cpu_s(server.pid)
        with PeakRss(server.pid) as rss:
            start = time.perf_counter()
            await asyncio.gather(*(one() for _ in range(count)))
            seconds = time.perf_counter() - start
        cpu = _server_cpu_s(server.pid) - cpu_before
    return {"statuses": statuses, "errors": errors, "seconds": seconds, "rss_growth": rss.growth, "cpu_s": cpu}


def _server_cpu_s(pid: int) -> float:
    """CPU seconds of the server and its children (the embedded redis-server), all threads."""
    proc = psutil.Process(pid)
    total = 0.0
    for p in [proc, *proc.children(recursive=True)]:
        with contextlib.suppress(psutil.NoSuchProcess):
            times = p.cpu_times()
            total += times.user + times.system
    return total


# -- the run --------------------------------------------------------------------------------------------


def _summary(runs: list[UploadResult]) -> tuple[float, float, int, float, float, int] | None:
    """(best MiB/s, median CPU s/GiB, largest RSS growth, largest disk B/B, cancelled B/B, last status)."""
    if not runs:
        return None
    cpus = sorted(r.cpu_s_per_gib for r in runs)
    return (
        max(r.mib_s for r in runs),
        cpus[len(cpus) // 2],
        max(r.rss_growth for r in runs),
        max(r.disk_per_byte for r in runs),
        max(r.cancelled / r.size for r in runs),
        runs[-1].status,
    )


def _fs_type(path: Path) -> str:
    best, fstype = "", "?"
    with open("/proc/mounts") as fh:
        for line in fh:
            _, mount, kind, *_ = line.split()
            if str(path.resolve()).startswith(mount) and len(mount) > len(best):
                best, fstype = mount, kind
    return fstype


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="100,1024", help="upload sizes in MiB, comma separated")
    parser.add_argument("--repeat", type=int, default=3, help="uploads per server and size (best MiB/s kept)")
    parser.add_argument("--concurrent", type=int, default=1000, help="concurrent 1 MiB uploads (0: skip)")
    parser.add_argument("--burst-rounds", type=int, default=3, help="interleaved rounds of the burst")
    parser.add_argument("--queue-depth", type=int, default=500, help="least MAIE_MAX_QUEUE_DEPTH of the burst")
    parser.add_argument("--oversize-limit-mb", type=int, default=64, help="MAIE_MAX_UPLOAD_MB for that run")
    parser.add_argument("--servers", default="uploadfile,stream-min,maie")
    parser.add_argument("--workdir", type=Path, default=ROOT / "bench" / "out", help="on the disk to measure")
    parser.add_argument("--quick", action="store_true", help="skip the oversize run")
    parser.add_argument("--results", type=Path, help="append the burst and refusal figures to this markdown file")
    args = parser.parse_args()

    args.workdir.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="upload-bench-", dir=args.workdir))
    fstype = _fs_type(work)
    tmpfs = fstype in ("tmpfs", "ramfs")
    sizes = [int(s) * MiB for s in args.sizes.split(",") if s]
    kinds = [k for k in args.servers.split(",") if k]
    print(f"work dir {work} ({fstype}); disk counter: {'wchar (tmpfs!)' if tmpfs else 'write_bytes'}")
    print(f"python {sys.version.split()[0]}, {os.cpu_count()} CPUs; uvicorn h11 + asyncio in every server\n")

    results: dict[tuple[str, int], list[UploadResult]] = {}
    summary: list[str] = []
    try:
        # All servers run side by side and take turns, so load changes on the machine hit them alike.
        servers = [start_server(kind, work, max_mb=max(sizes) // MiB + 64) for kind in kinds] if sizes else []
        try:
            for size in sizes:
                for _ in range(args.repeat):
                    for server in servers:
                        os.sync()
                        result = timed_upload(server, size, tmpfs)
                        server.clear_data()
                        results.setdefault((server.name, size), []).append(result)
                        print(
                            f"  {server.name:<10} {size // MiB:>5} MiB  HTTP {result.status}  "
                            f"{result.mib_s:7.1f} MiB/s  {result.cpu_s_per_gib:5.2f} CPU s/GiB  "
                            f"RSS +{result.rss_growth / MiB:6.1f} MiB  disk {result.disk_per_byte:.2f} B/B  "
                            f"{result.faults * 4096 / result.size:.2f} faults/page"
                            + (f"  {result.detail!r}" if result.status not in (200, 202) else "")
                        )
        finally:
            for server in servers:
                server.stop()
                shutil.rmtree(server.data, ignore_errors=True)

        print()
        print(
            f"{'server':<11}{'size':>7}{'HTTP':>6}{'MiB/s':>9}{'x plain':>9}{'CPU s/GiB':>11}{'x plain':>9}"
            f"{'RSS +MiB':>10}{'disk B/B':>10}{'cancelled':>11}"
        )
        print("-" * 93)
        for size in sizes:
            plain = _summary(results.get(("uploadfile", size), []))
            for kind in kinds:
                runs = results.get((kind, size))
                if not runs:
                    continue
                mib_s, cpu, rss, disk, cancelled, status = _summary(runs) or (0, 0, 0, 0, 0, 0)
                speed_ratio = f"{mib_s / plain[0]:.2f}" if plain else "-"
                cpu_ratio = f"{cpu / plain[1]:.2f}" if plain else "-"
                print(
                    f"{kind:<11}{size // MiB:>5}Mi{status:>6}{mib_s:>9.1f}{speed_ratio:>9}{cpu:>11.2f}"
                    f"{cpu_ratio:>9}{rss / MiB:>10.1f}{disk:>10.2f}{cancelled:>11.2f}"
                )
        print(
            f"best MiB/s of {args.repeat}; CPU: median server CPU seconds (all threads) per GiB; RSS: largest "
            "peak growth; disk B/B: server write_bytes (pages dirtied for the disk) per uploaded byte; "
            "cancelled: of those, dropped before writeback (a spool file deleted while in page cache)"
        )

        if not args.quick:
            print()
            limit = args.oversize_limit_mb * MiB
            for kind in [k for k in ("stream-min", "maie", "maie-s3") if k in kinds]:
                server = start_server(kind, work, max_mb=args.oversize_limit_mb, count=kind == "stream-min")
                try:
                    status, past, app_past = oversized_upload(server, limit)
                    time.sleep(1)  # S3 aborts finish in a background thread of the API
                    leftovers = server.leftovers()
                finally:
                    server.stop()
                    shutil.rmtree(server.data, ignore_errors=True)
                exact = f"; the app read {app_past / MiB:.2f} MiB past it" if app_past >= 0 else ""
                print(
                    f"oversize {kind:<10} limit {args.oversize_limit_mb} MiB, chunked: HTTP {status}; "
                    f"client had {past / MiB:.2f} MiB past the limit acknowledged by the server's kernel{exact}; "
                    f"files left: {len(leftovers)}"
                )

        # Rounds interleaved (plain, maie, plain, maie, ...), each on a fresh server: the machine's
        # ups and downs hit every kind alike. Reported: the median round, and its ratio to plain's.
        burst_kinds = [k for k in ("uploadfile", "stream-min", "maie", "maie-s3") if k in kinds and args.concurrent]
        rounds: dict[str, list[dict[str, Any]]] = {k: [] for k in burst_kinds}
        for n in range(args.burst_rounds if burst_kinds else 0):
            for kind in burst_kinds:
                # Deep enough (a key holds half of it) to accept the whole burst.
                depth = max(args.queue_depth, 2 * args.concurrent + 2)
                server = start_server(kind, work, max_mb=16, queue_depth=depth)
                try:
                    outcome = asyncio.run(concurrent_uploads(server, args.concurrent, MiB))
                    outcome["stored"] = len(server.leftovers()) if kind == "maie-s3" else None
                finally:
                    server.stop()
                    shutil.rmtree(server.data, ignore_errors=True)
                rounds[kind].append(outcome)
                statuses: dict[int, int] = outcome["statuses"]
                accepted = statuses.get(202, 0) + statuses.get(200, 0)
                outcome["cpu_per_upload"] = float(outcome["cpu_s"]) / max(1, accepted)
                other = {s: c for s, c in statuses.items() if s not in (200, 202)}
                print(
                    f"burst round {n + 1} {kind:<10} {args.concurrent} x 1 MiB: accepted {accepted}, other "
                    f"statuses {other or 0}, client errors {outcome['errors'] or 0}; {outcome['seconds']:.1f} s, "
                    f"server CPU {outcome['cpu_per_upload'] * 1000:.1f} ms per upload, "
                    f"RSS +{outcome['rss_growth'] / MiB:.1f} MiB (peak)"
                    + (f"; objects in the bucket: {outcome['stored']}" if outcome["stored"] is not None else "")
                )
        burst_s = {k: statistics.median(o["seconds"] for o in v) for k, v in rounds.items() if v}
        accept_cpu = {k: statistics.median(o["cpu_per_upload"] for o in v) for k, v in rounds.items() if v}
        for kind, seconds in burst_s.items():
            ratio = f" = {seconds / burst_s['uploadfile']:.2f}x plain" if "uploadfile" in burst_s else ""
            cpu_ratio = f" ({accept_cpu[kind] / accept_cpu['uploadfile']:.2f}x)" if "uploadfile" in accept_cpu else ""
            each = ", ".join(f"{o['seconds']:.1f}" for o in rounds[kind])
            peak = max(o["rss_growth"] for o in rounds[kind]) / MiB
            line = (
                f"burst median of {args.burst_rounds} {kind:<10}: {seconds:.1f} s{ratio}; server CPU "
                f"{accept_cpu[kind] * 1000:.1f} ms per upload{cpu_ratio}; peak RSS +{peak:.0f} MiB; rounds: {each} s"
            )
            print(line)
            summary.append(line)
        if "maie" in kinds and args.concurrent:
            # A full queue: every upload of the burst is refused (429 QUEUE_FULL) before its body is stored.
            print()
            server = start_server("maie", work, max_mb=16, queue_depth=1)
            try:
                first = asyncio.run(concurrent_uploads(server, 1, MiB))["statuses"]
                outcome = asyncio.run(concurrent_uploads(server, args.concurrent, MiB))
            finally:
                server.stop()
                shutil.rmtree(server.data, ignore_errors=True)
            statuses = outcome["statuses"]
            refused = statuses.get(429, 0)
            per_refusal = float(outcome["cpu_s"]) / max(1, refused)
            line = (
                f"refusals  maie       {args.concurrent} x 1 MiB into a full queue (first upload: HTTP "
                f"{next(iter(first), 'error')}): refused 429 {refused}, other {statuses}; server CPU "
                f"{per_refusal * 1000:.1f} ms per refusal = {per_refusal / accept_cpu['maie']:.2f}x an acceptance"
            )
            print(line)
            summary.append(line)
        if args.results and summary:
            with args.results.open("a") as f:
                head = f"{os.cpu_count()} cores; {args.burst_rounds} interleaved rounds, each server fresh"
                body = "\n".join(summary)
                f.write(f"\n## Upload burst, {time.strftime('%Y-%m-%d %H:%M')}\n\n{head}\n\n```\n{body}\n```\n")
    finally:
        _stop_moto()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    if len(sys.argv) > 2 and sys.argv[1] == "_serve":
        serve_args = argparse.ArgumentParser()
        serve_args.add_argument("kind", choices=["stream-min", "uploadfile"])
        serve_args.add_argument("--port", type=int, required=True)
        serve_args.add_argument("--dest", type=Path, required=True)
        serve_args.add_argument("--max-mb", type=int, default=2048)
        serve_args.add_argument("--count", action="store_true")
        opts = serve_args.parse_args(sys.argv[2:])
        _serve(opts.kind, opts.port, opts.dest, opts.max_mb, opts.count)
    else:
        main()
