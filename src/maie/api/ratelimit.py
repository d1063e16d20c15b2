"""Per-key rate limit on submissions (``MAIE_RATE_LIMIT``), shared by every API process through Redis."""

from __future__ import annotations

import hashlib
import math
import time
from typing import Annotated

from fastapi import Depends, Request, Response
from limits import parse
from limits.storage import storage_from_string
from limits.strategies import MovingWindowRateLimiter

from maie.api.deps import ApiKeyDep
from maie.errors import ErrorCode, MaieError


class RateLimiter:
    def __init__(self, redis_url: str, limit: str) -> None:
        self.item = parse(limit)
        self.limiter = MovingWindowRateLimiter(storage_from_string(redis_url))

    def check(self, key: str) -> dict[str, str]:
        """Counts one submission for ``key``; raises RATE_LIMITED when over. Returns RateLimit-* headers."""
        ident = hashlib.sha256(key.encode()).hexdigest()[:16]  # never store keys in Redis
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


def rate_limit(request: Request, response: Response, key: ApiKeyDep) -> None:
    headers = request.app.state.rate_limiter.check(key)
    response.headers.update(headers)


RateLimitDep = Annotated[None, Depends(rate_limit)]
