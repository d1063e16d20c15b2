"""``GET /v1/models``: the ASR backends and models and the LLM this deployment actually has."""

from __future__ import annotations

import importlib.util

from fastapi import APIRouter

from maie.api.deps import ApiKeyDep, SettingsDep
from maie.pipeline.asr.whisper import resolve_model
from maie.pipeline.llm import describe_llm

router = APIRouter(prefix="/v1", tags=["models"])


@router.get("/models", summary="Available ASR backends/models and the LLM")
def list_models(_: ApiKeyDep, settings: SettingsDep) -> dict:
    asr = [{"backend": "whisper", "model": resolve_model(settings.asr), "available": True}]
    cf_ready = bool(settings.asr.chunkformer_model) and importlib.util.find_spec("torch") is not None
    asr.append({"backend": "chunkformer", "model": settings.asr.chunkformer_model, "available": cf_ready})
    return {"default_backend": settings.asr.default_backend, "asr": asr, "llm": describe_llm(settings)}
