"""``GET /v1/models``: the ASR backends and models and the LLM this deployment actually has."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from fastapi import APIRouter

from maie.api.deps import CallerDep, SettingsDep
from maie.api.errors import error_responses, openai_error_responses
from maie.config import Settings
from maie.errors import ErrorCode, MaieError
from maie.pipeline import availability
from maie.schemas.http import AsrBackendInfo, FeaturesInfo, LlmInfo, LlmPurposes, ModelEntry, ModelList

router = APIRouter(prefix="/v1", tags=["models"])


def public_name(model: str | None) -> str | None:
    """A model as clients see it: its name, never a path on the server."""
    if model and ("/" in model or "\\" in model) and (model.startswith(("/", "~", ".")) or Path(model).exists()):
        return Path(model).name
    return model


def whisper_model(settings: Settings) -> AsrBackendInfo:
    # Imported here: the ASR and LLM packages bring numpy, faster-whisper and PyAV, which the API
    # process needs for nothing else (0.2 s of every start-up, beside the worker loading its model).
    from maie.pipeline.asr.whisper import resolve_spec

    spec = resolve_spec(settings)
    return AsrBackendInfo(
        backend="whisper",
        model=public_name(spec.label),
        device=spec.device,
        compute_type=spec.compute_type,
        available=True,
    )


def _llm(purpose: Literal["enhance", "summary"], settings: Settings) -> LlmInfo:
    from maie.pipeline.llm import bundled_gguf_path, stage_params

    p = stage_params(settings.llm, purpose)
    if p.base_url:
        return LlmInfo(backend="openai-compatible", base_url=p.base_url, model=p.model)
    try:
        model = p.model or str(bundled_gguf_path())
        return LlmInfo(backend="embedded", model=public_name(model), available=True)
    except MaieError as exc:
        return LlmInfo(backend="embedded", model=None, available=False, detail=exc.message)


def describe_llm(settings: Settings) -> LlmPurposes:
    """The LLM per stage: server and model when a base URL is set, else the embedded GGUF."""
    return LlmPurposes(enhance=_llm("enhance", settings), summary=_llm("summary", settings))


CREATED = 1_700_000_000
"""``created`` of every listed model (OpenAI's field is required; MAIE's models have no meaningful date)."""


def _entry(model_id: str, **details: str | bool | None) -> ModelEntry:
    return ModelEntry.model_validate(
        {"id": model_id, "object": "model", "created": CREATED, "owned_by": "maie", **details}
    )


def model_entries(settings: Settings) -> list[ModelEntry]:
    """The OpenAI ``data`` list: the names clients pass as ``model``, available ones only."""
    whisper = whisper_model(settings)
    entries = [
        _entry("whisper-1", backend=settings.asr.default_backend, description="alias of the default ASR backend"),
        _entry(
            "whisper",
            backend="whisper",
            model=whisper.model,
            multilingual=not availability.whisper_english_only(settings),
        ),
    ]
    if availability.chunkformer_available(settings).available:
        entries.append(_entry("chunkformer", backend="chunkformer", model=public_name(settings.asr.chunkformer_model)))
    seen = set()
    llms = describe_llm(settings)
    for purpose, llm in (("enhance", llms.enhance), ("summary", llms.summary)):
        name = llm.model
        if name and name not in seen and llm.available is not False:
            seen.add(name)
            entries.append(_entry(name, backend=llm.backend, purpose=purpose))
    return entries


@router.get(
    "/models",
    summary="Available models: the OpenAI list shape plus MAIE's details",
    response_model_exclude_unset=True,  # a detail a backend does not have is absent, an unknown one null
    responses=error_responses(ErrorCode.UNAUTHORIZED),
)
def list_models(_: CallerDep, settings: SettingsDep) -> ModelList:
    features = FeaturesInfo.model_validate(availability.describe(settings))
    asr = [
        whisper_model(settings),
        AsrBackendInfo(
            backend="chunkformer",
            model=public_name(settings.asr.chunkformer_model),
            available=features.chunkformer.available,
        ),
    ]
    return ModelList(
        object="list",
        data=model_entries(settings),
        # MAIE's own details (the web UI reads these)
        default_backend=settings.asr.default_backend,
        asr=asr,
        llm=describe_llm(settings),
        features=features,
    )


@router.get(
    "/models/{model_id:path}",
    summary="One model (OpenAI shape)",
    response_model_exclude_unset=True,
    responses=openai_error_responses(ErrorCode.UNAUTHORIZED, ErrorCode.NOT_FOUND, ErrorCode.VALIDATION_ERROR),
)
def get_model(model_id: str, _: CallerDep, settings: SettingsDep) -> ModelEntry:
    for entry in model_entries(settings):
        if entry.id == model_id:
            return entry
    raise MaieError(ErrorCode.NOT_FOUND, f"model {model_id[:100]!r} not found")
