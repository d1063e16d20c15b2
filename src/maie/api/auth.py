"""API keys: ``X-API-Key`` or ``Authorization: Bearer``, compared in constant time."""

from __future__ import annotations

import hmac
import os
import secrets
from pathlib import Path

from fastapi import Request

from maie.config import Settings
from maie.errors import ErrorCode, MaieError

KEY_FILE = "api_key"


def key_file(settings: Settings) -> Path:
    return settings.data_dir / KEY_FILE


def ensure_generated_key(settings: Settings) -> str | None:
    """With no MAIE_API_KEYS, create (once) a random key in the data dir, readable by the owner only."""
    if settings.api_keys:
        return None
    path = key_file(settings)
    if path.exists():
        return path.read_text().strip()
    path.parent.mkdir(parents=True, exist_ok=True)
    key = "maie_" + secrets.token_urlsafe(32)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(key + "\n")
    return key


def configured_keys(settings: Settings) -> list[str]:
    if settings.api_keys:
        return list(settings.api_keys)
    path = key_file(settings)
    return [path.read_text().strip()] if path.exists() else []


def presented_key(request: Request) -> str | None:
    key = request.headers.get("x-api-key")
    if key:
        return key
    auth = request.headers.get("authorization", "")
    scheme, _, token = auth.partition(" ")
    return token.strip() if scheme.lower() == "bearer" and token.strip() else None


def check_key(keys: list[str], presented: str | None) -> str:
    """Returns the matching key; every configured key is compared so timing does not reveal which."""
    if not presented:
        raise MaieError(ErrorCode.UNAUTHORIZED, "missing API key: send X-API-Key or Authorization: Bearer")
    matched = None
    for key in keys:
        if hmac.compare_digest(key.encode(), presented.encode()):
            matched = key
    if matched is None:
        raise MaieError(ErrorCode.UNAUTHORIZED, "invalid API key")
    return matched
