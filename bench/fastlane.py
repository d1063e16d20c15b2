"""Fast-lane benchmark: latency of a synchronous OpenAI request (jfk.flac, 11 s) with long jobs queued.

    PYTHONPATH=src python bench/fastlane.py                      # this tree
    python bench/fastlane.py --src /work/main/src --label main   # another tree (e.g. before the fast lane)

Per trial: a fresh backlog of ``--backlog`` long ``/v1/process`` jobs (``--long-s`` seconds of speech made
from two_speakers_sample.wav, raw transcript only) is queued, then one ``POST /v1/audio/transcriptions``
is timed from its first byte to the response; the remaining backlog is then deleted and the worker left
to go idle. One ``maie serve`` (embedded Redis, one worker) serves all trials. Prints p50/p95 (nearest
rank) and the samples as JSON.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np
import soundfile as sf

ROOT = Path(__file__).resolve().parents[1]
AUDIO = ROOT.parent / "shared" / "audio"
API_KEY = "bench-" + secrets.token_hex(8)


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def long_wav(seconds: float) -> bytes:
    samples, rate = sf.read(AUDIO / "two_speakers_sample.wav", dtype="float32")
    repeats = int(np.ceil(seconds * rate / len(samples)))
    data = np.tile(samples, (repeats, 1) if samples.ndim == 2 else repeats)[: int(seconds * rate)]
    out = io.BytesIO()
    sf.write(out, data, rate, format="WAV", subtype="PCM_16")
    return out.getvalue()


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[max(0, min(len(ordered) - 1, int(np.ceil(q * len(ordered))) - 1))]


def wait_idle(client: httpx.Client, timeout_s: float = 600) -> None:
    """Until no task of ours is still queued or running."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        tasks = client.get("/v1/tasks").json()
        items = tasks.get("tasks", tasks) if isinstance(tasks, dict) else tasks
        if all(t["status"] in ("COMPLETE", "FAILED", "CANCELLED") for t in items):
            return
        time.sleep(0.5)
    raise TimeoutError("the service did not go idle")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--src", default=str(ROOT / "src"), help="the maie source tree to serve")
    parser.add_argument("--label", default="this tree")
    parser.add_argument("--trials", type=int, default=3)
    parser.add_argument("--backlog", type=int, default=5)
    parser.add_argument("--long-s", type=float, default=90.0)
    args = parser.parse_args()

    port = _port()
    data = Path(tempfile.mkdtemp(prefix="maie-fastlane-"))
    env = {
        **os.environ,
        "PYTHONPATH": args.src,
        "MAIE_DATA_DIR": str(data / "data"),
        "MAIE_API_KEYS": API_KEY,
        "MAIE_REDIS_URL": "",
        "MAIE_DISK_FLOOR_MB": "0",
        "MAIE_RATE_LIMIT": "1000/minute",
    }
    log = (data / "serve.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "maie", "serve", "--port", str(port), "--workers", "1"],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    base = f"http://127.0.0.1:{port}"
    long_body = long_wav(args.long_s)
    jfk = (AUDIO / "jfk.flac").read_bytes()
    samples: list[float] = []
    try:
        deadline = time.monotonic() + 180
        while True:
            try:
                if httpx.get(base + "/health/ready", timeout=5).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline or proc.poll() is not None:
                raise SystemExit("service did not become ready")
            time.sleep(0.5)
        with httpx.Client(base_url=base, headers={"X-API-Key": API_KEY}, timeout=900) as client:
            # warm-up: the first request pays for model loading
            client.post("/v1/audio/transcriptions", data={"model": "whisper-1"}, files={"file": ("jfk.flac", jfk)})
            for _ in range(args.trials):
                backlog = [
                    client.post("/v1/process", files={"file": ("long.wav", long_body)}).json()["task_id"]
                    for _ in range(args.backlog)
                ]
                time.sleep(1.0)  # the worker has taken the first long job
                started = time.perf_counter()
                r = client.post(
                    "/v1/audio/transcriptions", data={"model": "whisper-1"}, files={"file": ("jfk.flac", jfk)}
                )
                samples.append(time.perf_counter() - started)
                assert r.status_code == 200 and "country" in r.json()["text"].lower(), r.text
                for task_id in backlog:
                    client.delete(f"/v1/tasks/{task_id}")
                wait_idle(client)
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
    result = {
        "label": args.label,
        "backlog": args.backlog,
        "long_s": args.long_s,
        "trials": args.trials,
        "p50_s": round(percentile(samples, 0.5), 2),
        "p95_s": round(percentile(samples, 0.95), 2),
        "samples_s": [round(s, 2) for s in samples],
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
