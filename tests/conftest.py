"""Shared fixtures: the reference audio folder and a TaskContext factory."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from maie.config import Settings
from maie.pipeline.context import TaskContext
from maie.pipeline.registry import ModelRegistry
from maie.schemas import TaskOptions

SHARED_AUDIO = Path(__file__).resolve().parents[2] / "shared" / "audio"


@pytest.fixture(scope="session")
def shared_audio() -> Path:
    """The reference recordings (``../shared/audio``; README there has the transcripts)."""
    if not SHARED_AUDIO.is_dir():
        pytest.fail(f"reference audio not found at {SHARED_AUDIO}: the tests need ../shared/audio beside the project")
    return SHARED_AUDIO


@pytest.fixture(scope="session")
def model_registry() -> ModelRegistry:
    """One registry for the whole session, like a worker's: models load once."""
    return ModelRegistry()


@pytest.fixture
def make_ctx(model_registry: ModelRegistry) -> Callable[..., TaskContext]:
    """``make_ctx(audio_path=..., settings=..., models=..., **task_options)`` -> TaskContext."""

    def factory(
        audio_path: Path | None = None,
        *,
        settings: Settings | None = None,
        models: ModelRegistry | None = None,
        report: Callable[..., None] | None = None,
        **options: Any,
    ) -> TaskContext:
        ctx = TaskContext(
            task_id="test-task",
            options=TaskOptions(**options),
            settings=settings or Settings(),
            models=models or model_registry,
            audio_path=audio_path,
        )
        if report is not None:
            ctx.report = report
        return ctx

    return factory
