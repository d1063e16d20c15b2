"""A real ``maie serve`` process (embedded Redis + worker) for tests that go over HTTP."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import httpx
import psutil

if TYPE_CHECKING:
    import redis

API_KEY = "test-key-0123456789"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Service:
    proc: subprocess.Popen[bytes]
    base_url: str
    data_dir: Path
    log_path: Path

    @property
    def headers(self) -> dict[str, str]:
        return {"X-API-Key": API_KEY}

    def client(self, **kwargs: object) -> httpx.Client:
        return httpx.Client(base_url=self.base_url, headers=self.headers, timeout=60, **kwargs)  # type: ignore[arg-type]

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def children(self) -> list[psutil.Process]:
        try:
            return psutil.Process(self.proc.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            return []

    def wait_ready(self, timeout_s: float = 120.0, *, need_worker: bool = True) -> None:
        deadline = time.monotonic() + timeout_s
        last = ""
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"maie serve exited with {self.proc.returncode}:\n{self.log()[-4000:]}")
            try:
                r = httpx.get(self.base_url + "/health/ready", timeout=5)
                last = r.text
                body = r.json()
                if r.status_code == 200 or (not need_worker and body["checks"]["redis"]["ok"]):
                    return
            except httpx.HTTPError as exc:
                last = repr(exc)
            time.sleep(0.3)
        raise TimeoutError(f"service not ready: {last}\n{self.log()[-4000:]}")

    def stop(self, timeout_s: float = 30.0) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def start_service(
    data_dir: Path,
    *,
    workers: int = 1,
    env: dict[str, str] | None = None,
    port: int | None = None,
    new_session: bool = False,
) -> Service:
    """``new_session``: run it as a terminal would, its own process group (for Ctrl-C to the group)."""
    port = port or free_port()
    # The parent only: ``maie serve`` creates the data dir itself (0700), as it does for an operator.
    data_dir.parent.mkdir(parents=True, exist_ok=True)
    log_path = data_dir.parent / f"serve-{port}.log"
    full_env = {
        **os.environ,
        "MAIE_DATA_DIR": str(data_dir),
        "MAIE_API_KEYS": API_KEY,
        "MAIE_REDIS_URL": "",
        "MAIE_DISK_FLOOR_MB": "0",
        **(env or {}),
    }
    with open(log_path, "ab") as log_file:
        proc = subprocess.Popen(
            [sys.executable, "-m", "maie", "serve", "--port", str(port), "--workers", str(workers)],
            env=full_env,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=new_session,
        )
    return Service(proc=proc, base_url=f"http://127.0.0.1:{port}", data_dir=data_dir, log_path=log_path)


def wait_terminal(client: httpx.Client, task_id: str, timeout_s: float = 300.0) -> dict:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        r = client.get(f"/v1/status/{task_id}")
        r.raise_for_status()
        record = r.json()
        if record["status"] in ("COMPLETE", "FAILED", "CANCELLED"):
            return record
        time.sleep(0.2)
    raise TimeoutError(f"task {task_id} not terminal after {timeout_s}s: {record}")


@dataclass
class TcpRedis:
    """A redis-server of the test's own on a TCP port (no password), for tests that read or corrupt
    records directly: pass ``url`` to ``start_service`` as MAIE_REDIS_URL."""

    proc: subprocess.Popen[bytes]
    url: str

    def client(self) -> redis.Redis:
        import redis

        return redis.Redis.from_url(self.url)

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=10)


def start_redis_tcp(work_dir: Path) -> TcpRedis:
    import redis

    from maie.jobs.redis_server import redis_server_binary

    port = free_port()
    work_dir.mkdir(parents=True, exist_ok=True)
    proc = subprocess.Popen(
        [
            redis_server_binary(),
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(work_dir),
            "--maxclients",
            "10000",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        stdin=subprocess.DEVNULL,
    )
    url = f"redis://127.0.0.1:{port}/0"
    deadline = time.monotonic() + 10
    while True:
        try:
            if redis.Redis.from_url(url, socket_connect_timeout=0.5).ping():
                return TcpRedis(proc, url)
        except redis.RedisError:
            if time.monotonic() > deadline:
                proc.kill()
                raise
            time.sleep(0.1)
