"""Where a webhook may go: http(s) URLs whose host resolves only to globally routable addresses.

The check runs at submission (a clear 422 early) and again at every delivery attempt, and the delivery
connects to an address this module approved (``resolve_target``), never to a second resolution of the
name: a DNS answer that changes between check and connect (rebinding) cannot point a webhook inside.

Resolution runs ``getaddrinfo`` on a small thread pool of its own, never blocking the event loop.
"""

from __future__ import annotations

import asyncio
import functools
import ipaddress
import socket
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from urllib.parse import urlsplit

from maie.config import Settings
from maie.errors import ErrorCode, MaieError

Resolver = Callable[[str, int], Awaitable[list[str]]]
"""``(host, port) -> addresses``; the delivery takes one as a parameter so tests can control DNS."""

RESOLVE_TIMEOUT_S = 5.0

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

# Not globally reachable, whatever the running Python's ``is_global`` says: its tables changed between
# releases (3.11 treats 192.0.0.0/24 outside two /29s, fec0::/10 and ::/96 as global).
ALWAYS_REFUSED = tuple(
    ipaddress.ip_network(n)
    for n in (
        "0.0.0.0/8",  # "this network"; 0.0.0.0 reaches the local host on Linux
        "100.64.0.0/10",  # carrier-grade NAT (shared address space)
        "192.0.0.0/24",  # IETF protocol assignments
        "198.18.0.0/15",  # benchmarking
        "240.0.0.0/4",  # reserved, and the limited broadcast
        "::/96",  # deprecated IPv4-compatible IPv6
        "fec0::/10",  # deprecated site-local
        "64:ff9b:1::/48",  # local-use NAT64
        "2001:db8::/32",  # documentation
    )
)


class DestinationRefused(Exception):
    """A webhook destination that must not be contacted. ``code`` is recorded in the delivery attempts."""

    def __init__(self, reason: str, code: ErrorCode = ErrorCode.DESTINATION_REFUSED) -> None:
        super().__init__(reason)
        self.reason = reason
        self.code = code


@dataclass(frozen=True)
class Target:
    scheme: str
    host: str
    """ASCII host name (IDNA-encoded) or IP literal, without brackets."""
    port: int


def parse_url(url: str) -> Target:
    """Syntax only: an http(s) URL with a host. Raises DestinationRefused."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        raise DestinationRefused("expected an http(s) URL") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise DestinationRefused("expected an http(s) URL")
    host = parts.hostname
    try:
        host = host.encode("idna").decode("ascii") if not host.isascii() else host
    except UnicodeError:
        raise DestinationRefused("the host name is not a valid domain name") from None
    return Target(parts.scheme, host, port or (443 if parts.scheme == "https" else 80))


def _literal(host: str) -> IPAddress | None:
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        return None


def _embedded_ipv4(ip: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 one carries (mapped, 6to4, Teredo client, well-known NAT64 prefix)."""
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    if ip.sixtofour is not None:
        return ip.sixtofour
    if ip.teredo is not None:
        return ip.teredo[1]
    if ip in ipaddress.ip_network("64:ff9b::/96"):
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return None


def _kind(ip: IPAddress) -> str:
    if ip.version == 4 and ip in ipaddress.ip_network("100.64.0.0/10"):
        return "shared address space"
    for attr, name in (
        ("is_loopback", "loopback"),
        ("is_link_local", "link-local"),
        ("is_private", "private"),
        ("is_reserved", "reserved"),
    ):
        if getattr(ip, attr):
            return name
    return "special-purpose"


def address_refusal(address: str, *, allow_private: bool = False) -> str | None:
    """Why ``address`` must not be contacted, or None when it may be.

    Allowed: ``ipaddress.is_global`` unicast addresses outside :data:`ALWAYS_REFUSED`, with any IPv4
    address an IPv6 one embeds allowed too. ``allow_private`` (``MAIE_WEBHOOK_ALLOW_PRIVATE``, for tests
    and closed networks) also admits loopback, private and link-local unicast, never multicast,
    broadcast, the unspecified address or an IPv6 zone id.
    """
    ip = _literal(address)
    if ip is None:
        return f"{address!r} is not an IP address"
    if isinstance(ip, ipaddress.IPv6Address) and ip.scope_id:
        return f"{address} has an IPv6 zone id"
    if ip.is_multicast:
        return f"{address} is a multicast address"
    if ip.is_unspecified:
        return f"{address} is the unspecified address"
    if ip == ipaddress.IPv4Address("255.255.255.255"):
        return f"{address} is the broadcast address"
    if isinstance(ip, ipaddress.IPv6Address):
        inner = _embedded_ipv4(ip)
        if inner is not None:
            why = address_refusal(str(inner), allow_private=allow_private)
            return f"{address} embeds {why}" if why else None
    if allow_private:
        return None
    if not ip.is_global or any(ip in net for net in ALWAYS_REFUSED if net.version == ip.version):
        return f"{address} is not globally routable ({_kind(ip)})"
    return None


# Lookups run on threads of their own, not the loop's default executor (what ``loop.getaddrinfo`` and
# ``asyncio.to_thread`` share): a flood of callback URLs on deliberately slow DNS servers then only
# queues lookups here, which time out and are refused, instead of starving every Redis call of the API.
_DNS_POOL = ThreadPoolExecutor(max_workers=8, thread_name_prefix="maie-dns")


async def system_resolver(host: str, port: int) -> list[str]:
    """Every address ``host`` resolves to, without blocking the event loop (getaddrinfo on a thread)."""
    loop = asyncio.get_running_loop()
    lookup = functools.partial(socket.getaddrinfo, host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP)
    infos = await loop.run_in_executor(_DNS_POOL, lookup)
    addresses = []
    for family, _type, _proto, _name, sockaddr in infos:
        address = str(sockaddr[0])
        # A scoped IPv6 answer (link-local with an interface) keeps its zone so the check refuses it.
        if family == socket.AF_INET6 and len(sockaddr) >= 4 and sockaddr[3] and "%" not in address:
            address = f"{address}%{sockaddr[3]}"
        addresses.append(address)
    return addresses


async def resolve_target(url: str, *, allow_private: bool, resolver: Resolver = system_resolver) -> list[str]:
    """The addresses a delivery to ``url`` may connect to, all checked; raises DestinationRefused.

    When any address of the answer is refused the whole destination is: a name that mixes public and
    internal addresses is the shape of a rebinding attack, and picking the public one would hide it.
    """
    target = parse_url(url)
    literal = _literal(target.host)
    if literal is not None:
        addresses = [target.host]
    else:
        try:
            addresses = await asyncio.wait_for(resolver(target.host, target.port), RESOLVE_TIMEOUT_S)
        except (OSError, TimeoutError, UnicodeError) as exc:
            raise DestinationRefused(
                f"{target.host} does not resolve ({type(exc).__name__})", ErrorCode.DESTINATION_UNRESOLVED
            ) from None
        if not addresses:
            raise DestinationRefused(f"{target.host} does not resolve", ErrorCode.DESTINATION_UNRESOLVED)
    unique = list(dict.fromkeys(addresses))
    for address in unique:
        why = address_refusal(address, allow_private=allow_private)
        if why:
            raise DestinationRefused(f"{target.host} resolves to {why}" if literal is None else why)
    return unique


def check_callback_url(url: str, settings: Settings) -> None:
    """Submission-time syntax check (no DNS, callable anywhere): scheme, host, and an IP literal's class."""
    try:
        target = parse_url(url)
        if _literal(target.host) is not None:
            why = address_refusal(target.host, allow_private=settings.webhook_allow_private)
            if why:
                raise DestinationRefused(why)
    except DestinationRefused as exc:
        raise _invalid(exc) from None


async def check_destination(url: str, settings: Settings, resolver: Resolver = system_resolver) -> None:
    """Submission-time full check: what :func:`check_callback_url` checks, plus every address the name
    resolves to now. Delivery checks again at every attempt (the answer may change)."""
    try:
        await resolve_target(url, allow_private=settings.webhook_allow_private, resolver=resolver)
    except DestinationRefused as exc:
        raise _invalid(exc) from None


def _invalid(exc: DestinationRefused) -> MaieError:
    hint = "" if exc.code == ErrorCode.DESTINATION_UNRESOLVED else " (only globally routable addresses are allowed)"
    return MaieError(ErrorCode.INVALID_FIELD, f"callback_url: {exc.reason}{hint}")
