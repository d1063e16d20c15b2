"""Counters workers write to Redis so that any API process can expose them on ``/metrics``."""

from __future__ import annotations

from typing import cast

import redis

from maie.jobs.store import PREFIX

STATS_KEY = f"{PREFIX}:stats"
STAGE_KEY = f"{PREFIX}:stats:stage:"
STAGE_BUCKETS = (0.1, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0)
"""Upper bounds (seconds) of the stage duration histogram."""


def record_task(client: redis.Redis, status: str, stage_seconds: dict[str, float], audio_s: float | None) -> None:
    pipe = client.pipeline()
    pipe.hincrby(STATS_KEY, f"tasks_{status}", 1)
    if audio_s:
        pipe.hincrbyfloat(STATS_KEY, "audio_seconds", audio_s)
    for stage, seconds in stage_seconds.items():
        key = STAGE_KEY + stage
        for bound in STAGE_BUCKETS:
            if seconds <= bound:
                pipe.hincrby(key, f"le_{bound}", 1)
        pipe.hincrby(key, "count", 1)
        pipe.hincrbyfloat(key, "sum", seconds)
    pipe.execute()


def read_stats(client: redis.Redis) -> tuple[dict[str, float], dict[str, dict[str, float]]]:
    totals = {k.decode(): float(v) for k, v in cast(dict[bytes, bytes], client.hgetall(STATS_KEY)).items()}
    stages: dict[str, dict[str, float]] = {}
    for key in client.scan_iter(match=STAGE_KEY + "*", count=100):
        stage = cast(bytes, key).decode().removeprefix(STAGE_KEY)
        stages[stage] = {k.decode(): float(v) for k, v in cast(dict[bytes, bytes], client.hgetall(key)).items()}
    return totals, stages
