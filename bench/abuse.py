"""Hostile-input benchmark: peak API memory and worst /health latency while the abuse corpus runs.

    PYTHONPATH=src python bench/abuse.py

One fresh ``maie serve`` (embedded Redis, no worker, MAIE_MAX_UPLOAD_MB=4 as in tests/test_bad_input.py).
The corpus: every case of ``tests/test_bad_input.py``'s ``CASES`` (shared, not copied), then the attacks
of ``tests/test_abuse_http.py``: a 160 MB header line and a 160 MB request line sent unauthenticated,
200 idle unauthenticated connections held open, a head trickled byte by byte, an upload that stops
mid-way. Meanwhile a second client GETs /health every 20 ms and the API process's RSS is sampled every
20 ms (``Probe``); growth is peak RSS minus RSS before the corpus.
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from test_abuse_http import ATTACKS, Probe, huge_head_attack, raw_socket, read_reply  # noqa: E402
from test_bad_input import CASES, MAX_UPLOAD_MB, multipart, wav  # noqa: E402

from service import API_KEY, Service, start_service  # noqa: E402

MiB = 1024 * 1024


def stalled_upload(svc: Service) -> bytes:
    body, headers = multipart([("file", "a.wav", wav(5.0))])
    head = (
        f"POST /v1/process HTTP/1.1\r\nHost: 127.0.0.1\r\nX-API-Key: {API_KEY}\r\n"
        f"Content-Type: {headers['Content-Type']}\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode()
    with raw_socket(svc) as sock:
        sock.sendall(head + body[: len(body) // 2])
        return read_reply(sock, timeout_s=15)


def idle_connections(svc: Service, n: int) -> int:
    socks = [raw_socket(svc) for _ in range(n)]
    time.sleep(1.0)
    for s in socks:
        s.close()
    return n


def trickled_head(svc: Service) -> bytes:
    with raw_socket(svc) as sock:
        sock.sendall(b"GET /health HTTP/1.1\r\n")
        sock.settimeout(0.5)
        for _ in range(20):
            try:
                sock.sendall(b"X")
                if reply := sock.recv(65536):
                    return reply
            except TimeoutError:
                continue
            except OSError:
                break
    return b""


def main() -> None:
    env = {
        "MAIE_MAX_UPLOAD_MB": str(MAX_UPLOAD_MB),
        "MAIE_UPLOAD_IDLE_TIMEOUT_S": "2",
        "MAIE_HTTP_HEADER_TIMEOUT_S": "3",
    }
    results: dict[str, object] = {}
    with tempfile.TemporaryDirectory() as tmp:
        svc = start_service(Path(tmp) / "data", workers=0, env=env)
        try:
            svc.wait_ready(need_worker=False)
            t0 = time.monotonic()
            with Probe(svc) as probe:
                unexpected = []
                with svc.client() as client:
                    for name, call, status, code in CASES:
                        r = call(client)
                        if r.status_code != status or r.json().get("code") != code:
                            unexpected.append((name, r.status_code))
                results["corpus_cases"] = len(CASES)
                results["corpus_unexpected"] = unexpected
                for where, prefix in ATTACKS.items():
                    sent, reply = huge_head_attack(svc, prefix)
                    results[f"huge_{where}"] = {"bytes_taken": sent, "reply": reply[:40].decode(errors="replace")}
                results["idle_connections"] = idle_connections(svc, 200)
                results["trickled_head"] = trickled_head(svc)[:40].decode(errors="replace")
                results["stalled_upload"] = stalled_upload(svc)[:40].decode(errors="replace")
            results["elapsed_s"] = round(time.monotonic() - t0, 1)
            results["health_samples"] = len(probe.latencies)
            results["worst_health_latency_ms"] = round(probe.worst_latency_s * 1000, 1)
            results["api_rss_before_mib"] = round(probe.rss_before / MiB, 1)
            results["api_rss_peak_growth_mib"] = round(probe.rss_growth / MiB, 1)
        finally:
            svc.stop()
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
