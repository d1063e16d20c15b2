"""Keeps ``maie serve``'s worker processes running: a worker that dies is restarted with backoff."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import threading
import time

from maie.procs import die_with_parent

log = logging.getLogger(__name__)

MAX_BACKOFF_S = 30.0


class WorkerSupervisor:
    def __init__(self, count: int, env: dict[str, str]) -> None:
        self.count = count
        self.env = env
        self.procs: list[subprocess.Popen[bytes] | None] = [None] * count
        self.restarts = 0
        self._stopping = threading.Event()
        self._threads: list[threading.Thread] = []

    def _spawn(self) -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            [sys.executable, "-m", "maie.jobs", "worker"],  # ``maie worker`` without the CLI's imports
            env=self.env,
            preexec_fn=die_with_parent,
            stdin=subprocess.DEVNULL,
            # Its own process group: a Ctrl-C in the terminal reaches ``maie serve`` only, which
            # stops the workers (warm) before the Redis they use, never all at once.
            start_new_session=True,
        )

    def _watch(self, slot: int) -> None:
        backoff = 1.0
        while not self._stopping.is_set():
            started = time.monotonic()
            proc = self.procs[slot] = self._spawn()
            code = proc.wait()
            if self._stopping.is_set():
                return
            # A worker that ran for a while before dying gets a fresh, short backoff.
            backoff = 1.0 if time.monotonic() - started > 60 else min(backoff * 2, MAX_BACKOFF_S)
            self.restarts += 1
            log.warning("worker %d exited with %s; restarting in %.0fs", slot, code, backoff)
            self._stopping.wait(backoff)

    def start(self) -> None:
        for slot in range(self.count):
            t = threading.Thread(target=self._watch, args=(slot,), daemon=True, name=f"maie-supervise-{slot}")
            t.start()
            self._threads.append(t)

    def pids(self) -> list[int]:
        return [p.pid for p in self.procs if p is not None and p.poll() is None]

    def stop(self, timeout_s: float = 10.0) -> None:
        self._stopping.set()
        live = [p for p in self.procs if p is not None and p.poll() is None]
        for p in live:
            p.terminate()  # RQ: warm shutdown, the current job finishes if it can
        deadline = time.monotonic() + timeout_s
        for p in live:
            try:
                p.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                # An unfinished job is not lost: its lease expires and recovery requeues it.
                os.kill(p.pid, 9)
                p.wait()
