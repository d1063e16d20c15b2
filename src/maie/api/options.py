"""Form fields of ``POST /v1/process`` → validated TaskOptions, with a 4xx naming the bad field."""

from __future__ import annotations

import functools
import json

from pydantic import ValidationError

from maie.config import Settings
from maie.errors import ErrorCode, MaieError
from maie.schemas import Feature, TaskOptions

ASR_BACKENDS = ("whisper", "chunkformer")
_BOOL_FIELDS = ("word_timestamps", "enable_vad", "enable_diarization", "diarize_by_channel")
_TEXT_FIELDS = ("template_id", "asr_backend", "language", "initial_prompt", "hotwords", "callback_url")
_NUMBER_FIELDS = ("vad_threshold", "min_speakers", "max_speakers")
KNOWN_FIELDS = frozenset(("features", *_BOOL_FIELDS, *_TEXT_FIELDS, *_NUMBER_FIELDS))
_TRUE = {"true", "1", "yes", "on"}
_FALSE = {"false", "0", "no", "off"}


def _bad(field: str, message: str) -> MaieError:
    return MaieError(ErrorCode.INVALID_FIELD, f"{field}: {message}")


def _feature_names(value: str) -> list[str]:
    """A comma list, or (as the original MAIE accepted) a JSON array of names."""
    if value.strip().startswith("["):
        try:
            names = json.loads(value)
        except ValueError:
            raise _bad("features", "not a valid JSON array") from None
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise _bad("features", "a JSON array must hold feature names (strings)")
        return [n.strip() for n in names]
    return [v.strip() for v in value.split(",")]


def parse_features(values: list[str]) -> list[Feature]:
    """Repeatable field, comma list or JSON array string; order kept, duplicates dropped."""
    out: list[Feature] = []
    for value in values:
        for name in _feature_names(value):
            if not name:
                continue
            try:
                feature = Feature(name)
            except ValueError:
                allowed = ", ".join(f.value for f in Feature)
                raise _bad("features", f"unknown feature {name!r} (allowed: {allowed})") from None
            if feature not in out:
                out.append(feature)
    return out


def _one(fields: dict[str, list[str]], name: str) -> str | None:
    values = fields.get(name)
    if not values:
        return None
    if len(values) > 1:
        raise _bad(name, "given more than once")
    value = values[0].strip()
    return value or None


def _bool(name: str, value: str | None) -> bool | None:
    if value is None:
        return None
    if value.lower() in _TRUE:
        return True
    if value.lower() in _FALSE:
        return False
    raise _bad(name, f"expected true or false, got {value[:40]!r}")


def parse_options(fields: dict[str, list[str]], settings: Settings) -> TaskOptions:
    unknown = sorted(set(fields) - KNOWN_FIELDS)
    if unknown:
        raise _bad(unknown[0], "unknown field (send options before the file; see the API guide)")
    data: dict[str, object] = {}
    if "features" in fields:
        features = parse_features(fields["features"])
        if not features:
            raise _bad("features", "no feature given")
        data["features"] = features
    for name in _TEXT_FIELDS + _NUMBER_FIELDS:
        value = _one(fields, name)
        if value is not None:
            data[name] = value
    for name in _BOOL_FIELDS:
        flag = _bool(name, _one(fields, name))
        if flag is not None:
            data[name] = flag
    return check_options(build_options(data), settings)


def build_options(data: dict[str, object]) -> TaskOptions:
    """TaskOptions from plain values; a bad value is a 422 naming the field, never a 500."""
    try:
        return TaskOptions.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        field = ".".join(str(p) for p in err["loc"])
        raise _bad(field, err["msg"]) from None


def check_options(options: TaskOptions, settings: Settings) -> TaskOptions:
    """Cross-field rules shared by every submission route."""
    if options.asr_backend is not None and options.asr_backend not in ASR_BACKENDS:
        raise _bad("asr_backend", f"expected one of {', '.join(ASR_BACKENDS)}")
    if options.min_speakers and options.max_speakers and options.min_speakers > options.max_speakers:
        raise _bad("min_speakers", "greater than max_speakers")
    if options.language is not None:
        options.language = options.language.lower()
        if options.language not in language_codes():
            raise _bad("language", f"unknown language code {options.language[:20]!r} (expected e.g. en or vi)")
    check_runnable(options, settings)
    if Feature.SUMMARY in options.features and options.template_id is None:
        options.template_id = settings.default_template_id
    if options.callback_url is not None:
        from maie.api.webhook_targets import check_callback_url

        check_callback_url(options.callback_url, settings)
    return options


def check_runnable(options: TaskOptions, settings: Settings) -> None:
    """Refuse, before any work, what this installation cannot do (see ``maie.pipeline.availability``)."""
    from maie.pipeline import availability

    backend = options.asr_backend or settings.asr.default_backend
    if options.text is None:
        found = availability.backend_available(backend, settings)
        if not found.available:
            raise MaieError(ErrorCode.BACKEND_UNAVAILABLE, f"asr_backend {backend}: {found.reason}")
    if options.enable_diarization:
        found = availability.diarization_available(settings)
        if not found.available:
            raise MaieError(ErrorCode.FEATURE_UNAVAILABLE, f"enable_diarization: {found.reason}")
    if options.task == "translate":
        if backend != "whisper":
            raise MaieError(ErrorCode.TRANSLATION_UNSUPPORTED, "translation needs the whisper backend")
        if availability.whisper_english_only(settings):
            raise MaieError(
                ErrorCode.TRANSLATION_UNSUPPORTED,
                f"the Whisper model {availability.whisper_model_name(settings)} is English-only and cannot "
                "translate; set MAIE_ASR__WHISPER_MODEL to a multilingual model (e.g. small) to enable translations",
            )
    language = (options.language or "").lower()
    if backend == "whisper" and language and language != "en" and availability.whisper_english_only(settings):
        model = availability.whisper_model_name(settings)
        raise MaieError(
            ErrorCode.LANGUAGE_UNSUPPORTED,
            f"language {options.language!r}: the ASR model {model} knows only English; set MAIE_ASR__WHISPER_MODEL "
            "to a multilingual Whisper model (e.g. small or large-v3) to transcribe other languages",
        )


@functools.cache
def language_codes() -> frozenset[str]:
    """The languages Whisper knows (chunkformer's Vietnamese is among them)."""
    from faster_whisper.tokenizer import _LANGUAGE_CODES

    return frozenset(_LANGUAGE_CODES)
