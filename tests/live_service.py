"""One live ``maie serve`` (embedded Redis + a tiny.en worker) shared by the client, docs and web UI tests.

Import the fixture into a test module (``from live_service import live_service``). The service is started
once per pytest session whichever module asks first, and stopped when the session ends.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from service import API_KEY, Service, start_service

JFK = Path(__file__).resolve().parents[2] / "shared" / "audio" / "jfk.flac"
JFK_PHRASE = "ask not what your country"

_shared: Service | None = None


@pytest.fixture(scope="session")
def live_service(tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest) -> Service:
    global _shared
    if not JFK.is_file():
        pytest.fail(f"reference audio not found at {JFK}")
    if _shared is None or _shared.proc.poll() is not None:
        svc = start_service(tmp_path_factory.mktemp("live") / "data")
        request.config.add_cleanup(svc.stop)
        try:
            svc.wait_ready()
        except Exception:
            svc.stop()
            raise
        _shared = svc
    return _shared


__all__ = ["API_KEY", "JFK", "JFK_PHRASE", "live_service"]
