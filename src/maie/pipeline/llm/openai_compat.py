"""Any OpenAI-compatible chat server: vLLM, llama.cpp server (C++ or llama-cpp-python), Ollama, OpenAI.

Servers differ in how they take structured output, so the flavour is detected once (``GET
/v1/models``, ``owned_by``) or set with ``MAIE_LLM__SERVER_FLAVOUR``, and the request falls back
to the next form when a server answers 400/422 to one:

- llama.cpp: our own GBNF (``grammar``, with JSON-correct strings), then ``json_object`` + schema;
- others: ``json_schema`` (vLLM, OpenAI, Ollama), then ``json_object`` + schema, then plain JSON mode.

The reply is always validated by the caller, so the last resort (no constraint) is still safe.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

import httpx

from maie.errors import ErrorCode, MaieError
from maie.pipeline.context import BudgetExceeded
from maie.pipeline.llm.client import LlmReply, Message

log = logging.getLogger(__name__)

Flavour = str
"""``llamacpp`` | ``vllm`` | ``ollama`` | ``openai`` | ``generic``."""

_OWNED_BY: dict[str, Flavour] = {
    "llamacpp": "llamacpp",
    "me": "llamacpp",  # llama-cpp-python's server
    "vllm": "vllm",
    "library": "ollama",
    "ollama": "ollama",
    "openai": "openai",
    "system": "openai",
    "openai-internal": "openai",
}
_RETRY_STATUS = frozenset({429, 500, 502, 503, 504})
_UNUSABLE_STATUS = frozenset({401, 403, 404})
_MAX_RETRY_AFTER_S = 30.0


def api_root(base_url: str) -> str:
    """``http://h:8000`` and ``http://h:8000/v1`` both mean the ``/v1`` API."""
    root = base_url.rstrip("/")
    return root if root.endswith("/v1") else root + "/v1"


def key_fingerprint(api_key: str | None) -> str:
    """A short digest to tell clients apart without keeping the key in registry keys or logs."""
    return hashlib.sha256((api_key or "").encode()).hexdigest()[:12]


class OpenAICompatClient:
    """Chat completions over HTTP with timeouts, retries with exponential backoff, and structured
    output in the form the server accepts."""

    def __init__(
        self,
        base_url: str,
        *,
        model: str | None = None,
        api_key: str | None = None,
        timeout_s: float = 120.0,
        max_retries: int = 3,
        backoff_s: float = 0.5,
        flavour: str = "auto",
    ) -> None:
        self.base_url: str | None = base_url
        self._root = api_root(base_url)
        self._model = model
        self._max_retries = max_retries
        self._backoff_s = backoff_s
        self._flavour: Flavour | None = None if flavour == "auto" else flavour
        self._detected = False
        self._format_level = 0
        self._lock = threading.Lock()
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._http = httpx.Client(headers=headers, timeout=httpx.Timeout(timeout_s, connect=min(10.0, timeout_s)))

    @property
    def flavour(self) -> Flavour:
        self._detect()
        return self._flavour or "generic"

    def models(self) -> list[str]:
        """Model ids the server lists (also a reachability check)."""
        response = self._request("GET", "/models")
        if response.status_code != 200:
            return []
        return [m.get("id", "") for m in response.json().get("data", []) if isinstance(m, dict)]

    def chat(
        self,
        messages: list[Message],
        *,
        max_tokens: int,
        temperature: float,
        top_k: int | None,
        json_schema: dict[str, Any] | None,
        deadline: float | None = None,
    ) -> LlmReply:
        started = time.perf_counter()
        self._detect(deadline)
        body: dict[str, Any] = {
            "messages": messages,
            "max_tokens": max_tokens,
            "temperature": temperature,
            "stream": False,
        }
        if self._model:
            body["model"] = self._model
        if top_k is not None and self.flavour != "openai":  # OpenAI rejects unknown parameters
            body["top_k"] = top_k

        forms = self._structured_forms(json_schema) if json_schema is not None else [{}]
        level = min(self._format_level, len(forms) - 1) if json_schema is not None else 0
        while True:
            has_next = level + 1 < len(forms)
            response = self._request(
                "POST",
                "/chat/completions",
                json={**body, **forms[level]},
                give_up=_refuses_form if has_next else None,
                deadline=deadline,
            )
            if has_next and _refuses_form(response):
                log.info(
                    "LLM server refused structured output form %d (%s); trying the next",
                    level,
                    _short(response.text),
                )
                level += 1
                continue
            break
        if response.status_code == 200 and level > self._format_level:
            self._format_level = level  # only a form that worked is remembered for the next request
        if response.status_code != 200:
            code = ErrorCode.LLM_UNAVAILABLE if response.status_code in _UNUSABLE_STATUS else None
            raise MaieError(
                code or ErrorCode.PIPELINE_ERROR,
                f"LLM server at {self.base_url} answered {response.status_code}: {_short(response.text)}",
            )
        return self._reply(response, started)

    def close(self) -> None:
        self._http.close()

    # -- internals -------------------------------------------------------------------------------

    def _structured_forms(self, schema: dict[str, Any]) -> list[dict[str, Any]]:
        forms: list[dict[str, Any]] = []
        if self.flavour == "llamacpp":
            try:
                from maie.pipeline.llm.grammar import schema_to_gbnf

                forms.append({"grammar": schema_to_gbnf(schema)})
            except ImportError:  # llama-cpp-python not installed on this process
                pass
        else:
            name = str(schema.get("title") or "output")
            safe_name = "".join(c if (c.isascii() and c.isalnum()) or c in "_-" else "_" for c in name)[:64] or "output"
            forms.append(
                {
                    "response_format": {
                        "type": "json_schema",
                        "json_schema": {"name": safe_name, "schema": schema, "strict": True},
                    }
                }
            )
        forms.append({"response_format": {"type": "json_object", "schema": schema}})
        forms.append({"response_format": {"type": "json_object"}})
        return forms

    def _detect(self, deadline: float | None = None) -> None:
        if self._detected:
            return
        with self._lock:
            if self._detected:
                return
            response = self._request("GET", "/models", deadline=deadline)
            entries: list[dict[str, Any]] = []
            if response.status_code == 200:
                try:
                    entries = [m for m in response.json().get("data", []) if isinstance(m, dict)]
                except ValueError:
                    entries = []
            elif response.status_code in (401, 403):
                raise MaieError(
                    ErrorCode.LLM_UNAVAILABLE,
                    f"LLM server at {self.base_url} refused the API key ({response.status_code})",
                )
            if self._flavour is None:
                owners = {str(m.get("owned_by", "")).lower() for m in entries}
                self._flavour = next((_OWNED_BY[o] for o in owners if o in _OWNED_BY), "generic")
            if self._model is None and entries:
                self._model = str(entries[0].get("id") or "") or None
            self._detected = True
            log.info("LLM server %s: flavour %s, model %s", self.base_url, self._flavour, self._model)

    def _request(
        self,
        method: str,
        path: str,
        *,
        give_up: Callable[[httpx.Response], bool] | None = None,
        deadline: float | None = None,
        **kwargs: Any,
    ) -> httpx.Response:
        """One request with retries on connection errors, 429 and 5xx (unless ``give_up`` says the
        answer is final). A read timeout is not retried: the server is up but slow, and asking
        again would only add to its load. With a ``deadline`` no request or back-off runs past it:
        the request's timeout is cut to the time left, and running out raises BudgetExceeded."""
        url = self._root + path
        last = ""
        last_response: httpx.Response | None = None
        for attempt in range(self._max_retries + 1):
            if attempt:
                delay = self._delay(attempt, last_response)
                if deadline is not None and time.monotonic() + delay >= deadline:
                    raise BudgetExceeded
                time.sleep(delay)
            last_response = None
            limited = False
            if deadline is not None:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise BudgetExceeded
                configured = self._http.timeout.read
                if configured is None or left < configured:
                    limited = True
                    kwargs["timeout"] = httpx.Timeout(left, connect=min(10.0, left))
            try:
                response = self._http.request(method, url, **kwargs)
            except httpx.TimeoutException as exc:
                if limited:
                    raise BudgetExceeded from exc
                if not isinstance(exc, httpx.ReadTimeout):
                    last = f"{type(exc).__name__}: {exc}"
                    continue
                raise MaieError(
                    ErrorCode.LLM_UNAVAILABLE,
                    f"LLM server at {self.base_url} did not answer within the timeout",
                ) from exc
            except (httpx.TransportError, OSError) as exc:
                last = f"{type(exc).__name__}: {exc}"
                continue
            if response.status_code in _RETRY_STATUS and not (give_up and give_up(response)):
                last = f"{response.status_code}: {_short(response.text)}"
                last_response = response
                continue
            return response
        raise MaieError(
            ErrorCode.LLM_UNAVAILABLE,
            f"LLM server at {self.base_url} unreachable after {self._max_retries + 1} attempts ({last})",
        )

    def _delay(self, attempt: int, response: httpx.Response | None) -> float:
        delay = self._backoff_s * 2 ** (attempt - 1)
        if response is not None and response.status_code == 429:
            with contextlib.suppress(ValueError):
                delay = max(delay, float(str(response.headers.get("retry-after", "0"))))
        return float(min(delay, _MAX_RETRY_AFTER_S))

    def _reply(self, response: httpx.Response, started: float) -> LlmReply:
        try:
            data = response.json()
            choice = data["choices"][0]
            text = choice["message"]["content"]
        except (ValueError, KeyError, IndexError, TypeError) as exc:
            raise MaieError(
                ErrorCode.PIPELINE_ERROR,
                f"LLM server at {self.base_url} sent a reply without a message: {_short(response.text)}",
            ) from exc
        if not isinstance(text, str):
            raise MaieError(ErrorCode.PIPELINE_ERROR, f"LLM server at {self.base_url} sent an empty message")
        usage = data.get("usage") or {}
        return LlmReply(
            text=text,
            model=str(data.get("model") or self._model or "unknown"),
            prompt_tokens=int(usage.get("prompt_tokens") or 0),
            completion_tokens=int(usage.get("completion_tokens") or 0),
            time_s=time.perf_counter() - started,
            finish_reason=choice.get("finish_reason"),
        )


def _refuses_form(response: httpx.Response) -> bool:
    """The server rejected the structured-output form itself (llama-cpp-python's server answers
    500 to a request body it cannot validate, others 400/422)."""
    if response.status_code in (400, 422):
        return True
    text = response.text
    return response.status_code == 500 and any(k in text for k in ("response_format", "json_schema", "grammar"))


def _short(text: str, limit: int = 300) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[:limit] + "…"
