"""Dependencies the routers declare: settings, task store, queue, the calling principal."""

from __future__ import annotations

from typing import Annotated, cast

from fastapi import Depends, Request
from rq import Queue

from maie.api.auth import check_key, presented_key
from maie.config import Settings
from maie.jobs.store import TaskStore
from maie.principals import Principal


def get_settings(request: Request) -> Settings:
    return cast(Settings, request.app.state.settings)


def get_store(request: Request) -> TaskStore:
    return cast(TaskStore, request.app.state.store)


def get_queue(request: Request) -> Queue:
    return cast(Queue, request.app.state.queue)


def require_principal(request: Request) -> Principal:
    principal = check_key(request.app.state.api_keys, presented_key(request))
    request.state.principal = principal
    return principal


SettingsDep = Annotated[Settings, Depends(get_settings)]
StoreDep = Annotated[TaskStore, Depends(get_store)]
QueueDep = Annotated[Queue, Depends(get_queue)]
CallerDep = Annotated[Principal, Depends(require_principal)]
