"""Replicas: two API processes on one Redis serve any task, and upkeep happens once per event.

One external Redis (with a password, as a real deployment has), two ``maie serve --workers 0`` API
replicas and a separate ``maie worker``. Tasks submitted to one replica are polled, streamed, exported
and deleted through the other; webhooks are delivered once although both replicas run the deliverer;
a worker killed mid-job is requeued once although both replicas run recovery.
"""

from __future__ import annotations

import http.server
import json
import os
import signal
import subprocess
import sys
import threading
import time
import wave
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np
import pytest

from maie.jobs.redis_server import redis_server_binary
from maie.pipeline.audio import decode_file

from service import API_KEY, Service, free_port, start_service, wait_terminal

pytestmark = pytest.mark.slow
REDIS_PASSWORD = "replica-test-password-91c2"


@dataclass
class Cluster:
    redis_url: str
    apis: list[Service]
    data_dir: Path
    env: dict[str, str]
    worker: subprocess.Popen[bytes] | None = None

    def start_worker(self, log: Path) -> subprocess.Popen[bytes]:
        out = log.open("ab")
        self.worker = subprocess.Popen(
            [sys.executable, "-m", "maie", "worker"],
            env={**os.environ, **self.env},
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
        return self.worker


class Receiver(http.server.BaseHTTPRequestHandler):
    received: ClassVar[Counter[str]] = Counter()

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        Receiver.received[body["task_id"]] += 1
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    base = tmp_path_factory.mktemp("replicas")
    port = free_port()
    redis_dir = base / "redis"
    redis_dir.mkdir()
    redis_proc = subprocess.Popen(
        [redis_server_binary(), "--port", str(port), "--bind", "127.0.0.1", "--dir", str(redis_dir),
         "--appendonly", "yes", "--save", "", "--requirepass", REDIS_PASSWORD],
        stdout=subprocess.DEVNULL,
    )  # fmt: skip
    url = f"redis://:{REDIS_PASSWORD}@127.0.0.1:{port}/0"
    data = base / "data"  # file storage: the replicas and the worker share the data dir
    env = {
        "MAIE_REDIS_URL": url,
        "MAIE_DATA_DIR": str(data),
        "MAIE_API_KEYS": API_KEY,
        "MAIE_WEBHOOK_ALLOW_PRIVATE": "true",
        "MAIE_WORKER_HEARTBEAT_S": "1",
        "MAIE_JOB_MAX_ATTEMPTS": "3",
        "MAIE_DISK_FLOOR_MB": "0",
    }
    apis = [start_service(data, workers=0, env=env) for _ in range(2)]
    c = Cluster(redis_url=url, apis=apis, data_dir=data, env=env)
    try:
        for api in apis:
            api.wait_ready(need_worker=False)
        c.start_worker(base / "worker.log")
        apis[0].wait_ready()
        yield c
    finally:
        if c.worker is not None and c.worker.poll() is None:
            c.worker.terminate()
            c.worker.wait(timeout=30)
        for api in apis:
            api.stop()
        redis_proc.terminate()
        redis_proc.wait()


def submit(svc: Service, path: Path, **fields: str) -> str:
    with svc.client() as c, path.open("rb") as f:
        r = c.post("/v1/process", data=fields, files={"file": (path.name, f)})
    assert r.status_code == 202, r.text
    return r.json()["task_id"]


def test_any_replica_serves_any_task(cluster: Cluster, shared_audio: Path) -> None:
    one, two = cluster.apis
    task_id = submit(one, shared_audio / "jfk.flac")
    with two.client() as c:
        events, text, kind = [], [], ""
        with c.stream("GET", f"/v1/tasks/{task_id}/events") as r:
            assert r.status_code == 200
            for line in r.iter_lines():
                if line.startswith("event:"):
                    kind = line[6:].strip()
                elif line.startswith("data:") and kind == "status":
                    events.append(json.loads(line[5:])["status"])
                elif line.startswith("data:"):
                    text.append(json.loads(line[5:])["text"])
        assert events[-1] == "COMPLETE"
        # The worker's live segments reach a replica other than the one that took the upload.
        assert "ask not what your country" in " ".join(text).lower()
        record = wait_terminal(c, task_id)
        assert "ask not what your country" in record["results"]["raw_transcript"].lower()
        srt = c.get(f"/v1/tasks/{task_id}/transcript", params={"format": "srt"})
        assert srt.status_code == 200 and "-->" in srt.text
        assert task_id in [t["task_id"] for t in c.get("/v1/tasks").json()]
        assert c.delete(f"/v1/tasks/{task_id}").status_code == 200
    with one.client() as c:
        assert c.get(f"/v1/status/{task_id}").status_code == 404


def test_webhooks_delivered_once_across_replicas(cluster: Cluster, shared_audio: Path) -> None:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Receiver)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/hook"
        ids = [submit(cluster.apis[i % 2], shared_audio / "jfk.flac", callback_url=url) for i in range(4)]
        with cluster.apis[0].client() as c:
            for task_id in ids:
                assert wait_terminal(c, task_id)["status"] == "COMPLETE"
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline and any(Receiver.received[t] == 0 for t in ids):
                time.sleep(0.2)
            time.sleep(3)  # room for a duplicate to show up
            webhooks = [c.get(f"/v1/status/{t}").json()["webhook"] for t in ids]
        assert [Receiver.received[t] for t in ids] == [1, 1, 1, 1]
        assert all(len(w["attempts"]) == 1 and w["delivered"] for w in webhooks)
    finally:
        server.shutdown()


def test_lost_worker_is_recovered_once_across_replicas(cluster: Cluster, shared_audio: Path, tmp_path: Path) -> None:
    audio = decode_file(shared_audio / "jfk.flac")
    long_wav = tmp_path / "long.wav"
    with wave.open(str(long_wav), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(16000)
        w.writeframes((np.clip(np.tile(audio.samples, 12), -1, 1) * 32767).astype("<i2").tobytes())
    task_id = submit(cluster.apis[0], long_wav)
    with cluster.apis[1].client() as c:
        deadline = time.monotonic() + 120
        while c.get(f"/v1/status/{task_id}").json()["status"] != "PROCESSING_ASR":
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert cluster.worker is not None
        os.kill(cluster.worker.pid, signal.SIGKILL)
        cluster.worker.wait()
        # both replicas run recovery every second; give them several passes before a worker returns
        deadline = time.monotonic() + 30
        while c.get(f"/v1/status/{task_id}").json()["status"] != "PENDING":
            assert time.monotonic() < deadline
            time.sleep(0.2)
        time.sleep(4)
        cluster.start_worker(tmp_path / "worker2.log")
        record = wait_terminal(c, task_id, timeout_s=300)
    assert record["status"] == "COMPLETE", record
    assert record["attempts"] == 2  # requeued once, not once per replica
    requeues = sum(api.log().count(f"task {task_id} requeued") for api in cluster.apis)
    assert requeues == 1
