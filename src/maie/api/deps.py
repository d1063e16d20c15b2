"""Dependencies the routers declare: settings, task store, queue, the caller's API key."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request
from rq import Queue

from maie.api.auth import check_key, presented_key
from maie.config import Settings
from maie.jobs.store import TaskStore


def get_settings(request: Request) -> Settings:
    return request.app.state.settings


def get_store(request: Request) -> TaskStore:
    return request.app.state.store


def get_queue(request: Request) -> Queue:
    return request.app.state.queue


def require_api_key(request: Request) -> str:
    key = check_key(request.app.state.api_keys, presented_key(request))
    request.state.api_key = key
    return key


SettingsDep = Annotated[Settings, Depends(get_settings)]
StoreDep = Annotated[TaskStore, Depends(get_store)]
QueueDep = Annotated[Queue, Depends(get_queue)]
ApiKeyDep = Annotated[str, Depends(require_api_key)]
