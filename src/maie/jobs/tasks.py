"""The job a worker runs for one task: carry it from PENDING to a terminal state, whatever happens."""

from __future__ import annotations

import contextlib
import logging
import time
from dataclasses import dataclass

from pydantic import ValidationError
from rq.timeouts import JobTimeoutException

from maie.config import Settings
from maie.errors import ADVISORY, ErrorCode, MaieError
from maie.jobs.outbox import notify_if_wanted
from maie.jobs.queue import job_budget_s
from maie.jobs.stats import record_task
from maie.jobs.store import TaskCorrupt, TaskStore, now_iso
from maie.logs import correlation_id
from maie.pipeline.context import BudgetExceeded, Cancelled, TaskContext
from maie.pipeline.registry import ModelRegistry
from maie.pipeline.run import overall_progress, run_pipeline
from maie.schemas import Segment, TaskError, TaskOptions, TaskRecord, TaskStatus
from maie.storage import storage_for

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


class SegmentPublisher:
    """``ctx.on_segments`` in a worker: each segment ASR decides goes to the task's live segment list
    and events channel (``TaskStore.add_segments``), numbered from 0 in each attempt.

    A write refused because the record turned terminal means the task was cancelled, as for progress.
    """

    def __init__(self, store: TaskStore, task_id: str) -> None:
        self.store = store
        self.task_id = task_id
        self.next_id = 0

    def __call__(self, segments: list[Segment]) -> None:
        items = [
            {"id": self.next_id + i, "start": s.start, "end": s.end, "text": s.text} for i, s in enumerate(segments)
        ]
        if not self.store.add_segments(self.task_id, items):
            raise Cancelled
        self.next_id += len(items)


def process_task(task_id: str) -> str:
    """RQ entry point. Never raises: every outcome is written to the task record."""
    rt = get_runtime()
    store, settings = rt.store, rt.settings
    try:
        record = store.get(task_id)
    except TaskCorrupt:
        log.error("task %s skipped: its record is unreadable", task_id)
        return "skipped"
    if record is None or record.status.terminal:
        return "skipped"
    correlation_id.set(store.correlation_id(task_id) or task_id)
    # Take the lease before anything else: recovery treats a running task without one as lost.
    store.hold_lease(task_id, rt.name, rt.lease_ttl_s)
    rt.current_task = task_id
    attempts = store.incr_attempts(task_id)
    if attempts is None:  # deleted between the read above and now
        rt.current_task = None
        store.release_lease(task_id)
        return "skipped"
    budget = job_budget_s(settings, record.metrics.declared_duration_s if record.metrics else None)
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
    final_metrics = (store.get(task_id) or record).metrics
    duration = final_metrics.input_duration_s if final_metrics else None
    record_task(store.redis, outcome.value, reporter.stage_seconds, duration)
    return outcome.value


def _run(rt: WorkerRuntime, record: TaskRecord, reporter: Reporter, budget: float) -> TaskStatus:
    store, settings, task_id = rt.store, rt.settings, record.task_id
    audio_ref = store.audio_path(task_id)
    store.update(task_id, started_at=now_iso())
    try:
        # Inside the job's error handling: options this worker cannot read (written by another
        # version, say) fail the task now, with a code, instead of leaving it PENDING.
        options = TaskOptions.model_validate(record.options or {})
    except ValidationError as exc:
        message = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'options'}: {e['msg']}" for e in exc.errors())
        return _fail(store, task_id, ErrorCode.INVALID_FIELD, f"task options are not valid: {message}", reporter)
    store.clear_segments(task_id)  # a new attempt decodes (and numbers) its segments from the start
    ctx = TaskContext(
        task_id=task_id,
        options=options,
        settings=settings,
        models=rt.models,
        report=reporter,
        deadline=reporter.deadline,
        on_segments=SegmentPublisher(store, task_id),
    )
    try:
        # The audio as a private local file for this job (with S3: a scratch copy, deleted on exit).
        with storage_for(settings).fetch(audio_ref) as ctx.audio_path:
            result = run_pipeline(ctx)
    except Cancelled:
        log.info("task %s cancelled", task_id)
        with contextlib.suppress(MaieError):  # the canceller deletes them too; a storage hiccup is no failure
            storage_for(settings).delete(task_id)
        return TaskStatus.CANCELLED
    except (BudgetExceeded, JobTimeoutException):
        # JobTimeoutException only from a worker other than ours (ours raises BudgetExceeded).
        return _fail(store, task_id, ErrorCode.TIMEOUT, f"job ran past its time budget of {budget:.0f}s", reporter)
    except MaieError as exc:
        return _fail(store, task_id, exc.code, exc.message, reporter)
    except Exception as exc:
        log.exception("task %s failed in %s", task_id, reporter.stage)
        return _fail(store, task_id, ErrorCode.PIPELINE_ERROR, f"{type(exc).__name__}: {exc}", reporter)
    # ``error``: the first stage that failed; advisory warnings (e.g. SUMMARY_UNGROUNDED) are not failures
    error = next((w for w in result.warnings if w.code not in ADVISORY), None)
    finished = store.finish(
        task_id,
        TaskStatus.COMPLETE,
        progress=1.0,
        results=result.results,
        # the submission's metrics (declared_duration_s) first, then the run's
        metrics=record.metrics.model_copy(update=result.metrics.model_dump(exclude_unset=True))
        if record.metrics
        else result.metrics,
        versions=result.versions,
        error=error,
        warnings=[w.model_dump() for w in result.warnings],
    )
    if not finished:  # cancelled in the moment between the last progress report and now
        log.info("task %s was cancelled as it completed; the cancel stands", task_id)
        return TaskStatus.CANCELLED
    log.info(
        "task %s complete in %.2fs (rtf %s)%s",
        task_id,
        result.metrics.processing_time_s or 0.0,
        result.metrics.rtf,
        f", {error.code}" if error else "",
    )
    return TaskStatus.COMPLETE


def _fail(store: TaskStore, task_id: str, code: ErrorCode, message: str, reporter: Reporter) -> TaskStatus:
    stage = reporter.stage.value if reporter.stage else TaskStatus.PENDING.value
    log.warning("task %s failed in %s: %s %s", task_id, stage, code.value, message)
    if not store.fail(task_id, TaskError(code=code.value, message=message, stage=stage)):
        return TaskStatus.CANCELLED  # the cancel got there first
    return TaskStatus.FAILED
