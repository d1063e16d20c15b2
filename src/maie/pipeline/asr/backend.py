"""The one interface every ASR backend implements, and what it is given.

A backend is a module with these functions:

- ``resolve_spec(settings) -> spec``: what to load, from the settings alone (no task needed: the
  worker's warm-up and ``/v1/models`` call it too). The spec has a hashable ``key`` (the model
  registry key) and a ``label`` (the model name shown in ``versions``).
- ``load(spec) -> object``: load it (the dispatcher keeps it warm in the worker's registry, under
  ``spec.key``: fields that only change decoding are left out of the key, so they never reload).
- ``transcribe(samples, regions, request, model) -> Transcript``: recognise ``samples`` (16 kHz
  mono float32) with ``model``, a ``LoadedModel`` (this task's spec and the warm model); ``regions``
  are the speech regions on that signal's own timeline. Times in the result are on the same
  timeline: the dispatcher maps them back to the recording.
- ``parallel_blocks(model) -> int``: how many blocks the dispatcher may hand it at once, each from
  its own thread (1: one at a time, in order).
- ``known_language(model, requested) -> str | None``: the language every block will be decoded in,
  when it is known before any audio is heard (the requested one, or the only one an English-only
  model has); None when the first block must detect it, which the dispatcher then decodes alone.

A backend reads nothing from a task context and fills in nothing for other stages.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from maie.config import Settings
from maie.pipeline.context import SegmentSignals, Transcript
from maie.schemas import Segment


def _no_progress(fraction: float) -> None:
    return None


def _no_segment(segment: Segment, signals: SegmentSignals | None) -> None:
    return None


def _no_check() -> None:
    return None


@dataclass(frozen=True)
class AsrRequest:
    """What the task asks of the recogniser."""

    language: str | None = None
    """Language code, or None to detect it."""
    initial_prompt: str | None = None
    hotwords: str | None = None
    word_timestamps: bool = False
    vad: bool = True
    """Whether ``regions`` came from VAD (recorded in ``versions``)."""
    vad_threshold: float | None = None
    temperature: float | None = None
    """First temperature of the decoder's fallback ladder (None: the backend's default)."""
    task: str = "transcribe"
    """``transcribe``, or ``translate`` (to English; multilingual Whisper models only)."""
    progress: Callable[[float], None] = field(default=_no_progress, compare=False)
    """This call's own progress, 0..1. Backends call it between units of work (a Whisper segment, a
    batch of chunks); it raises Cancelled or BudgetExceeded, so that is also where a cancelled or
    over-budget task stops."""
    check: Callable[[], None] = field(default=_no_check, compare=False)
    """Raises BudgetExceeded past the deadline; cheap (no I/O), for a backend to call before each
    native call it makes (e.g. each Whisper decode of a window, of which there can be six)."""
    segment: Callable[[Segment, SegmentSignals | None], None] = field(default=_no_segment, compare=False)
    """Optional: each segment as soon as it is decoded (in order, on this call's timeline, the same
    object that ends up in the result), with its signals. It lets the dispatcher pass text on while
    the block is still being recognised; a backend that never calls it streams block by block."""


@dataclass(frozen=True)
class LoadedModel:
    """A warm model and the spec of the task using it (its decoding fields are this task's)."""

    spec: Any
    model: Any


class ModelSpec(Protocol):
    @property
    def key(self) -> Hashable: ...

    label: str


class AsrBackend(Protocol):
    """The shape of a backend module (``maie.pipeline.asr.whisper``, ``...chunkformer``)."""

    def resolve_spec(self, settings: Settings) -> Any: ...

    def load(self, spec: Any) -> Any: ...

    def transcribe(
        self, samples: np.ndarray, regions: Sequence[tuple[float, float]], request: AsrRequest, model: LoadedModel
    ) -> Transcript: ...

    def parallel_blocks(self, model: LoadedModel) -> int: ...

    def known_language(self, model: LoadedModel, requested: str | None) -> str | None: ...
