"""The audit trail: one structured log event per access to a task's content or lifecycle.

Events go to the ``maie.audit`` logger with ``key`` (the key's name, never the key), ``action``,
``route``, ``task_id`` and ``outcome`` (``ok``, ``not_found`` or ``denied`` — a denied access answers
404 like a missing task, so only this log tells the two apart). Never a transcript.
"""

from __future__ import annotations

import logging
from typing import Literal

from fastapi import Request

from maie.principals import Principal

log = logging.getLogger("maie.audit")

Action = Literal["submit", "read", "list", "export", "audio", "events", "delete", "cancel", "edit"]
Outcome = Literal["ok", "not_found", "denied", "refused"]


def audit(request: Request, caller: Principal, action: Action, task_id: str | None, outcome: Outcome) -> None:
    route = request.scope.get("route")
    path = getattr(route, "path", request.url.path)
    fields = {
        "key": caller.name,
        "action": action,
        "route": f"{request.method} {path}",
        "task_id": task_id,
        "outcome": outcome,
    }
    log.info(
        "audit key=%s action=%s task=%s outcome=%s route=%s",
        caller.name,
        action,
        task_id or "-",
        outcome,
        fields["route"],
        extra={"audit": fields},
    )
