"""The job a worker runs for one task: carry it from PENDING to a terminal state, whatever happens."""

from __future__ import annotations

import logging
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from rq.timeouts import JobTimeoutException

from maie.config import Settings
from maie.errors import ErrorCode, MaieError
from maie.jobs.stats import record_task
from maie.jobs.store import TaskStore, now_iso
from maie.logs import correlation_id
from maie.pipeline.context import BudgetExceeded, Cancelled, TaskContext
from maie.pipeline.registry import ModelRegistry
from maie.pipeline.run import overall_progress, run_pipeline
from maie.schemas import TaskError, TaskOptions, TaskRecord, TaskStatus
from maie.webhooks import notify_if_wanted

log = logging.getLogger(__name__)

PROGRESS_INTERVAL_S = 0.5


@dataclass
class WorkerRuntime:
    """What a worker process keeps across jobs: settings, the task store and the warm models."""

    settings: Settings
    store: TaskStore
    models: ModelRegistry
    name: str = "in-process"
    current_task: str | None = None

    @property
    def lease_ttl_s(self) -> int:
        return int(self.settings.worker_heartbeat_s * 3)


_runtime: WorkerRuntime | None = None


def set_runtime(runtime: WorkerRuntime) -> None:
    global _runtime
    _runtime = runtime


def get_runtime() -> WorkerRuntime:
    if _runtime is None:
        raise RuntimeError("process_task runs inside `maie worker` only")
    return _runtime


class Reporter:
    """Writes stage and progress back to the task record, at most every PROGRESS_INTERVAL_S.

    A write refused because the record turned terminal (or vanished) means the task was cancelled.
    """

    def __init__(self, store: TaskStore, task_id: str, deadline: float) -> None:
        self.store = store
        self.task_id = task_id
        self.deadline = deadline
        self.stage: TaskStatus | None = None
        self.last_write = 0.0
        self.stage_started = time.monotonic()
        self.stage_seconds: dict[str, float] = {}

    def __call__(self, stage: TaskStatus, fraction: float) -> None:
        now = time.monotonic()
        if now > self.deadline:
            raise BudgetExceeded
        if stage == self.stage and now - self.last_write < PROGRESS_INTERVAL_S and fraction < 1.0:
            return
        written = self.store.update(
            self.task_id, status=stage.value, stage=stage.value, progress=overall_progress(stage, fraction)
        )
        if not written:
            raise Cancelled
        if stage != self.stage:
            self.close_stage(now)
        self.stage, self.last_write = stage, now

    def close_stage(self, now: float | None = None) -> None:
        """Book the time spent in the current stage (for the stage duration histogram)."""
        now = time.monotonic() if now is None else now
        if self.stage is not None:
            key = self.stage.value
            self.stage_seconds[key] = self.stage_seconds.get(key, 0.0) + now - self.stage_started
        self.stage_started = now


def process_task(task_id: str) -> str:
    """RQ entry point. Never raises: every outcome is written to the task record."""
    rt = get_runtime()
    store, settings = rt.store, rt.settings
    record = store.get(task_id)
    if record is None or record.status.terminal:
        return "skipped"
    correlation_id.set(store.correlation_id(task_id) or task_id)
    # Take the lease before anything else: recovery treats a running task without one as lost.
    store.hold_lease(task_id, rt.name, rt.lease_ttl_s)
    rt.current_task = task_id
    attempts = store.incr_attempts(task_id)
    duration = (record.metrics or {}).get("declared_duration_s")
    budget = settings.job_timeout_base_s + settings.job_timeout_per_audio_s * (
        duration if duration is not None else settings.max_audio_minutes * 60
    )
    reporter = Reporter(store, task_id, deadline=time.monotonic() + budget)
    log.info("task %s started (attempt %d)", task_id, attempts)
    try:
        outcome = _run(rt, record, reporter, budget)
    finally:
        rt.current_task = None
        store.release_lease(task_id)
    reporter.close_stage()
    if outcome != TaskStatus.CANCELLED:
        notify_if_wanted(store, task_id)
    final_metrics = (store.get(task_id) or record).metrics or {}
    record_task(store.redis, outcome.value, reporter.stage_seconds, final_metrics.get("input_duration_s"))
    return outcome.value


def _run(rt: WorkerRuntime, record: TaskRecord, reporter: Reporter, budget: float) -> TaskStatus:
    store, settings, task_id = rt.store, rt.settings, record.task_id
    audio_path = store.audio_path(task_id)
    store.update(task_id, started_at=now_iso())
    ctx = TaskContext(
        task_id=task_id,
        options=TaskOptions.model_validate(record.options or {}),
        settings=settings,
        models=rt.models,
        audio_path=Path(audio_path) if audio_path else None,
        report=reporter,
    )
    try:
        result = run_pipeline(ctx)
    except Cancelled:
        log.info("task %s cancelled", task_id)
        remove_task_files(settings, task_id)
        return TaskStatus.CANCELLED
    except (BudgetExceeded, JobTimeoutException):
        return _fail(store, task_id, ErrorCode.TIMEOUT, f"job ran past its time budget of {budget:.0f}s", reporter)
    except MaieError as exc:
        return _fail(store, task_id, exc.code, exc.message, reporter)
    except Exception as exc:
        log.exception("task %s failed in %s", task_id, reporter.stage)
        return _fail(store, task_id, ErrorCode.PIPELINE_ERROR, f"{type(exc).__name__}: {exc}", reporter)
    error = result.warnings[0] if result.warnings else None
    store.finish(
        task_id,
        TaskStatus.COMPLETE,
        progress=1.0,
        results=result.results,
        metrics={**(record.metrics or {}), **result.metrics},
        versions=result.versions,
        error=error,
        warnings=[w.model_dump() for w in result.warnings],
    )
    log.info(
        "task %s complete in %.2fs (rtf %s)%s",
        task_id,
        result.metrics.get("processing_time_s", 0.0),
        result.metrics.get("rtf"),
        f", {error.code}" if error else "",
    )
    return TaskStatus.COMPLETE


def _fail(store: TaskStore, task_id: str, code: ErrorCode, message: str, reporter: Reporter) -> TaskStatus:
    stage = reporter.stage.value if reporter.stage else TaskStatus.PENDING.value
    log.warning("task %s failed in %s: %s %s", task_id, stage, code.value, message)
    store.fail(task_id, TaskError(code=code.value, message=message, stage=stage))
    return TaskStatus.FAILED


def task_dir(settings: Settings, task_id: str) -> Path:
    return settings.audio_dir / task_id


def remove_task_files(settings: Settings, task_id: str) -> None:
    shutil.rmtree(task_dir(settings, task_id), ignore_errors=True)
