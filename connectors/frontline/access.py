"""Who may call Touchpoint's HTTP doors: keys, what each key stands for, and masking.

Keys. A caller presents an API key as ``Authorization: Bearer <key>`` or
``X-API-Key: <key>`` (the agent page's browser session carries it in an
HttpOnly cookie, see :mod:`connectors.frontline.agent_page`). Settings hold only the
sha256 hex digest of each key, mapped to what the key stands for. Two key
stores share one mechanism (:class:`KeyStore`), each with its own settings so
that a front-line key can never publish events nor a webhook's key read cards:

* the lookup API's :class:`KeyRing`: ``{"name", "role"}`` in
  ``TOUCHPOINT_API_KEYS`` and the file ``TOUCHPOINT_API_KEYS_FILE``;
* the ingest gateway's :class:`SourceKeys`: a *source system* and what it
  may publish, ``{"name": "sms-provider", "channels": ["sms"], "types":
  ["sms", "consent"], "rate_per_s": 50, "burst": 100, "max_body_bytes":
  65536}`` (``"*"`` in ``channels`` or ``types`` means every one; the last
  three are optional) in ``TOUCHPOINT_GATEWAY_KEYS`` and the file
  ``TOUCHPOINT_GATEWAY_KEYS_FILE``.

The JSON setting is fixed for the process's life; the file (same shape) is
re-read whenever it changes, so keys are added, rotated and revoked without a
restart. A file that turns invalid is logged and the last valid set is kept
(one typo must not lock every caller out); an invalid set at startup is a
:class:`~touchpoint.errors.ConfigError`. A key's digest is a plain sha256
(not a slow password hash): keys are long random strings (``new-key`` makes
32 random bytes), not passwords.

Roles (lookup). ``agent``: cards with identifiers masked, always (asking for
clear ones is 403). ``operations`` and ``admin``: masked by default too, clear
on ``unmasked=true`` with a reason (so the audit shows who asked for clear PII,
and why). ``admin`` alone reads the audit trail and lifts a blocked key.
``service``: a system looking customers up for the contact centre (a CTI
screen pop, an IVR), masked like an agent, with limits for machine rates. A
key's entry may name limits of its own (``per_minute``, ``burst``,
``daily_customers``; :mod:`connectors.frontline.limits`).

Masking (agent view): e-mail ``a***@example.com``, phone ``•••• 0123``,
card, cookie and device ``•••• `` plus their last four; the customer number
stays, agents verify callers with it.

``python -m connectors.frontline.access new-key --name ada --role agent`` prints a
fresh lookup key (give it to its holder) and the entry to configure (its
digest); ``new-key --name sms-provider --channels sms --types sms consent``
does the same for a gateway source.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import secrets
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Generic, Literal, TypeVar, get_args

from pydantic import ValidationError

from touchpoint.contract.models import Channel, EventType
from touchpoint.errors import ConfigError
from touchpoint.settings import LookupLimits, Settings

__all__ = ["CHANNELS", "EVENT_TYPES", "ROLES", "KeyRing", "KeyStore", "Principal", "Role", "Source", "SourceKeys",
           "digest", "may_unmask", "presented_key"]

log = logging.getLogger(__name__)

Role = Literal["agent", "operations", "admin", "service"]
ROLES: Final[tuple[str, ...]] = get_args(Role)
CHANNELS: Final[tuple[str, ...]] = get_args(Channel)
EVENT_TYPES: Final[tuple[str, ...]] = get_args(EventType)
ANY: Final = "*"

E = TypeVar("E")


@dataclass(frozen=True, slots=True)
class Principal:
    """The caller a key stands for: its name (the audit's *who*), role, and the limits its entry names for
    itself (``per_minute``, ``burst``, ``daily_customers``; the others are its role's, see
    :mod:`connectors.frontline.limits`)."""

    name: str
    role: Role
    own_limits: tuple[tuple[str, Any], ...] = ()


@dataclass(frozen=True, slots=True)
class Source:
    """A source system the ingest gateway takes events from, and what it may publish.

    ``channels`` and ``types`` are None when the entry says ``"*"`` (every one).
    ``rate_per_s``, ``burst`` and ``max_body_bytes`` are None when the entry
    leaves them to the gateway's defaults.
    """

    name: str
    channels: frozenset[str] | None
    types: frozenset[str] | None
    rate_per_s: float | None = None
    burst: int | None = None
    max_body_bytes: int | None = None

    def refusal(self, channel: object, event_type: object) -> tuple[str, str] | None:
        """``(field, reason)`` when an event of this channel and type is outside the key's scope, else None.

        Values that are not strings are not judged here: they break the contract, which says so.
        """
        if self.channels is not None and isinstance(channel, str) and channel not in self.channels:
            return "channel", (f"source {self.name} may not publish on channel {channel!r} "
                               f"(its key allows: {', '.join(sorted(self.channels))})")
        if self.types is not None and isinstance(event_type, str) and event_type not in self.types:
            return "type", (f"source {self.name} may not publish events of type {event_type!r} "
                            f"(its key allows: {', '.join(sorted(self.types))})")
        return None


def digest(key: str) -> str:
    """The form a key is configured in: sha256 hex of its UTF-8 bytes."""
    return hashlib.sha256(key.encode()).hexdigest()


def may_unmask(principal: Principal) -> bool:
    """Whether this caller may ask for clear identifiers."""
    return principal.role in ("operations", "admin")


def presented_key(headers: Mapping[str, str]) -> str | None:
    """The key in a request's headers: a bearer token, else an ``X-API-Key`` header; None when neither."""
    scheme, _, token = headers.get("authorization", "").partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        return token.strip()
    return headers.get("x-api-key", "").strip() or None


# --- parsing entries: {digest: entry}, errors name the source and the entry, never a key ---

EntryParser = Callable[[str, Any, str], E]
"""Turns one entry (its shown digest prefix, its JSON value, the settings' name) into what the key stands for."""


def _parse_all(entries: Any, source: str, parse_entry: EntryParser[E], shape: str) -> dict[str, E]:
    """Validate ``{digest: entry}``; errors name the source and the entry."""
    if not isinstance(entries, dict):
        raise ConfigError(f"{source}: expected a JSON object of sha256 hex digest -> {shape}")
    ring: dict[str, E] = {}
    for key_digest, entry in entries.items():
        shown = f"{str(key_digest)[:12]}…"
        if not isinstance(key_digest, str) or len(key_digest) != 64 \
                or any(c not in "0123456789abcdef" for c in key_digest.lower()):
            raise ConfigError(f"{source}: entry {shown} is not a sha256 hex digest (64 hex digits) of a key")
        ring[key_digest.lower()] = parse_entry(shown, entry, source)
    return ring


def _name(shown: str, entry: dict[str, Any], source: str) -> str:
    name = entry.get("name")
    if not isinstance(name, str) or not name.strip():
        raise ConfigError(f"{source}: entry {shown} needs a non-empty name")
    return name.strip()


_LIMIT_FIELDS: Final = frozenset(LookupLimits.model_fields)


def _principal(shown: str, entry: Any, source: str) -> Principal:
    if not isinstance(entry, dict) or not {"name", "role"} <= set(entry) or set(entry) - {"name", "role",
                                                                                          *_LIMIT_FIELDS}:
        raise ConfigError(f"{source}: entry {shown} must be {{\"name\": ..., \"role\": ...}} and optionally "
                          f"{', '.join(sorted(_LIMIT_FIELDS))}")
    name, role = _name(shown, entry, source), entry["role"]
    if role not in ROLES:
        raise ConfigError(f"{source}: entry {shown} ({name}) has role {role!r}; roles: {', '.join(ROLES)}")
    own = {field: entry[field] for field in sorted(_LIMIT_FIELDS & set(entry))}
    try:  # the same checks as the settings' limits, on what the entry names
        LookupLimits.model_validate({"per_minute": 1, "burst": 1, **own})
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        raise ConfigError(f"{source}: entry {shown} ({name}): {problems}") from exc
    return Principal(name, role, tuple(own.items()))


_SOURCE_FIELDS: Final = frozenset({"name", "channels", "types", "rate_per_s", "burst", "max_body_bytes"})


def _scope(shown: str, name: str, entry: dict[str, Any], field: str, known: tuple[str, ...],
           source: str) -> frozenset[str] | None:
    """A ``channels`` or ``types`` list: ``["*"]`` is every one, else known names only (a typo would
    otherwise refuse every event of that source without saying why)."""
    values = entry.get(field)
    if not isinstance(values, list) or not values or not all(isinstance(v, str) for v in values):
        raise ConfigError(f"{source}: entry {shown} ({name}) needs {field!r}: a non-empty list of names, "
                          f"or [\"*\"] for every one")
    if ANY in values:
        if len(values) > 1:
            raise ConfigError(f"{source}: entry {shown} ({name}): {field} has \"*\" and names; give one or the other")
        return None
    unknown = sorted(set(values) - set(known))
    if unknown:
        raise ConfigError(f"{source}: entry {shown} ({name}) names unknown {field} {', '.join(map(repr, unknown))}; "
                          f"known: {', '.join(known)}")
    return frozenset(values)


def _positive(shown: str, name: str, entry: dict[str, Any], field: str, source: str, *,
              integer: bool) -> Any:
    value = entry.get(field)
    if value is None and field not in entry:
        return None
    if (isinstance(value, bool) or not isinstance(value, int | float) or (integer and not isinstance(value, int))
            or not math.isfinite(value) or value <= 0):
        kind = "a positive integer" if integer else "a positive number"
        raise ConfigError(f"{source}: entry {shown} ({name}): {field} must be {kind}, got {value!r}")
    return value


def _source(shown: str, entry: Any, source: str) -> Source:
    if not isinstance(entry, dict):
        raise ConfigError(f"{source}: entry {shown} must be an object "
                          "{\"name\", \"channels\", \"types\"[, \"rate_per_s\", \"burst\", \"max_body_bytes\"]}")
    name = _name(shown, entry, source)
    extra = sorted(set(entry) - _SOURCE_FIELDS)
    if extra:
        raise ConfigError(f"{source}: entry {shown} ({name}) has unknown fields {', '.join(extra)}; "
                          f"fields: {', '.join(sorted(_SOURCE_FIELDS))}")
    rate = _positive(shown, name, entry, "rate_per_s", source, integer=False)
    return Source(name=name,
                  channels=_scope(shown, name, entry, "channels", CHANNELS, source),
                  types=_scope(shown, name, entry, "types", EVENT_TYPES, source),
                  rate_per_s=float(rate) if rate is not None else None,
                  burst=_positive(shown, name, entry, "burst", source, integer=True),
                  max_body_bytes=_positive(shown, name, entry, "max_body_bytes", source, integer=True))


# --- the stores ---

class KeyStore(Generic[E]):
    """Keys by digest: fixed ones from the settings plus a file re-read on change.

    :param fixed: the JSON setting's entries.
    :param file: the keys file, or None.
    :param setting: the settings' environment name (``TOUCHPOINT_API_KEYS``), for messages.
    :param parse_entry: validates one entry into what the key stands for.
    :param shape: the entries' shape, for messages.
    :raises ConfigError: an entry is invalid, or the file cannot be read at startup.
    """

    def __init__(self, fixed: Any, file: Path | None, setting: str, parse_entry: EntryParser[E], shape: str) -> None:
        self._setting = setting
        self._parse_entry = parse_entry
        self._shape = shape
        self._fixed = _parse_all(fixed, setting, parse_entry, shape)
        self._file = file
        self._lock = threading.Lock()
        self._stamp: tuple[int, int, int] | None = None
        self._from_file: dict[str, E] = {}
        if self._file is not None:
            stamp = self._stat()
            if stamp is None:
                raise ConfigError(f"{setting}_FILE: cannot read {self._file}")
            self._from_file = self._read()
            self._stamp = stamp

    def _stat(self) -> tuple[int, int, int] | None:
        assert self._file is not None
        try:
            st = os.stat(self._file)
        except OSError:
            return None
        return st.st_ino, st.st_mtime_ns, st.st_size

    def _read(self) -> dict[str, E]:
        assert self._file is not None
        source = f"{self._setting}_FILE {self._file}"
        try:
            entries = json.loads(Path(self._file).read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise ConfigError(f"{source}: {exc}") from exc
        return _parse_all(entries, source, self._parse_entry, self._shape)

    def _refresh(self) -> None:
        """Re-read the file if it changed (one stat per call); keep the last valid set on errors."""
        if self._file is None:
            return
        stamp = self._stat()
        if stamp == self._stamp:
            return
        with self._lock:
            if stamp == self._stamp:
                return
            try:
                if stamp is None:
                    raise ConfigError(f"{self._setting}_FILE: cannot read {self._file}")
                self._from_file = self._read()
                log.info("keys reloaded", extra={"file": str(self._file), "keys": len(self._from_file)})
            except ConfigError as exc:
                log.error("keys file invalid; keeping the previous keys", extra={"error": str(exc)})
            self._stamp = stamp

    def entry(self, key: str) -> E | None:
        """What ``key`` stands for, or None when it is not (or no longer) configured."""
        if not key:
            return None
        self._refresh()
        key_digest = digest(key)
        found = self._from_file.get(key_digest)
        return found if found is not None else self._fixed.get(key_digest)

    def __len__(self) -> int:
        self._refresh()
        return len(self._fixed.keys() | self._from_file.keys())


class KeyRing(KeyStore[Principal]):
    """The lookup API's keys: ``api_keys`` and ``api_keys_file``, each key a name and a role.

    :raises ConfigError: an entry is invalid, or the file cannot be read at startup.
    """

    def __init__(self, settings: Settings) -> None:
        super().__init__(settings.api_keys, settings.api_keys_file, "TOUCHPOINT_API_KEYS", _principal,
                         "{name, role}")

    def principal(self, key: str) -> Principal | None:
        """Who ``key`` stands for, or None when it is not (or no longer) configured."""
        return self.entry(key)


class SourceKeys(KeyStore[Source]):
    """The ingest gateway's keys: ``gateway_keys`` and ``gateway_keys_file``, each key a source system.

    :raises ConfigError: an entry is invalid, or the file cannot be read at startup.
    """

    def __init__(self, settings: Settings) -> None:
        super().__init__(settings.gateway_keys, settings.gateway_keys_file, "TOUCHPOINT_GATEWAY_KEYS", _source,
                         "{name, channels, types[, rate_per_s, burst, max_body_bytes]}")

    def source(self, key: str) -> Source | None:
        """The source system ``key`` belongs to, or None when it is not (or no longer) configured."""
        return self.entry(key)


def _main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m connectors.frontline.access",
                                     description="Make an API key (lookup API or ingest gateway) and its settings "
                                                 "entry.")
    sub = parser.add_subparsers(dest="command", required=True)
    new = sub.add_parser("new-key", help="print a fresh random key and the entry that configures it",
                         description="--role makes a lookup API key; --channels and --types a gateway source key.")
    new.add_argument("--name", required=True, help="who holds the key: a person (lookup) or a source system (gateway)")
    kind = new.add_mutually_exclusive_group(required=True)
    kind.add_argument("--role", choices=ROLES, help="lookup API: the holder's role")
    kind.add_argument("--channels", nargs="+", metavar="CHANNEL", choices=(*CHANNELS, ANY),
                      help="gateway: the channels the source may publish on (* for every one)")
    new.add_argument("--types", nargs="+", metavar="TYPE", choices=(*EVENT_TYPES, ANY),
                     help="gateway: the event types the source may publish (* for every one)")
    new.add_argument("--rate-per-s", type=float, help="gateway: requests per second (default: the gateway's)")
    new.add_argument("--burst", type=int, help="gateway: requests allowed at once (default: 2 s worth of the rate)")
    new.add_argument("--max-body-bytes", type=int, help="gateway: largest request body (default: the gateway's)")
    args = parser.parse_args(argv)
    gateway_only = (args.types, args.rate_per_s, args.burst, args.max_body_bytes)
    entry: dict[str, Any]
    if args.role is not None:
        if any(v is not None for v in gateway_only):
            parser.error("--types, --rate-per-s, --burst and --max-body-bytes are for gateway keys (with --channels)")
        entry, setting = {"name": args.name, "role": args.role}, "TOUCHPOINT_API_KEYS"
    else:
        if args.types is None:
            parser.error("a gateway key needs --types as well as --channels")
        entry = {"name": args.name, "channels": args.channels, "types": args.types}
        for field in ("rate_per_s", "burst", "max_body_bytes"):
            if getattr(args, field) is not None:
                entry[field] = getattr(args, field)
        try:
            _source("(new)", entry, "the new entry")  # the same checks the gateway will make
        except ConfigError as exc:
            parser.error(str(exc))
        setting = "TOUCHPOINT_GATEWAY_KEYS"
    key = secrets.token_urlsafe(32)
    print(f"key (give it to {args.name}; it is not stored anywhere): {key}")
    print(f"entry for {setting} or {setting}_FILE:")
    print(json.dumps({digest(key): entry}))
    return 0


if __name__ == "__main__":
    raise SystemExit(_main())
