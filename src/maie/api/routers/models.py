"""``GET /v1/models``: the ASR backends and models and the LLM this deployment actually has."""

from __future__ import annotations

import importlib.util

from fastapi import APIRouter

from maie.api.deps import ApiKeyDep, SettingsDep
from maie.config import Settings
from maie.errors import MaieError
from maie.pipeline.asr.whisper import resolve_spec
from maie.pipeline.context import TaskContext
from maie.pipeline.llm import bundled_gguf_path, stage_params
from maie.pipeline.registry import ModelRegistry
from maie.schemas import TaskOptions

router = APIRouter(prefix="/v1", tags=["models"])


def whisper_model(settings: Settings) -> dict:
    ctx = TaskContext(task_id="models", options=TaskOptions(), settings=settings, models=ModelRegistry())
    spec = resolve_spec(ctx)
    return {
        "backend": "whisper",
        "model": spec.label,
        "device": spec.device,
        "compute_type": spec.compute_type,
        "available": True,
    }


def describe_llm(settings: Settings) -> dict:
    """The LLM per stage: server and model when a base URL is set, else the embedded GGUF."""
    out: dict = {}
    for purpose in ("enhance", "summary"):
        p = stage_params(settings.llm, purpose)
        if p.base_url:
            out[purpose] = {"backend": "openai-compatible", "base_url": p.base_url, "model": p.model}
            continue
        try:
            model = p.model or str(bundled_gguf_path())
            out[purpose] = {"backend": "embedded", "model": model, "available": True}
        except MaieError as exc:
            out[purpose] = {"backend": "embedded", "model": None, "available": False, "detail": exc.message}
    return out


@router.get("/models", summary="Available ASR backends/models and the LLM")
def list_models(_: ApiKeyDep, settings: SettingsDep) -> dict:
    cf_ready = bool(settings.asr.chunkformer_model) and importlib.util.find_spec("torch") is not None
    asr = [
        whisper_model(settings),
        {"backend": "chunkformer", "model": settings.asr.chunkformer_model, "available": cf_ready},
    ]
    return {"default_backend": settings.asr.default_backend, "asr": asr, "llm": describe_llm(settings)}
