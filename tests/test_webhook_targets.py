"""Webhooks cannot reach inside: the destination check over every address class, DNS rebinding, and
connections that go to the address that was checked (real Redis, real HTTP receivers on loopback).

No test here sends a packet to a public address: checking one is fine, connecting is not. Where a
delivery is allowed to a public address, the client's transport is a guard that records where the
request would go and refuses to send it.
"""

from __future__ import annotations

import asyncio
import http.server
import json
import socket
import ssl
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from maie.api.webhook_delivery import deliver_once, new_client
from maie.api.webhook_targets import (
    DestinationRefused,
    address_refusal,
    check_callback_url,
    check_destination,
    resolve_target,
    system_resolver,
)
from maie.config import Settings
from maie.errors import ErrorCode, MaieError
from maie.jobs.outbox import OUTBOX
from maie.jobs.queue import connect
from maie.jobs.redis_server import EmbeddedRedis
from maie.jobs.store import TaskStore
from maie.schemas import TaskStatus

PUBLIC = "8.8.8.8"  # checked, never contacted (the guard transport refuses to send)

# (address, refused without MAIE_WEBHOOK_ALLOW_PRIVATE, refused with it)
ADDRESS_TABLE = [
    ("127.0.0.1", True, False),  # loopback v4
    ("127.255.255.254", True, False),
    ("::1", True, False),  # loopback v6
    ("10.1.2.3", True, False),  # private
    ("172.16.0.1", True, False),
    ("172.31.255.254", True, False),
    ("192.168.1.1", True, False),
    ("100.64.0.1", True, False),  # carrier-grade NAT
    ("100.127.255.254", True, False),
    ("192.0.0.9", True, False),  # IETF protocol assignments, the whole /24
    ("192.0.0.100", True, False),
    ("198.18.0.1", True, False),  # benchmarking
    ("169.254.169.254", True, False),  # link-local v4 (cloud metadata)
    ("fe80::1", True, False),  # link-local v6
    ("fe80::1%eth0", True, True),  # zone id
    ("fe80::1%1", True, True),
    ("fc00::1", True, False),  # ULA fc00::/7
    ("fd12:3456::1", True, False),
    ("fec0::1", True, False),  # deprecated site-local
    ("224.0.0.1", True, True),  # multicast v4
    ("239.255.255.250", True, True),
    ("ff02::1", True, True),  # multicast v6
    ("0.0.0.0", True, True),  # unspecified
    ("::", True, True),
    ("0.1.2.3", True, False),  # "this network"
    ("255.255.255.255", True, True),  # broadcast
    ("240.0.0.1", True, False),  # reserved
    ("192.0.2.1", True, False),  # documentation
    ("2001:db8::1", True, False),
    ("::ffff:127.0.0.1", True, False),  # IPv4-mapped loopback
    ("::ffff:10.0.0.1", True, False),  # IPv4-mapped private
    ("::ffff:169.254.169.254", True, False),
    ("::127.0.0.1", True, False),  # IPv4-compatible (deprecated)
    ("2002:7f00:1::1", True, False),  # 6to4 around 127.0.0.1
    ("2002:a00:1::1", True, False),  # 6to4 around 10.0.0.1
    ("64:ff9b::7f00:1", True, False),  # NAT64 of 127.0.0.1
    ("64:ff9b::a00:1", True, False),  # NAT64 of 10.0.0.1
    ("2001:0:4136:e378:8000:63bf:3fff:fdd2", True, False),  # Teredo
    ("not-an-ip", True, True),
    ("8.8.8.8", False, False),  # global: allowed
    ("1.1.1.1", False, False),
    ("2001:4860:4860::8888", False, False),
    ("::ffff:8.8.8.8", False, False),
    ("2002:808:808::1", False, False),  # 6to4 around a public address
    ("64:ff9b::808:808", False, False),
]


@pytest.mark.parametrize(("address", "refused", "refused_when_private_allowed"), ADDRESS_TABLE)
def test_address_classes(address: str, refused: bool, refused_when_private_allowed: bool) -> None:
    assert (address_refusal(address) is not None) is refused, address_refusal(address)
    why = address_refusal(address, allow_private=True)
    assert (why is not None) is refused_when_private_allowed, why


@pytest.mark.parametrize(
    "url",
    [
        "ftp://hooks.test/x",
        "not a url",
        "http:///nohost",
        "http://hooks.test:99999/x",
        "http://127.0.0.1/x",
        "http://[::1]:8080/x",
        "http://[fe80::1%25eth0]/x",
        "http://[::ffff:127.0.0.1]/x",
        "https://100.64.0.1/x",
        "http://0.0.0.0:8000/",
    ],
)
def test_callback_url_refused_at_submission_without_dns(url: str) -> None:
    with pytest.raises(MaieError) as info:
        check_callback_url(url, Settings())
    assert info.value.code == ErrorCode.INVALID_FIELD and info.value.message.startswith("callback_url: ")


def answers(*rounds: list[str]) -> tuple[list[str], object]:
    """A resolver we control: the n-th lookup gets ``rounds[n]`` (the last round repeats)."""
    asked: list[str] = []

    async def resolve(host: str, port: int) -> list[str]:
        asked.append(host)
        return list(rounds[min(len(asked) - 1, len(rounds) - 1)])

    return asked, resolve


async def no_answer(host: str, port: int) -> list[str]:
    raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")


def test_resolution_checks_every_address_and_refuses_failures() -> None:
    _, mixed = answers([PUBLIC, "10.0.0.7"])
    with pytest.raises(DestinationRefused) as info:
        asyncio.run(resolve_target("https://hooks.test/x", allow_private=False, resolver=mixed))
    assert info.value.code == ErrorCode.DESTINATION_REFUSED and "10.0.0.7" in info.value.reason
    with pytest.raises(DestinationRefused) as info:
        asyncio.run(resolve_target("https://hooks.test/x", allow_private=False, resolver=no_answer))
    assert info.value.code == ErrorCode.DESTINATION_UNRESOLVED
    _, empty = answers([])
    with pytest.raises(DestinationRefused):
        asyncio.run(resolve_target("https://hooks.test/x", allow_private=False, resolver=empty))
    _, public = answers([PUBLIC, "2001:4860:4860::8888", PUBLIC])
    assert asyncio.run(resolve_target("https://hooks.test/x", allow_private=False, resolver=public)) == [
        PUBLIC,
        "2001:4860:4860::8888",
    ]
    # Submission: the same check, as a 422 naming the field.
    with pytest.raises(MaieError) as err:
        asyncio.run(check_destination("https://hooks.test/x", Settings(), resolver=mixed))
    assert err.value.code == ErrorCode.INVALID_FIELD and "10.0.0.7" in err.value.message


def test_system_resolver_does_not_block_the_event_loop(monkeypatch: pytest.MonkeyPatch) -> None:
    real = socket.getaddrinfo

    def slow_getaddrinfo(*args: object, **kwargs: object) -> list:
        time.sleep(0.5)  # a slow DNS server
        return real(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(socket, "getaddrinfo", slow_getaddrinfo)

    async def main() -> tuple[list[str], int]:
        ticks = 0

        async def ticker() -> None:
            nonlocal ticks
            while True:
                await asyncio.sleep(0.01)
                ticks += 1

        t = asyncio.create_task(ticker())
        addresses = await system_resolver("localhost", 80)
        t.cancel()
        return addresses, ticks

    addresses, ticks = asyncio.run(main())
    assert "127.0.0.1" in addresses or "::1" in addresses
    assert ticks > 20  # the loop kept running while getaddrinfo slept in the executor

    async def flood() -> float:
        """40 slow lookups at once (a hostile DNS server) while the API does its usual to_thread work."""
        lookups = [asyncio.create_task(check_destination(f"http://h{i}.test/", Settings())) for i in range(40)]
        await asyncio.sleep(0.05)
        started = time.monotonic()
        await asyncio.gather(*(asyncio.to_thread(time.sleep, 0.01) for _ in range(50)))
        waited = time.monotonic() - started
        await asyncio.gather(*lookups, return_exceptions=True)
        return waited

    assert asyncio.run(flood()) < 0.3  # the default executor is not starved by DNS
    # A name the resolver maps to loopback is refused like the literal.
    with pytest.raises(DestinationRefused):
        asyncio.run(resolve_target("http://localhost:9/x", allow_private=False))


# --- deliveries over real HTTP, with a real Redis ---------------------------------------------------


@dataclass
class Receiver:
    server: http.server.ThreadingHTTPServer
    calls: list[tuple[str, dict[str, str], bytes]] = field(default_factory=list)
    status: int = 204

    @property
    def port(self) -> int:
        return self.server.server_address[1]


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    yield from _serve()


def _serve(tls: ssl.SSLContext | None = None, status: int = 204) -> Iterator[Receiver]:
    holder: list[Receiver] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            holder[0].calls.append((self.path, dict(self.headers), body))
            self.send_response(holder[0].status)
            if holder[0].status in (301, 302, 307, 308):
                self.send_header("Location", self.headers.get("X-Redirect-To", "/"))
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    if tls is not None:
        server.socket = tls.wrap_socket(server.socket, server_side=True)
    holder.append(Receiver(server, status=status))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield holder[0]
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TaskStore]:
    with EmbeddedRedis(tmp_path_factory.mktemp("hooks")) as embedded:
        client = connect(embedded.url)
        yield TaskStore(client)
        client.close()


def finished_task(store: TaskStore, callback_url: str) -> str:
    task_id = str(uuid.uuid4())
    store.create(task_id, owner="alice", options={"callback_url": callback_url, "features": ["raw_transcript"]})
    store.finish(task_id, TaskStatus.COMPLETE)
    return task_id


def webhook(store: TaskStore, task_id: str) -> dict:
    record = store.get(task_id)
    assert record is not None and record.webhook is not None
    return record.webhook.model_dump(exclude_unset=True)


def scheduled(store: TaskStore, task_id: str) -> bool:
    return store.redis.zscore(OUTBOX, task_id) is not None


class NetworkAsSeenThroughOurDns(httpx.AsyncBaseTransport):
    """What the network does with a request, given the DNS answers of ``resolve``: a request naming a host
    resolves it (taking the NEXT answer, as a second lookup would), then connects; loopback connections
    are really made (to our receivers), any other address is recorded and refused without sending."""

    def __init__(self, resolve: object) -> None:
        self.resolve = resolve
        self.inner = httpx.AsyncHTTPTransport()
        self.refused: list[str] = []

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        host = request.url.host
        if address_refusal(host, allow_private=True) is not None:  # a name, not an address
            host = (await self.resolve(host, request.url.port or 80))[0]  # type: ignore[operator]
            request.url = request.url.copy_with(host=host)
        if host not in ("127.0.0.1", "::1"):
            self.refused.append(host)
            raise httpx.ConnectError(f"test guard: not sending to {host}", request=request)
        return await self.inner.handle_async_request(request)

    async def aclose(self) -> None:
        await self.inner.aclose()


def test_dns_rebinding_cannot_reach_a_loopback_receiver(store: TaskStore, receiver: Receiver) -> None:
    """The name answers a public address at the check and loopback right after: nothing reaches loopback."""
    asked, rebinding = answers([PUBLIC], ["127.0.0.1"])
    network = NetworkAsSeenThroughOurDns(rebinding)
    settings = Settings(webhook_allow_private=False)
    task_id = finished_task(store, f"http://rebind.test:{receiver.port}/hook")

    async def attempt() -> None:
        async with httpx.AsyncClient(transport=network, follow_redirects=False) as client:
            await deliver_once(store, settings, client, task_id, resolver=rebinding)

    asyncio.run(attempt())
    # First attempt: checked the public answer and went to exactly that address (the guard stopped it).
    assert asked == ["rebind.test"] and network.refused == [PUBLIC]
    first = webhook(store, task_id)["attempts"][0]
    assert first["address"] == PUBLIC and first["error"] == "ConnectError"
    assert scheduled(store, task_id)  # a connect failure is retried
    store.redis.zrem(OUTBOX, task_id)  # as the deliverer does when it claims the retry
    # Second attempt: the name now answers loopback, which the check refuses; no retry after that.
    asyncio.run(attempt())
    second = webhook(store, task_id)["attempts"][1]
    assert second["error"] == ErrorCode.DESTINATION_REFUSED and "127.0.0.1" in second["detail"]
    assert not scheduled(store, task_id) and webhook(store, task_id)["delivered"] is False
    assert receiver.calls == []
    assert asked == ["rebind.test", "rebind.test"]  # one lookup per attempt, none by the HTTP client


def test_connection_goes_to_the_checked_address_with_the_original_host(store: TaskStore, receiver: Receiver) -> None:
    asked, resolver = answers(["127.0.0.1"])
    settings = Settings(webhook_allow_private=True, webhook_secret="s3cret")
    task_id = finished_task(store, f"http://hooks.test:{receiver.port}/hook/path?x=1")

    async def attempt() -> None:
        async with new_client() as client:  # the production client: hooks.test exists in no real DNS
            await deliver_once(store, settings, client, task_id, resolver=resolver)

    asyncio.run(attempt())
    assert asked == ["hooks.test"]
    [(path, headers, body)] = receiver.calls
    assert path == "/hook/path?x=1"
    assert json.loads(body) == {"task_id": task_id, "status": "COMPLETE"}
    assert headers["Host"] == f"hooks.test:{receiver.port}"
    assert "X-MAIE-Signature" in headers
    state = webhook(store, task_id)
    assert state["delivered"] is True and state["attempts"][0]["address"] == "127.0.0.1"
    assert state["attempts"][0]["status_code"] == 204


def test_refused_at_delivery_is_recorded_and_not_retried(store: TaskStore, receiver: Receiver) -> None:
    """Accepted at submission (it resolved publicly then); at delivery time it resolves to a private address."""
    _, now_private = answers(["10.20.30.40"])
    task_id = finished_task(store, f"http://hooks.test:{receiver.port}/hook")

    async def attempt() -> None:
        async with new_client() as client:
            await deliver_once(store, Settings(), client, task_id, resolver=now_private)

    asyncio.run(attempt())
    [only] = webhook(store, task_id)["attempts"]
    assert only["error"] == "DESTINATION_REFUSED" and "10.20.30.40" in only["detail"]
    assert "address" not in only and not scheduled(store, task_id)
    assert receiver.calls == []


def test_unresolvable_at_delivery_is_retried_with_backoff(store: TaskStore) -> None:
    task_id = finished_task(store, "https://hooks.test/hook")

    async def attempt() -> None:
        async with new_client() as client:
            await deliver_once(store, Settings(), client, task_id, resolver=no_answer)

    asyncio.run(attempt())
    state = webhook(store, task_id)
    assert state["attempts"][0]["error"] == "DESTINATION_UNRESOLVED" and state["next_attempt_in_s"] == 1.0
    assert scheduled(store, task_id)
    store.redis.zrem(OUTBOX, task_id)


def test_redirects_are_not_followed(store: TaskStore) -> None:
    first = _serve(status=302)
    second = _serve()
    redirecting, target = next(first), next(second)
    try:
        _, resolver = answers(["127.0.0.1"])
        task_id = finished_task(store, f"http://hooks.test:{redirecting.port}/hook")

        async def attempt() -> None:
            async with new_client() as client:
                client.headers["X-Redirect-To"] = f"http://127.0.0.1:{target.port}/stolen"
                await deliver_once(store, Settings(webhook_allow_private=True), client, task_id, resolver=resolver)

        asyncio.run(attempt())
        assert len(redirecting.calls) == 1 and target.calls == []
        assert webhook(store, task_id)["attempts"][0]["status_code"] == 302
        store.redis.zrem(OUTBOX, task_id)
    finally:
        for gen in (first, second):
            next(gen, None)


def _certificate(tmp: Path, name: str) -> tuple[Path, Path]:
    key, cert = tmp / f"{name}.key", tmp / f"{name}.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", f"/CN={name}",
         "-addext", f"subjectAltName=DNS:{name}", "-keyout", str(key), "-out", str(cert)],
        check=True,
        capture_output=True,
    )  # fmt: skip
    return key, cert


def test_https_verifies_the_certificate_for_the_original_name(store: TaskStore, tmp_path: Path) -> None:
    """Connecting to the checked IP must still prove the receiver owns the NAME (SNI + hostname check)."""
    key, cert = _certificate(tmp_path, "hooks.test")
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(cert, key)
    gen = _serve(tls=server_ctx)
    tls_receiver = next(gen)
    try:
        trust = ssl.create_default_context(cafile=str(cert))
        _, resolver = answers(["127.0.0.1"])
        settings = Settings(webhook_allow_private=True)
        good = finished_task(store, f"https://hooks.test:{tls_receiver.port}/hook")
        # Same address, but a name the certificate does not cover: the TLS check must fail.
        bad = finished_task(store, f"https://other.test:{tls_receiver.port}/hook")

        async def attempt(task_id: str) -> None:
            async with httpx.AsyncClient(verify=trust, follow_redirects=False, trust_env=False) as client:
                await deliver_once(store, settings, client, task_id, resolver=resolver)

        asyncio.run(attempt(good))
        asyncio.run(attempt(bad))
    finally:
        next(gen, None)
    assert webhook(store, good)["delivered"] is True
    assert len(tls_receiver.calls) == 1 and tls_receiver.calls[0][1]["Host"] == f"hooks.test:{tls_receiver.port}"
    assert webhook(store, bad)["delivered"] is False and webhook(store, bad)["attempts"][0]["error"] == "ConnectError"
    store.redis.zrem(OUTBOX, bad)


@pytest.mark.slow
def test_submission_resolves_names_and_refuses_internal_ones(tmp_path: Path) -> None:
    """Over real HTTP: a NAME that resolves to loopback (``localhost``, from /etc/hosts) is refused like the
    literal, on both submission routes (the sync text route resolves on the event loop too)."""
    from service import start_service

    svc = start_service(tmp_path / "data", workers=0)
    try:
        svc.wait_ready(need_worker=False)
        with svc.client() as client:
            for url in ("http://localhost:9/hook", "http://LOCALHOST./hook", "http://[::ffff:127.0.0.1]:9/x"):
                r = client.post("/v1/process", data={"callback_url": url}, files={"file": ("a.wav", b"RIFF")})
                assert r.status_code == 422 and r.json()["code"] == "INVALID_FIELD", (url, r.text)
                assert "callback_url" in r.json()["detail"]
                r = client.post("/v1/process_text", json={"text": "hello", "callback_url": url})
                assert r.status_code == 422 and r.json()["code"] == "INVALID_FIELD", (url, r.text)
        assert httpx.get(svc.base_url + "/health").status_code == 200
    finally:
        svc.stop()
    assert "Traceback" not in svc.log()
