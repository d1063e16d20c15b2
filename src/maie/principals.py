"""Who is calling: API keys as named principals, and what each may see.

``MAIE_API_KEYS`` and ``MAIE_ADMIN_KEYS`` take comma-separated ``name:key`` entries. A bare ``key``
still works and gets a stable derived name (``key-`` and 10 hex digits of its SHA-256), so the key
itself never appears in a record, a log line or a metric. Names are the identity everything else
uses: a task's and a user template's owner is the name of the key that created it.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from dataclasses import dataclass

KEY_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}")
"""Key names (matched in full). No leading dot and no slash: a name can label a folder safely."""
GENERATED_KEY_NAME = "local"
"""Name of the key ``maie serve`` generates when no key is configured; it is an admin key."""


@dataclass(frozen=True)
class Principal:
    """A caller: the key's name, and whether it may see and manage everything."""

    name: str
    admin: bool = False

    def can_see(self, owner: str | None) -> bool:
        """Owners see their own; admins see everything, including records from before owners existed."""
        return self.admin or (owner is not None and owner == self.name)


@dataclass(frozen=True)
class KeyEntry:
    name: str
    key: str
    admin: bool


def derived_name(key: str) -> str:
    return "key-" + hashlib.sha256(key.encode()).hexdigest()[:10]


def parse_entry(entry: str, *, admin: bool) -> KeyEntry:
    """``name:key`` or a bare ``key``. A prefix that is not a valid name is part of a bare key."""
    entry = entry.strip()
    name, sep, key = entry.partition(":")
    if sep and key and KEY_NAME.fullmatch(name):
        return KeyEntry(name=name, key=key, admin=admin)
    return KeyEntry(name=derived_name(entry), key=entry, admin=admin)


def parse_entries(users: list[str], admins: list[str]) -> list[KeyEntry]:
    """All configured keys. A key listed in both lists is an admin; a name used twice is refused."""
    entries = [parse_entry(e, admin=True) for e in admins if e.strip()]
    admin_keys = {e.key for e in entries}
    for raw in users:
        if raw.strip() and (entry := parse_entry(raw, admin=False)).key not in admin_keys:
            entries.append(entry)
    seen: dict[str, str] = {}
    for e in entries:
        if seen.get(e.name, e.key) != e.key:
            raise ValueError(f"key name {e.name!r} is used for two different keys")
        seen[e.name] = e.key
    return entries


def authenticate(entries: list[KeyEntry], presented: str) -> Principal | None:
    """The principal of ``presented``, comparing against every key so timing does not tell which."""
    found: KeyEntry | None = None
    given = presented.encode()
    for e in entries:
        if hmac.compare_digest(e.key.encode(), given) and found is None:
            found = e
    return Principal(found.name, found.admin) if found else None
