"""SSE fan-out benchmark: N streams on one API process, memory per stream, event latency store -> client.

    PYTHONPATH=src python bench/sse.py --streams 1000 --updates 10

A fresh ``maie serve --workers 0`` on a redis-server of its own (TCP); a worker heartbeat is registered so
readiness is 200 (a real worker would run the task the streams watch). Every stream is a raw asyncio
socket client (cheap). Memory per stream is the marginal cost: (RSS with all streams - RSS with the first
100) / (streams - 100), so one-time costs of the first streams are reported apart. Latency: from the
``TaskStore.update`` call to the event's arrival at each client, over every stream and every update.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from maie.jobs.store import TaskStore  # noqa: E402
from sse_fanout import raise_open_files_limit, registered_worker, run_fanout  # noqa: E402
from test_bad_input import wav  # noqa: E402

from service import start_redis_tcp, start_service  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--streams", type=int, default=1000)
    parser.add_argument("--updates", type=int, default=10)
    args = parser.parse_args()
    raise_open_files_limit()
    with tempfile.TemporaryDirectory() as tmp:
        redis_tcp = start_redis_tcp(Path(tmp) / "redis")
        svc = start_service(Path(tmp) / "data", workers=0, env={"MAIE_REDIS_URL": redis_tcp.url})
        try:
            with registered_worker(redis_tcp.client()):
                svc.wait_ready()
                with svc.client() as client:
                    task_id = client.post("/v1/process", files={"file": ("a.wav", wav())}).json()["task_id"]
                store = TaskStore(redis_tcp.client())
                r = asyncio.run(run_fanout(svc, store, task_id, args.streams, updates=args.updates))
        finally:
            svc.stop()
            redis_tcp.stop()
    out = {
        "streams": r.streams,
        "failed_streams": r.failed,
        "events_missed": r.missed,
        "open_all_s": round(r.open_s, 2),
        "api_rss_before_mib": round(r.rss_before / 2**20, 1),
        "api_rss_all_streams_mib": round(r.rss_open / 2**20, 1),
        "first_100_streams_kib": round((r.rss_warm - r.rss_before) / 1024),
        "kib_per_stream": round(r.kib_per_stream, 1),
        "latency_p50_ms": round(r.percentile(50) * 1000, 1),
        "latency_p95_ms": round(r.percentile(95) * 1000, 1),
        "latency_max_ms": round(max(r.latencies_s) * 1000, 1),
        "ready_codes": sorted(set(r.ready_codes)),
    }
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
