"""Per-key rate limit on submissions (``MAIE_RATE_LIMIT``), shared by every API process through Redis."""

from __future__ import annotations

import hashlib
import math
import time
from typing import Annotated

from fastapi import Depends, Request, Response
from limits import parse
from limits.storage import RedisStorage
from limits.strategies import MovingWindowRateLimiter

from maie.api.deps import CallerDep
from maie.errors import ErrorCode, MaieError
from maie.jobs.queue import LIMITS_POOL_SIZE, connect


def limits_url(redis_url: str) -> str:
    """The same Redis for ``limits``: it spells unix sockets ``redis+unix://`` (and hands the rest,
    password and ``?db=`` included, to redis-py); ``redis://`` and ``rediss://`` pass through."""
    if redis_url.startswith("unix://"):
        return "redis+unix://" + redis_url.removeprefix("unix://")
    return redis_url


class RateLimiter:
    def __init__(self, redis_url: str, limit: str) -> None:
        self.item = parse(limit)
        # A blocking pool: past its size a burst of submissions waits for a connection (limits' own
        # pool raises "Too many connections", which answered 503 to a burst of 100 uploads).
        pool = connect(redis_url, max_connections=LIMITS_POOL_SIZE).connection_pool
        self.limiter = MovingWindowRateLimiter(RedisStorage(limits_url(redis_url), connection_pool=pool))

    def check(self, key_name: str) -> dict[str, str]:
        """Counts one submission for the key ``key_name``; raises RATE_LIMITED when over. Returns
        RateLimit-* headers."""
        ident = hashlib.sha256(key_name.encode()).hexdigest()[:16]
        allowed = self.limiter.hit(self.item, "submit", ident)
        stats = self.limiter.get_window_stats(self.item, "submit", ident)
        reset = max(0, math.ceil(stats.reset_time - time.time()))
        headers = {
            "RateLimit-Limit": str(self.item.amount),
            "RateLimit-Remaining": str(max(0, stats.remaining)),
            "RateLimit-Reset": str(reset),
        }
        if not allowed:
            raise MaieError(
                ErrorCode.RATE_LIMITED,
                f"rate limit {self.item.amount} per {self.item.get_expiry()}s exceeded; retry in {reset}s",
                headers={**headers, "Retry-After": str(max(1, reset))},
            )
        return headers


def rate_limit(request: Request, response: Response, caller: CallerDep) -> None:
    headers = request.app.state.rate_limiter.check(caller.name)
    response.headers.update(headers)


RateLimitDep = Annotated[None, Depends(rate_limit)]
