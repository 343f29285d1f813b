"""Who may call the front line's HTTP doors, as what, and what each role sees.

Keys. A caller presents an API key as ``Authorization: Bearer <key>`` or
``X-API-Key: <key>`` (the agent page's browser session carries it in an
HttpOnly cookie, see :mod:`connectors.agent_page`). Settings hold only the
sha256 hex digest of each key, mapped to ``{"name", "role"}``: in
``TOUCHPOINT_API_KEYS`` (JSON, fixed for the process's life) and in the JSON
file ``TOUCHPOINT_API_KEYS_FILE`` (same shape), which is re-read whenever it
changes, so keys are added, rotated and revoked without a restart. A file
that turns invalid is logged and the last valid set is kept (one typo must
not lock the whole front line out); an invalid set at startup is a
:class:`~touchpoint.errors.ConfigError`. The same ring can serve the HTTP
gateway. A key's digest is a plain sha256 (not a slow password hash): keys
are long random strings (``new-key`` makes 32 random bytes), not passwords.

Roles. ``agent``: cards with identifiers masked, always (asking for clear
ones is 403). ``operations`` and ``admin``: masked by default too, clear on
``unmasked=true`` (so the audit shows who asked for clear PII). ``admin``
alone reads the audit trail.

Masking (agent view): e-mail ``a***@example.com``, phone ``•••• 0123``,
card, cookie and device ``•••• `` plus their last four; the customer number
stays, agents verify callers with it.

``python -m connectors.access new-key --name ada --role agent`` prints a
fresh key (give it to its holder) and the entry to configure (its digest).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import secrets
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Literal, get_args

from touchpoint.errors import ConfigError
from touchpoint.settings import Settings

__all__ = ["ROLES", "KeyRing", "Principal", "Role", "digest", "mask_card", "mask_identifier", "may_unmask"]

log = logging.getLogger(__name__)

Role = Literal["agent", "operations", "admin"]
ROLES: Final[tuple[str, ...]] = get_args(Role)

MASK: Final = "•••• "


@dataclass(frozen=True, slots=True)
class Principal:
    """The caller a key stands for: its name (the audit's *who*) and role."""

    name: str
    role: Role


def digest(key: str) -> str:
    """The form a key is configured in: sha256 hex of its UTF-8 bytes."""
    return hashlib.sha256(key.encode()).hexdigest()


def may_unmask(principal: Principal) -> bool:
    """Whether this caller may ask for clear identifiers."""
    return principal.role in ("operations", "admin")


def _parse_entries(entries: Any, source: str) -> dict[str, Principal]:
    """Validate ``{digest: {"name", "role"}}``; errors name the source and the entry."""
    if not isinstance(entries, dict):
        raise ConfigError(f"{source}: expected a JSON object of sha256 hex digest -> {{name, role}}")
    ring: dict[str, Principal] = {}
    for key_digest, entry in entries.items():
        shown = f"{str(key_digest)[:12]}…"
        if not isinstance(key_digest, str) or len(key_digest) != 64 \
                or any(c not in "0123456789abcdef" for c in key_digest.lower()):
            raise ConfigError(f"{source}: entry {shown} is not a sha256 hex digest (64 hex digits) of a key")
        if not isinstance(entry, dict) or set(entry) != {"name", "role"}:
            raise ConfigError(f"{source}: entry {shown} must be exactly {{\"name\": ..., \"role\": ...}}")
        name, role = entry["name"], entry["role"]
        if not isinstance(name, str) or not name.strip():
            raise ConfigError(f"{source}: entry {shown} needs a non-empty name")
        if role not in ROLES:
            raise ConfigError(f"{source}: entry {shown} ({name}) has role {role!r}; roles: {', '.join(ROLES)}")
        ring[key_digest.lower()] = Principal(name.strip(), role)
    return ring


class KeyRing:
    """The configured keys: fixed ones from the settings plus a file re-read on change.

    :param settings: ``api_keys`` and ``api_keys_file``.
    :raises ConfigError: an entry is invalid, or the file cannot be read at startup.
    """

    def __init__(self, settings: Settings) -> None:
        self._fixed = _parse_entries(settings.api_keys, "TOUCHPOINT_API_KEYS")
        self._file = settings.api_keys_file
        self._lock = threading.Lock()
        self._stamp: tuple[int, int, int] | None = None
        self._from_file: dict[str, Principal] = {}
        if self._file is not None:
            stamp = self._stat()
            if stamp is None:
                raise ConfigError(f"TOUCHPOINT_API_KEYS_FILE: cannot read {self._file}")
            self._from_file = self._read()
            self._stamp = stamp

    def _stat(self) -> tuple[int, int, int] | None:
        assert self._file is not None
        try:
            st = os.stat(self._file)
        except OSError:
            return None
        return st.st_ino, st.st_mtime_ns, st.st_size

    def _read(self) -> dict[str, Principal]:
        assert self._file is not None
        source = f"TOUCHPOINT_API_KEYS_FILE {self._file}"
        try:
            entries = json.loads(Path(self._file).read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise ConfigError(f"{source}: {exc}") from exc
        return _parse_entries(entries, source)

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
                    raise ConfigError(f"TOUCHPOINT_API_KEYS_FILE: cannot read {self._file}")
                self._from_file = self._read()
                log.info("api keys reloaded", extra={"file": str(self._file), "keys": len(self._from_file)})
            except ConfigError as exc:
                log.error("api keys file invalid; keeping the previous keys", extra={"error": str(exc)})
            self._stamp = stamp

    def principal(self, key: str) -> Principal | None:
        """Who ``key`` stands for, or None when it is not (or no longer) configured."""
        if not key:
            return None
        self._refresh()
        key_digest = digest(key)
        return self._from_file.get(key_digest) or self._fixed.get(key_digest)

    def __len__(self) -> int:
        self._refresh()
        return len(self._fixed.keys() | self._from_file.keys())


def mask_card(card: dict[str, Any]) -> dict[str, Any]:
    """A copy of a rendered card with its identifiers masked for the agent role."""
    identifiers = card.get("identifiers")
    if not isinstance(identifiers, dict):
        return card
    masked = {kind: [mask_identifier(kind, str(value)) for value in values] if isinstance(values, list) else values
              for kind, values in identifiers.items()}
    return {**card, "identifiers": masked}


def mask_identifier(kind: str, display: str) -> str:
    """One identifier as an agent sees it (``display`` as the card holds it)."""
    if kind == "customer_no":
        return display
    if kind == "email":
        local, at, domain = display.rpartition("@")
        return f"{local[:1]}***@{domain}" if at else "***"
    digits = "".join(c for c in display if c.isdigit()) if kind in ("phone", "card") else display
    if kind == "card":  # the card holds "…" and the last four already
        return MASK + digits[-4:]
    # A value of four characters or fewer would be shown whole: show nothing of it.
    return MASK + digits[-4:] if len(digits) > 4 else MASK.strip()


def _main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m connectors.access",
                                     description="Make an API key for the lookup API and its settings entry.")
    sub = parser.add_subparsers(dest="command", required=True)
    new = sub.add_parser("new-key", help="print a fresh random key and the entry that configures it")
    new.add_argument("--name", required=True, help="who holds the key (recorded in the audit)")
    new.add_argument("--role", required=True, choices=ROLES)
    args = parser.parse_args(argv)
    key = secrets.token_urlsafe(32)
    print(f"key (give it to {args.name}; it is not stored anywhere): {key}")
    print("entry for TOUCHPOINT_API_KEYS or the keys file:")
    print(json.dumps({digest(key): {"name": args.name, "role": args.role}}))
    return 0


if __name__ == "__main__":
    raise SystemExit(_main())
