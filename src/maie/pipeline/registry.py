"""Warm models, loaded once per worker and kept across jobs."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Hashable
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any, TypeVar, cast

log = logging.getLogger(__name__)
T = TypeVar("T")


class ModelRegistry:
    """Models keyed by (kind, model, device, ...): the second job with the same key never reloads.

    A load runs in a thread of its own, so a job can stop waiting for it (its deadline passed) while
    the load goes on and the model is ready for the next job; concurrent askers share one load.
    """

    def __init__(self) -> None:
        self._models: dict[Hashable, Any] = {}
        self._load_times: dict[Hashable, float] = {}
        self._loading: dict[Hashable, Future[Any]] = {}
        self._lock = threading.Lock()

    def get(self, key: Hashable, load: Callable[[], T], *, wait_until: float | None = None) -> T:
        """The model, loaded on first use. ``wait_until`` (``time.monotonic()``): raise TimeoutError
        if the load is not done by then (it carries on in the background)."""
        with self._lock:
            if key in self._models:
                return cast(T, self._models[key])
            future = self._loading.get(key)
            if future is None:
                future = Future()
                self._loading[key] = future
                threading.Thread(
                    target=self._load, args=(key, load, future), name=f"load-{key!s:.40}", daemon=True
                ).start()
        timeout = None if wait_until is None else max(wait_until - time.monotonic(), 0.0)
        try:
            return cast(T, future.result(timeout=timeout))
        except FutureTimeout:
            raise TimeoutError(f"model {key!r} still loading") from None

    def _load(self, key: Hashable, load: Callable[[], Any], future: Future[Any]) -> None:
        started = time.perf_counter()
        try:
            model = load()
        except BaseException as exc:  # handed to whoever waits; the next ask tries again
            with self._lock:
                self._loading.pop(key, None)
            future.set_exception(exc)
            return
        with self._lock:
            self._load_times[key] = time.perf_counter() - started
            self._models[key] = model
            self._loading.pop(key, None)
        log.info("loaded model %s in %.2fs", key, self._load_times[key])
        future.set_result(model)

    def load_time(self, key: Hashable) -> float:
        return self._load_times.get(key, 0.0)

    def loads(self) -> int:
        """How many models were loaded (tests assert a second job adds none)."""
        return len(self._models)

    def keys(self) -> list[Hashable]:
        return list(self._models)
