"""Per-key rate limit on submissions (``MAIE_RATE_LIMIT``), shared by every API process through Redis.

A moving window: a key may make ``amount`` submissions in any ``window_s`` seconds. The count lives in
Redis (a sorted set of hit times per key) and is checked and taken inside the admission script
(``maie.api.submission.reserve``), so a submission pays one round trip for the rate limit and its
queue slot together, and a refusal costs exactly that one.
"""

from __future__ import annotations

import functools
import hashlib
import math
import time
from dataclasses import dataclass

from limits import parse

from maie.errors import ErrorCode, MaieError
from maie.jobs.store import PREFIX


@dataclass(frozen=True)
class RateLimit:
    amount: int
    window_s: int

    @classmethod
    def from_setting(cls, text: str) -> RateLimit:
        """``limits`` notation, e.g. ``120/minute`` or ``10 per second`` (checked when settings load)."""
        return _parsed(text)

    def headers(self, remaining: int, reset_at: float) -> dict[str, str]:
        """RateLimit-* headers: the limit, what is left of it, and seconds until the oldest hit expires."""
        return {
            "RateLimit-Limit": str(self.amount),
            "RateLimit-Remaining": str(max(0, remaining)),
            "RateLimit-Reset": str(max(0, math.ceil(reset_at - time.time()))),
        }

    def refusal(self, reset_at: float) -> MaieError:
        headers = self.headers(0, reset_at)
        reset = headers["RateLimit-Reset"]
        return MaieError(
            ErrorCode.RATE_LIMITED,
            f"rate limit {self.amount} per {self.window_s}s exceeded; retry in {reset}s",
            headers={**headers, "Retry-After": str(max(1, int(reset)))},
        )


@functools.lru_cache(maxsize=8)
def _parsed(text: str) -> RateLimit:
    item = parse(text)
    return RateLimit(amount=item.amount, window_s=item.get_expiry())


def rate_key(owner: str) -> str:
    """One key's hit times (names are hashed: a key's name never appears in a Redis key)."""
    return f"{PREFIX}:rate:{hashlib.sha256(owner.encode()).hexdigest()[:16]}"
