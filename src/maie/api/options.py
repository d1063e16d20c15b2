"""Form fields of ``POST /v1/process`` → validated TaskOptions, with a 4xx naming the bad field."""

from __future__ import annotations

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


def parse_features(values: list[str]) -> list[Feature]:
    """Repeatable field or comma list; order kept, duplicates dropped."""
    out: list[Feature] = []
    for value in values:
        for name in (v.strip() for v in value.split(",")):
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
        value = _bool(name, _one(fields, name))
        if value is not None:
            data[name] = value
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
    if options.language is not None and not (2 <= len(options.language) <= 8 and options.language.isalpha()):
        raise _bad("language", "expected a language code such as en or vi")
    if Feature.SUMMARY in options.features and options.template_id is None:
        options.template_id = settings.default_template_id
    if options.callback_url is not None:
        from maie.webhooks import check_callback_url

        check_callback_url(options.callback_url, settings)
    return options
