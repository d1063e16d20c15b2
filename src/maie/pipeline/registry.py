"""Warm models, loaded once per worker and kept across jobs."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Hashable
from typing import Any, TypeVar

log = logging.getLogger(__name__)
T = TypeVar("T")


class ModelRegistry:
    """Models keyed by (kind, model, device, ...): the second job with the same key never reloads."""

    def __init__(self) -> None:
        self._models: dict[Hashable, Any] = {}
        self._load_times: dict[Hashable, float] = {}
        self._lock = threading.Lock()

    def get(self, key: Hashable, load: Callable[[], T]) -> T:
        with self._lock:
            if key in self._models:
                return self._models[key]
            started = time.perf_counter()
            model = load()
            self._load_times[key] = time.perf_counter() - started
            self._models[key] = model
            log.info("loaded model %s in %.2fs", key, self._load_times[key])
            return model

    def load_time(self, key: Hashable) -> float:
        return self._load_times.get(key, 0.0)

    def loads(self) -> int:
        """How many models were loaded (tests assert a second job adds none)."""
        return len(self._models)

    def keys(self) -> list[Hashable]:
        return list(self._models)
