"""One key ring for the whole service (docs/operations.md): API keys with roles, read by the API and
by every scorer replica, and the checks both apply to each request.

Roles: ``ingest`` (an inspection line's clients: score images), ``viewer`` (reads),
``operator`` (a viewer who also calibrates, acknowledges and labels) and ``service`` (the
credential the API calls the scorer with, for previews and views). A replica never sees a key:
its ``user_config`` (shown by the Ray dashboard) carries SHA-256 digests, and keys from a file
that every node mounts (``api_keys_file``, a path)."""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

Role = Literal["viewer", "operator", "ingest", "service"]
ROLES: tuple[Role, ...] = ("viewer", "operator", "ingest", "service")
# What each role may do: operators may do everything viewers may; the others only their own.
GRANTS: dict[Role, frozenset[Role]] = {
    "viewer": frozenset({"viewer"}),
    "operator": frozenset({"viewer", "operator"}),
    "ingest": frozenset({"ingest"}),
    "service": frozenset({"service"}),
}
# Keys shipped as examples (deploy/k8s): a deployment that still uses one is refused.
PLACEHOLDER_MARK = "change-me"
MIN_KEY_LENGTH = 16


class KeyConfigError(ValueError):
    """An API key specification that cannot be parsed."""


@dataclass(frozen=True)
class Principal:
    """Who makes a request: the name recorded in threshold history and alert events."""

    name: str
    role: Role

    def may(self, *roles: Role) -> bool:
        """Whether this caller holds any of ``roles``."""
        return any(r in GRANTS[self.role] for r in roles)


# Open mode (no key configured, loopback only): every caller may do everything.
ANONYMOUS = Principal(name="anonymous", role="operator")


def parse_api_keys(text: str) -> dict[str, Principal]:
    """``key:role[:name]`` entries separated by commas or newlines (``#`` starts a comment).

    Without a name, a key is recorded as ``<role>-<first 8 hex of its SHA-256>``, so history
    never shows a key itself. Keys are at least 16 characters (their digests are not secret),
    and the placeholders of the example manifests are refused."""
    keys: dict[str, Principal] = {}
    for raw in text.replace(",", "\n").splitlines():
        entry = raw.split("#", 1)[0].strip()
        if not entry:
            continue
        parts = [p.strip() for p in entry.split(":")]
        if len(parts) not in (2, 3) or not parts[0]:
            raise KeyConfigError(f"API key entry {_mask(entry)!r}: use key:role or key:role:name")
        key, role = parts[0], parts[1]
        if role not in ROLES:
            raise KeyConfigError(f"API key {_mask(key)!r}: role {role!r} is not one of {ROLES}")
        if len(key) < MIN_KEY_LENGTH:
            raise KeyConfigError(
                f"API key {_mask(key)!r}: use at least {MIN_KEY_LENGTH} characters "
                "(e.g. python -c 'import secrets; print(secrets.token_urlsafe(24))')"
            )
        if PLACEHOLDER_MARK in key:
            raise KeyConfigError(
                f"API key {_mask(key)!r} is an example's placeholder: make a key of your own"
            )
        name = parts[2] if len(parts) == 3 and parts[2] else None
        keys[key] = Principal(name=name or f"{role}-{digest(key)[:8]}", role=role)
    return keys


def load_api_keys(spec: str | None, file: Path | str | None) -> dict[str, Principal]:
    """Keys from the ``VLAEWATCH_API_KEYS`` value and/or a file of the same format."""
    keys = parse_api_keys(spec or "")
    if file is not None:
        try:
            keys.update(parse_api_keys(Path(file).read_text()))
        except OSError as exc:
            raise KeyConfigError(f"cannot read API keys file {file}: {exc}") from exc
    return keys


def digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def digests(keys: Mapping[str, Principal]) -> dict[str, tuple[Role, str]]:
    """What a scorer replica is given of the keys: digest -> (role, name)."""
    return {digest(k): (p.role, p.name) for k, p in keys.items()}


def _mask(text: str) -> str:
    return text[:2] + "…" if len(text) > 2 else "…"


class KeyRing:
    """Keys as SHA-256 digests: a request hashes only the key it presents. Lookups take
    constant time: digests of equal length, every key compared, no early exit, so response
    times say nothing about how much of a key was right."""

    def __init__(self, by_digest: Mapping[str, tuple[Role, str]]) -> None:
        self._digests = [(bytes.fromhex(d), Principal(name, role))
                         for d, (role, name) in by_digest.items()]  # fmt: skip

    @classmethod
    def of(cls, keys: Mapping[str, Principal]) -> KeyRing:
        return cls(digests(keys))

    def __bool__(self) -> bool:
        return bool(self._digests)

    def find(self, key: str) -> Principal | None:
        presented = hashlib.sha256(key.encode()).digest()
        found = None
        for held, holder in self._digests:
            if hmac.compare_digest(held, presented):
                found = holder
        return found


def presented_key(headers: Mapping[str, str]) -> str | None:
    """``X-API-Key``, or ``Authorization: Bearer <key>`` (what Prometheus can send)."""
    key = headers.get("x-api-key")
    if key:
        return key
    scheme, _, value = headers.get("authorization", "").partition(" ")
    return value.strip() if scheme.lower() == "bearer" and value.strip() else None


def cross_site(method: str, headers: Mapping[str, str]) -> str | None:
    """Why a state-changing request came from another site's page, else None. A browser
    sends ``Origin`` with every cross-origin POST (and ``Sec-Fetch-Site``); clients that are
    not browsers send neither. This is what stands between a page on another site and a
    service in open mode on the operator's own machine."""
    if method in ("GET", "HEAD", "OPTIONS"):
        return None
    if headers.get("sec-fetch-site", "") == "cross-site":
        return "cross-site request refused (Sec-Fetch-Site: cross-site)"
    origin = headers.get("origin")
    if origin is None:
        return None
    if origin == "null" or urlsplit(origin).netloc.lower() != headers.get("host", "").lower():
        return f"cross-site request refused: Origin {origin[:80]!r} is not this service"
    return None


class Refused(Exception):
    """A caller turned away: ``status`` 401 (no key, or one the ring does not hold) or 403
    (a role it lacks, or a cross-site browser request), with the reason it is told."""

    def __init__(self, status: Literal[401, 403], reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


def identify(ring: KeyRing, headers: Mapping[str, str]) -> Principal:
    """The holder of the key ``headers`` present; anyone in open mode (an empty ring).
    ``Refused`` (401) without a key, or with one the ring does not hold."""
    if not ring:
        return ANONYMOUS
    key = presented_key(headers)
    if key is None:
        raise Refused(401, "send an API key in the X-API-Key header")
    holder = ring.find(key)
    if holder is None:
        raise Refused(401, "unknown API key")
    return holder


def authorize(caller: Principal, *roles: Role) -> Principal:
    """``caller``, when it holds one of ``roles`` (anyone in open mode); else ``Refused``
    (403)."""
    if caller is not ANONYMOUS and not caller.may(*roles):
        raise Refused(403, f"{caller.name} is a {caller.role}; this needs {' or '.join(roles)}")
    return caller


def admit(ring: KeyRing, method: str, headers: Mapping[str, str], *roles: Role) -> Principal:
    """Who may make this request, checked in order: a cross-site browser request (403, in
    open mode too), the key (401), the role (403); each refusal raises ``Refused``."""
    why = cross_site(method, headers)
    if why is not None:
        raise Refused(403, why)
    return authorize(identify(ring, headers), *roles)
