"""Recordings stay private on the machine: a closed embedded Redis, private files, secrets kept in.

Real ``maie serve`` processes, a real redis-server, and a probe run as another Unix user (``nobody``
through ``setpriv``) that tries to connect to the Redis socket and read every file of the data dir. The
same probe run as the owner succeeds, so the test fails if the protection is not there.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import signal
import socket
import ssl
import stat
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import psutil
import pytest
import redis

from maie.config import Settings
from maie.jobs.queue import connect
from maie.jobs.redis_server import DISABLED_COMMANDS, EmbeddedRedis, redis_server_binary
from maie.logs import configure_logging

from service import Service, free_port, start_service, wait_terminal

pytestmark = pytest.mark.slow

NOBODY = 65534
ADMIN_KEY = "admin-key-0123456789abcdef"
PROBE_PYTHON = "/usr/bin/python3"  # the system interpreter: any user can run it, unlike a venv under /root
PROBE = r"""
import json, os, socket, sys
paths = json.load(sys.stdin)
out = {"uid": os.getuid(), "socket": None, "read": [], "denied": []}
s = socket.socket(socket.AF_UNIX)
s.settimeout(5)
try:
    s.connect(paths["socket"])
    s.sendall(b"PING\r\n")
    out["socket"] = s.recv(200).decode(errors="replace").strip()
except OSError as exc:
    out["socket"] = "refused: " + (exc.strerror or repr(exc))
for path in paths["files"]:
    try:
        with open(path, "rb") as f:
            f.read(16)
        out["read"].append(path)
    except OSError:
        out["denied"].append(path)
for path in paths["dirs"]:
    try:
        os.listdir(path)
        out["read"].append(path)
    except OSError:
        out["denied"].append(path)
print(json.dumps(out))
"""


def probe(as_nobody: bool, socket_path: Path, data_dir: Path) -> dict:
    files = sorted(str(p) for p in data_dir.rglob("*") if p.is_file() and not p.is_socket())
    dirs = sorted([str(data_dir), *(str(p) for p in data_dir.rglob("*") if p.is_dir())])
    prefix = ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups"] if as_nobody else []
    run = subprocess.run(
        [*prefix, PROBE_PYTHON, "-c", PROBE],
        input=json.dumps({"socket": str(socket_path), "files": files, "dirs": dirs}),
        capture_output=True,
        text=True,
        timeout=60,
        cwd="/",
    )
    assert run.returncode == 0, run.stderr
    result = json.loads(run.stdout)
    result["files"], result["dirs"] = files, dirs
    return result


@pytest.fixture
def open_base() -> Iterator[Path]:
    """A parent directory every user can enter (pytest's own tmp is 0700 and would hide everything)."""
    base = Path(tempfile.mkdtemp(prefix="maie-priv-", dir="/tmp"))
    os.chmod(base, 0o755)
    try:
        yield base
    finally:
        shutil.rmtree(base, ignore_errors=True)


def redis_children(svc: Service) -> list[psutil.Process]:
    found = []
    for child in svc.children():
        try:
            if "redis-server" in " ".join(child.cmdline()):
                found.append(child)
        except psutil.NoSuchProcess:  # e.g. the AOF rewrite's fork, just ended
            continue
    return found


def wait_for_aof_rewrite(client: redis.Redis) -> None:
    """Until a background AOF rewrite has ended and its fork (a second redis-server) is reaped."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        info = client.info("persistence")
        if not info["aof_rewrite_in_progress"] and not info["aof_rewrite_scheduled"]:
            return
        time.sleep(0.05)
    raise AssertionError("the AOF rewrite did not end within 30 s")


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_other_users_cannot_reach_redis_or_read_the_data_dir(open_base: Path, shared_audio: Path) -> None:
    data = open_base / "data"
    svc = start_service(data, workers=1, env={"MAIE_API_KEYS": ""})
    try:
        svc.wait_ready()
        key = (data / "api_key").read_text().strip()
        with httpx.Client(base_url=svc.base_url, headers={"X-API-Key": key}, timeout=60) as client:
            with (shared_audio / "jfk.flac").open("rb") as f:
                task_id = client.post("/v1/process", files={"file": ("jfk.flac", f)}).json()["task_id"]
            assert wait_terminal(client, task_id)["status"] == "COMPLETE"
        time.sleep(1.5)  # appendfsync everysec: the results reach the AOF
        [redis_proc] = redis_children(svc)
        # No TCP at all: the only way in is the unix socket.
        assert redis_proc.net_connections(kind="inet") == []
        socket_path = data / "redis" / "redis.sock"
        assert stat.S_ISSOCK(socket_path.stat().st_mode)
        aof = data / "redis" / "appendonly.aof"
        assert "ask not what your country" in aof.read_text(errors="replace").lower()  # transcripts live there

        # Modes: the data dir and every directory under it 0700, every file 0600.
        audio = data / "audio" / task_id / "source.flac"
        assert audio.exists()
        assert mode(data) == 0o700
        for path in (data / "audio", data / "audio" / task_id, data / "redis"):
            assert mode(path) == 0o700, path
        for path in (audio, aof, data / "api_key", data / "redis" / "password", data / "redis" / "redis.conf"):
            assert mode(path) == 0o600, (path, oct(mode(path)))
        assert mode(socket_path) & 0o077 == 0
        for path in data.rglob("*"):
            if not path.is_socket():
                assert mode(path) & 0o077 == 0, (path, oct(mode(path)))

        owner = probe(False, socket_path, data)
        other = probe(True, socket_path, data)
    finally:
        svc.stop()
    # The owner reaches everything (Redis answers, and asks for the password) ...
    assert owner["uid"] == 0 and "NOAUTH" in owner["socket"], owner
    assert owner["denied"] == [] and len(owner["read"]) == len(owner["files"]) + len(owner["dirs"])
    assert str(audio) in owner["read"] and str(aof) in owner["read"]
    # ... another user reaches nothing: no connection, no file, no listing.
    assert other["uid"] == NOBODY
    assert other["socket"].startswith("refused"), other
    assert other["read"] == [], other["read"]
    assert len(other["denied"]) == len(other["files"]) + len(other["dirs"]) > 5


def test_redis_needs_the_password_and_refuses_dangerous_commands_with_it(tmp_path: Path) -> None:
    data = tmp_path / "data"
    svc = start_service(data, workers=0)
    try:
        svc.wait_ready(need_worker=False)
        socket_path = str(data / "redis" / "redis.sock")
        with pytest.raises(redis.AuthenticationError):
            redis.Redis(unix_socket_path=socket_path).ping()
        with pytest.raises(redis.AuthenticationError):
            redis.Redis(unix_socket_path=socket_path, password="wrong").ping()
        password = (data / "redis" / "password").read_text().strip()
        client = redis.Redis(unix_socket_path=socket_path, password=password)
        assert client.ping()
        for command in (
            ("CONFIG", "GET", "dir"),
            ("CONFIG", "SET", "dir", "/tmp"),
            ("DEBUG", "OBJECT", "x"),
            ("MODULE", "LIST"),
            ("SAVE",),
            ("BGSAVE",),
            ("SLAVEOF", "127.0.0.1", "1"),
            ("REPLICAOF", "127.0.0.1", "1"),
            ("MIGRATE", "127.0.0.1", "1", "k", "0", "1000"),
            ("SHUTDOWN", "NOSAVE"),
            ("ACL", "LIST"),
        ):
            with pytest.raises(redis.ResponseError, match="unknown command"):
                client.execute_command(*command)
        # Not from Lua either (scripts look commands up in the same table).
        with pytest.raises(redis.ResponseError, match="Unknown Redis command"):
            client.eval("return redis.call('CONFIG', 'GET', 'dir')", 0)
        assert {c.split()[0] for c in DISABLED_COMMANDS} >= {"CONFIG", "DEBUG", "MODULE", "SAVE", "BGSAVE"}
        # What the service needs still works: AOF rewrite, pub/sub (SSE), CLIENT SETNAME (RQ), scripts.
        assert client.bgrewriteaof()
        assert client.client_setname("probe") and client.client_getname() in ("probe", b"probe")
        assert client.eval("return redis.call('PING')", 0) == b"PONG"
        # The password is nowhere on a command line (every local user can read those).
        wait_for_aof_rewrite(client)  # else its fork is a second redis-server for a moment
        [redis_proc] = redis_children(svc)
        for proc in [psutil.Process(svc.proc.pid), *svc.children()]:
            try:
                cmdline = proc.cmdline()
            except psutil.NoSuchProcess:  # e.g. the AOF rewrite's fork, just ended
                continue
            assert password not in " ".join(cmdline), cmdline
        assert redis_proc.is_running()
    finally:
        svc.stop()
    assert password not in svc.log()


def test_generated_key_is_shown_once_then_only_where_it_is(tmp_path: Path) -> None:
    data = tmp_path / "data"
    svc = start_service(data, workers=0, env={"MAIE_API_KEYS": ""})
    try:
        svc.wait_ready(need_worker=False)
    finally:
        svc.stop()
    key = (data / "api_key").read_text().strip()
    first = svc.log()
    assert first.count(key) == 1
    svc = start_service(data, workers=0, env={"MAIE_API_KEYS": ""})
    try:
        svc.wait_ready(need_worker=False)
        assert httpx.get(svc.base_url + "/v1/tasks", headers={"X-API-Key": key}).status_code == 200
    finally:
        svc.stop()
    second = svc.log()  # a new port, so a new log file
    assert "MAIE is up" in second
    assert key not in second
    assert f"stored in {data / 'api_key'}" in second


def test_data_dir_from_the_previous_release_still_starts_and_keeps_its_tasks(tmp_path: Path) -> None:
    """The previous release: redis on a TCP port, no password, AOF in data/redis, modes 0755/0644."""
    data = tmp_path / "data"
    redis_dir = data / "redis"
    old_umask = os.umask(0o022)
    try:
        redis_dir.mkdir(parents=True)
        port = free_port()
        old = subprocess.Popen(
            [redis_server_binary(), "--port", str(port), "--bind", "127.0.0.1", "--dir", str(redis_dir),
             "--appendonly", "yes", "--appendfsync", "everysec", "--save", "", "--protected-mode", "yes",
             "--logfile", str(redis_dir / "redis.log")],
            stdin=subprocess.DEVNULL,
        )  # fmt: skip
        try:
            client = _wait_for(f"redis://127.0.0.1:{port}/0")
            # The task hash as the previous release wrote it (no owner, no per-key index).
            client.hset(
                "maie:task:old-task-1",
                mapping={
                    "task_id": "old-task-1",
                    "status": "COMPLETE",
                    "stage": "COMPLETE",
                    "progress": "1.0",
                    "submitted_at": "2026-11-30T10:00:00.000Z",
                    "completed_at": "2026-11-30T10:01:00.000Z",
                    "filename": "old.flac",
                    "options": json.dumps({"features": ["raw_transcript"]}),
                    "results": json.dumps({"raw_transcript": "an old transcript"}),
                    "attempts": "1",
                    "updated_at": str(time.time()),
                },
            )
            client.zadd("maie:tasks", {"old-task-1": time.time()})
            client.close()
        finally:
            old.send_signal(signal.SIGTERM)
            old.wait(10)
        (data / "audio" / "old-task-1").mkdir(parents=True)
        (data / "audio" / "old-task-1" / "source.flac").write_bytes(b"fLaC")
    finally:
        os.umask(old_umask)
    assert mode(data) == 0o755 and mode(redis_dir / "appendonly.aof") == 0o644
    # Tasks from before owners existed are visible to admin keys only (see test_tenancy).
    svc = start_service(data, workers=0, env={"MAIE_ADMIN_KEYS": f"root:{ADMIN_KEY}"})
    try:
        svc.wait_ready(need_worker=False)
        with httpx.Client(base_url=svc.base_url, headers={"X-API-Key": ADMIN_KEY}, timeout=60) as client:
            r = client.get("/v1/status/old-task-1")
        assert r.status_code == 200, r.text
        assert r.json()["status"] == "COMPLETE" and r.json()["filename"] == "old.flac"
        assert r.json()["results"]["raw_transcript"] == "an old transcript"
        [redis_proc] = redis_children(svc)
        assert redis_proc.net_connections(kind="inet") == []  # the old TCP port is gone
        assert mode(redis_dir) == 0o700  # the socket's directory is tightened (it is ours alone)
        assert mode(redis_dir / "password") == 0o600
    finally:
        svc.stop()
    log = svc.log()
    # Wider modes left by the old release are reported, not refused and not silently changed.
    assert "data dir is not private" in log and "0755" in log and "chmod -R go-rwx" in log
    assert mode(data) == 0o755
    doctor = subprocess.run(
        [sys.executable, "-m", "maie", "doctor"],
        env={**os.environ, "MAIE_DATA_DIR": str(data), "MAIE_REDIS_URL": ""},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert "warn data dir modes: data dir is not private" in doctor.stdout, doctor.stdout
    assert "audio/old-task-1" in doctor.stdout


def _wait_for(url: str) -> redis.Redis:
    client = redis.Redis.from_url(url)
    deadline = time.monotonic() + 10
    while True:
        try:
            client.ping()
            return client
        except (redis.ConnectionError, redis.BusyLoadingError):
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


DOCUMENTED_ACL = "~* &* +@all -@dangerous +client +info"
"""The ACL docs/deployment.md suggests for MAIE's user (after ``>PASSWORD``): the test proves it is enough."""


@pytest.fixture
def acl_redis(tmp_path: Path) -> Iterator[tuple[int, str]]:
    """An external Redis on loopback with an ACL user (and the default user switched off)."""
    port = free_port()
    secret = "hunter2-" + os.urandom(6).hex()
    proc = subprocess.Popen(
        [redis_server_binary(), "--port", str(port), "--bind", "127.0.0.1", "--dir", str(tmp_path),
         "--save", "", "--appendonly", "no", "--user", "default", "off",
         "--user", "maie", "on", f">{secret}", *DOCUMENTED_ACL.split()],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        _wait_for(f"redis://maie:{secret}@127.0.0.1:{port}/0").close()
        yield port, secret
    finally:
        proc.terminate()
        proc.wait(10)


def test_external_redis_with_an_acl_user_works_and_its_password_is_never_shown(
    acl_redis: tuple[int, str], tmp_path: Path, shared_audio: Path
) -> None:
    port, secret = acl_redis
    url = f"redis://maie:{secret}@127.0.0.1:{port}/0"
    svc = start_service(tmp_path / "data", workers=0, env={"MAIE_REDIS_URL": url, "MAIE_RATE_LIMIT": "100/minute"})
    try:
        svc.wait_ready(need_worker=False)
        with svc.client() as client, (shared_audio / "jfk.flac").open("rb") as f:
            r = client.post("/v1/process", files={"file": ("jfk.flac", f)})
            assert r.status_code == 202, r.text  # queue, store and rate limiter all went through the ACL user
            assert r.headers["RateLimit-Remaining"] == "99"
        # A worker on the same URL takes the task, and logs where it is connected without the password.
        worker = subprocess.run(
            [sys.executable, "-m", "maie", "worker", "--burst"],
            env={**os.environ, "MAIE_REDIS_URL": url, "MAIE_DATA_DIR": str(svc.data_dir)},
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert worker.returncode == 0, worker.stderr[-3000:]
        assert secret not in worker.stdout + worker.stderr
        with svc.client() as client:
            assert wait_terminal(client, r.json()["task_id"])["status"] == "COMPLETE"
    finally:
        svc.stop()
    assert secret not in svc.log()
    # doctor: the URL shown with its password masked, in the settings and in the check line.
    doctor = subprocess.run(
        [sys.executable, "-m", "maie", "doctor"],
        env={**os.environ, "MAIE_DATA_DIR": str(tmp_path / "data"), "MAIE_REDIS_URL": url},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert secret not in doctor.stdout + doctor.stderr
    assert f"redis://maie:***@127.0.0.1:{port}/0" in doctor.stdout
    assert "ok   redis: redis://maie:***@" in doctor.stdout


def test_doctor_redacts_passwords_in_failures(tmp_path: Path) -> None:
    dead = free_port()
    env = {
        **os.environ,
        "MAIE_DATA_DIR": str(tmp_path / "data"),
        "MAIE_REDIS_URL": f"rediss://:s3cr3t-redis@127.0.0.1:{dead}/0",
        "MAIE_LLM__BASE_URL": f"http://llm-user:s3cr3t-llm@127.0.0.1:{dead}/v1",
    }
    run = subprocess.run([sys.executable, "-m", "maie", "doctor"], env=env, capture_output=True, text=True, timeout=120)
    assert run.returncode == 1  # Redis and the LLM are unreachable
    assert "s3cr3t" not in run.stdout + run.stderr, run.stdout
    assert f"rediss://:***@127.0.0.1:{dead}/0" in run.stdout
    assert "FAIL redis" in run.stdout and "FAIL llm" in run.stdout


@pytest.mark.parametrize("log_format", ["text", "json"])
def test_log_lines_never_carry_url_passwords(log_format: str, capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging(Settings(log_format=log_format))
    log = logging.getLogger("maie.test")
    try:
        log.warning("connecting to %s", "redis://maie:pa55-word@redis.internal:6379/0")
        log.warning("embedded at unix://:0123abcd@/var/lib/maie/redis/redis.sock?db=0 and rediss://u:p%40ss@h/1")
        try:
            raise ConnectionError("could not reach redis://default:tr4ceback-secret@10.0.0.5:6379")
        except ConnectionError:
            log.exception("failed")
        log.warning("query form: redis://h:6379/0?password=qu3ry-secret&db=2")
    finally:
        logging.getLogger().handlers[:] = []
    err = capsys.readouterr().err
    for secret in ("pa55-word", "0123abcd", "p%40ss", "tr4ceback-secret", "qu3ry-secret"):
        assert secret not in err, err
    assert "redis://maie:***@redis.internal:6379/0" in err
    assert "unix://:***@/var/lib/maie/redis/redis.sock" in err
    assert "redis://default:***@10.0.0.5:6379" in err  # inside the traceback too
    assert "password=***&db=2" in err


def test_clients_accept_every_url_form() -> None:
    for url in (
        "unix://:pw@/run/maie/redis.sock?db=0",
        "redis://user:pw@127.0.0.1:6379/0",
        "rediss://:pw@127.0.0.1:6380/0",
    ):
        kwargs = redis.connection.parse_url(url)
        assert kwargs["password"] == "pw"
        connect(url).close()


def test_deep_data_dir_gets_a_private_socket_dir_elsewhere(tmp_path: Path) -> None:
    deep = tmp_path / ("d" * 60) / ("e" * 60)
    embedded = EmbeddedRedis(deep)
    with embedded:
        socket_dir = embedded.socket_path.parent
        assert not socket_dir.is_relative_to(deep) and len(str(embedded.socket_path)) <= 100
        assert mode(socket_dir) == 0o700
        client = connect(embedded.url)
        assert client.ping() and client.set("k", "v")
        client.close()
        redis_dir_modes = mode(deep / "redis")
    assert redis_dir_modes == 0o700
    assert not socket_dir.exists()  # removed with the server
    assert (deep / "redis" / "appendonly.aof").exists()


class TlsTerminator:
    """A TLS front for a plain Redis (this redis-server build has no TLS): real TLS on the client side."""

    def __init__(self, backend_port: int, cert: Path, key: Path) -> None:
        self.ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self.ctx.load_cert_chain(cert, key)
        self.backend_port = backend_port
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.handshakes = 0
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                raw, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(raw,), daemon=True).start()

    def _serve(self, raw: socket.socket) -> None:
        try:
            client = self.ctx.wrap_socket(raw, server_side=True)
        except (ssl.SSLError, OSError):
            raw.close()
            return
        self.handshakes += 1
        backend = socket.create_connection(("127.0.0.1", self.backend_port))

        def pump(src: socket.socket, dst: socket.socket) -> None:
            try:
                while data := src.recv(65536):
                    dst.sendall(data)
            except OSError:
                pass
            finally:
                for s in (src, dst):
                    with contextlib.suppress(OSError):
                        s.close()

        threading.Thread(target=pump, args=(backend, client), daemon=True).start()
        pump(client, backend)

    def close(self) -> None:
        self.listener.close()


def test_external_redis_over_tls(tmp_path: Path, shared_audio: Path) -> None:
    port, password = free_port(), "tls-" + os.urandom(6).hex()
    proc = subprocess.Popen(
        [redis_server_binary(), "--port", str(port), "--bind", "127.0.0.1", "--dir", str(tmp_path), "--save", "",
         "--requirepass", password],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
    )  # fmt: skip
    key, cert = tmp_path / "redis.key", tmp_path / "redis.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1",
         "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
        check=True,
        capture_output=True,
    )  # fmt: skip
    tls = TlsTerminator(port, cert, key)
    url = f"rediss://:{password}@127.0.0.1:{tls.port}/0?ssl_cert_reqs=required&ssl_ca_certs={cert}"
    try:
        _wait_for(f"redis://:{password}@127.0.0.1:{port}/0").close()
        svc = start_service(tmp_path / "data", workers=0, env={"MAIE_REDIS_URL": url})
        try:
            svc.wait_ready(need_worker=False)
            with svc.client() as client, (shared_audio / "jfk.flac").open("rb") as f:
                r = client.post("/v1/process", files={"file": ("jfk.flac", f)})
                assert r.status_code == 202, r.text
                assert client.get(f"/v1/status/{r.json()['task_id']}").json()["status"] == "PENDING"
        finally:
            svc.stop()
        assert tls.handshakes >= 3  # sync store, async client, rate limiter: all over TLS
        assert password not in svc.log()
        # A certificate the client does not trust is refused, not silently accepted.
        untrusted = url.replace(f"&ssl_ca_certs={cert}", "")
        with pytest.raises(redis.ConnectionError, match="certificate verify failed"):
            connect(untrusted).ping()
    finally:
        tls.close()
        proc.terminate()
        proc.wait(10)


def test_maie_process_writes_private_files(tmp_path: Path, shared_audio: Path) -> None:
    """The umask is set for every command, not only serve: a local run's transcript is private too."""
    out = tmp_path / "out"
    old_umask = os.umask(0o022)  # what a login shell typically has
    try:
        run = subprocess.run(
            [sys.executable, "-m", "maie", "process", str(shared_audio / "jfk.flac"), "-o", str(out)],
            env={**os.environ, "MAIE_DATA_DIR": str(tmp_path / "data"), "MAIE_REDIS_URL": ""},
            capture_output=True,
            text=True,
            timeout=600,
        )
    finally:
        os.umask(old_umask)
    assert run.returncode == 0, run.stderr[-2000:]
    [transcript] = out.iterdir()
    assert "ask not what your country" in transcript.read_text().lower()
    assert mode(out) == 0o700 and mode(transcript) == 0o600
