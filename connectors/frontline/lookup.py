"""The front-line lookup API: who is calling, read from the projections' read model.

``GET /v1/customers/lookup?phone=…`` (or ``email``, ``card``, ``customer_no``,
``cookie``, ``device``; exactly one) normalises the value exactly as ingestion
does (:func:`touchpoint.core.normalise.normalise` with the same region and
identifier key), so ``07700 900123`` finds the customer whose events carried
``+447700900123``, and looks its keyed hash up in ``customer_identifiers``.
``GET /v1/customers/{customer_id}`` answers with the card; an id merged away
answers with its survivor's card (following ``customer_aliases``, a chain
too) and says ``resolved_from``. ``GET /agent?phone=…`` is the same lookup as
a page for people (:mod:`connectors.frontline.agent_page`).

Access (:mod:`connectors.frontline.access`). Every door but ``/healthz`` and
``/readyz`` needs an API key (``Authorization: Bearer``, ``X-API-Key``, or the
page's HttpOnly cookie): none or an unknown one is ``401``. Identifiers on
cards are masked unless an ``operations`` or ``admin`` key asks
``unmasked=true`` with a ``reason`` (kept in the audit row; none is ``400``);
an ``agent`` asking is ``403``. ``GET /v1/audit`` is ``admin`` only, and so is
``POST /v1/customers/{customer_id}/erasure``
(:func:`connectors.operations.privacy.erase`, audited as endpoint ``erasure``).

Pseudonyms. Cards hold identifiers as their pseudonyms (DESIGN.md §6). The
customers projection stores each card with its identifiers last and beside
it the identifiers an agent sees (``masked_identifiers``: pseudonyms opened
with their data keys and masked, :mod:`touchpoint.core.masking`), and a
masked lookup sends the card's text with those in place, as bytes. A clear
read (``unmasked=true``), or a row from before those columns, reads the
view with the wrapped keys of its pseudonyms in the same statement
(``WRAPPED_OF_CARD``) and opens them here. An erased identifier shows as
``(erased)``.

Audit. Every lookup (JSON or page, found or not, refused with 400 or 403)
writes one ``lookup_audit`` row: key name, role, endpoint, identifier kind,
the identifier's keyed hash (never the clear value), the customer answered,
the status. The row is written by the statement that reads the card, and the
answer is sent only after that statement has committed: what was not
recorded was not shown. When the commit is also on disk is the
``api_audit_commit`` setting (``synchronous_commit`` of the lookup's
connections; docs/read-model-and-lookup.md says what each value promises).

Answers. ``200`` ``{"customer_id", "as_of", "card"}`` (``card`` is the JSONB
card as the profile agent rendered it, identifiers masked unless asked);
``404`` when nobody matches, naming the kind and the normalised value (a
card only by its last four digits, the normaliser's ``display``); ``400``
naming the bad parameter (none or several given, or a value the normaliser
rejects, with its reason).

Health. ``/healthz``: the process answers. ``/readyz``: PostgreSQL answers
and every migration this code ships is applied (else ``503`` saying which
is missing). ``/v1/lag``: per-partition projection lag and the newest card's
instant (:mod:`connectors.frontline.freshness`, cached a second).

Queries. Plain SQL with bound parameters: the alias chain is walked by a
recursive CTE whose deepest row is the survivor. A lookup is *one*
statement on asyncpg (:mod:`connectors.frontline.pg`), autocommit: the
card's read and the audit row's ``INSERT`` are two parts of one ``WITH``
query. A refusal (400, 403) writes its audit row alone.

Cost. The lookup is the front line's hot path (issue 21), and the framework
and the driver, not PostgreSQL, were most of its cost. So the common door
(``GET /v1/customers/lookup`` with a key in a header, no ``unmasked``) is
answered by :class:`_LookupDoor`, a plain ASGI layer in front of FastAPI,
with the same :func:`resolve` and the same answers; every other request goes
through FastAPI as before. The security headers come from a plain ASGI
middleware (:class:`_Headers`). ``serve_lookup`` runs uvicorn on uvloop and
httptools, one process per core.

A NUL byte cannot be in PostgreSQL text: no customer id holds one (404
without asking the database), and an identifier parameter or a filter of
``/v1/audit`` holding one is a 400 naming it.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass, replace
from datetime import datetime
from typing import Any
from urllib.parse import parse_qs, parse_qsl

import orjson
import psycopg
from fastapi import Depends, FastAPI, HTTPException, Query, Request, Response
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, RedirectResponse
from psycopg.types.json import set_json_loads
from psycopg_pool import AsyncConnectionPool, PoolTimeout
from pydantic import BaseModel, TypeAdapter, ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from connectors.frontline import agent_page
from connectors.frontline.access import KeyRing, Principal, may_unmask, presented_key
from connectors.frontline.freshness import LagProbe
from connectors.frontline.http import SafeJSONResponse, safe_json_app
from connectors.frontline.limits import LIFT, LIMITED_AUDIT, SHARDS, Limits, limits_of
from connectors.frontline.pg import UNAVAILABLE, HotPool
from connectors.operations.access import AccessWatch
from connectors.operations.privacy import Erasure, UnknownCustomer, erase
from connectors.platform.keystore import WRAPPED_OF_CARD, PostgresKeyStore
from projections.migrate import migration_files
from touchpoint.core.access import AccessConfig
from touchpoint.core.identifiers import IDENTIFIER_KINDS
from touchpoint.core.masking import mask_card, open_identifiers, open_in_text, open_sealed
from touchpoint.core.normalise import InvalidIdentifier, identifier_key, normalise
from touchpoint.settings import Settings

__all__ = ["COOKIE", "create_lookup_app", "serve_lookup"]

log = logging.getLogger(__name__)

COOKIE = "touchpoint_key"
"""The agent page's session cookie: the API key itself, HttpOnly, SameSite=Lax."""

# A shift; the agent signs in again after it.
_COOKIE_MAX_AGE_S = 8 * 3600

# The alias chain from a starting customer id, or from the customer an identifier key belongs to. A chain
# deeper than 16 is a bug or a cycle: the walk stops there. Constant SQL, bound parameters.
_CHAIN_FROM_ID = """
WITH RECURSIVE chain (id, depth) AS (
    SELECT $1::text, 0
    UNION ALL
    SELECT a.survivor, chain.depth + 1 FROM customer_aliases a JOIN chain ON a.alias = chain.id
    WHERE chain.depth < 16
)"""

_CHAIN_FROM_KEY = """
WITH RECURSIVE chain (id, depth) AS (
    SELECT customer_id, 0 FROM customer_identifiers WHERE key = $1
    UNION ALL
    SELECT a.survivor, chain.depth + 1 FROM customer_aliases a JOIN chain ON a.alias = chain.id
    WHERE chain.depth < 16
)"""

# The card at the end of the chain (the survivor), or of the customer itself: the form an agent sees, stored by
# the customers projection, unless clear identifiers are asked for (or the row predates the stored form); then
# the view with its pseudonyms and their wrapped data keys, from the key store's table in the same database.
_READ = """,
card AS (
    SELECT c.customer_id, c.as_of, c.view, c.masked_identifiers, c.identifiers_at, c.agent_keys
    FROM chain JOIN customers c ON c.customer_id = chain.id
    ORDER BY chain.depth DESC LIMIT 1
),
shown AS (
    SELECT customer_id, as_of, view AS text, identifiers_at,
           CASE WHEN NOT $2::boolean THEN masked_identifiers END AS masked,
           -- whose sealed values the statement brings the wrapped keys of: the view's, or what an agent's card
           -- opens (agent_keys: the customer numbers left sealed in the masked identifiers, the name; rows from
           -- before agent_keys: the masked identifiers' pseudonyms)
           CASE WHEN $2::boolean OR masked_identifiers IS NULL THEN view
                WHEN agent_keys IS NULL THEN json_build_object('identifiers', masked_identifiers,
                                                               'person', view -> 'person') END AS view,
           CASE WHEN NOT $2::boolean AND masked_identifiers IS NOT NULL THEN agent_keys END AS agent_keys
    FROM card
)
"""

# The read, the key's limits and the audit row in one statement: one transaction, one round trip. The data-modifying
# parts run whether or not the final SELECT reads them (PostgreSQL runs every data-modifying WITH exactly once) and
# see the same card (a CTE referenced twice is computed once).
_SHOWN = """
SELECT card.customer_id, card.as_of, card.text, card.masked, card.identifiers_at, k.keys, k.wrapped
FROM shown AS card LEFT JOIN LATERAL (""" + WRAPPED_OF_CARD + """) AS k (keys, wrapped) ON true
"""
_VERDICT_AND_SHOWN = """
SELECT v.status, v.retry_after_s, s.customer_id, s.as_of, s.text, s.masked, s.identifiers_at, s.keys, s.wrapped
FROM verdict AS v LEFT JOIN (""" + _SHOWN + """) AS s ON v.status = 200
"""

_READ_BY_KEY = _CHAIN_FROM_KEY + _READ + _SHOWN
"""A card by identifier key (``$1``, ``$2`` unmasked) without limits or audit: the benchmark's raw figure."""
_AUDITED_BY_ID = _CHAIN_FROM_ID + _READ + LIMITED_AUDIT + _VERDICT_AND_SHOWN
"""A card by customer id (the survivor's for an alias), the key's limits and its audit row: ``GET
/v1/customers/{id}``. Parameters: ``$1`` the id, ``$2`` unmasked, ``$3``-``$7`` key name, role, endpoint,
identifier kind and key, ``$8`` the reason given for an unmasked read, ``$9``-``$12`` the key's limits
(:data:`~connectors.frontline.limits.LIMITED_AUDIT`). One row: the status and ``Retry-After``, then the card's
columns when the status is 200."""
_AUDITED_BY_KEY = _CHAIN_FROM_KEY + _READ + LIMITED_AUDIT + _VERDICT_AND_SHOWN
"""A card by identifier key (``$1``), the limits and its audit row: what ``GET /v1/customers/lookup`` runs (as
above)."""

_AUDIT = """
INSERT INTO lookup_audit (key_name, role, endpoint, identifier_kind, identifier_key, customer_id, status, unmasked,
                          reason)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
"""
"""A refusal's audit row alone (400, 403, a NUL in a customer id, an erasure)."""

_AUDIT_READ = """
SELECT id, at, key_name, role, endpoint, identifier_kind, identifier_key, customer_id, status, unmasked, reason
FROM lookup_audit
WHERE (%(customer_id)s::text IS NULL OR customer_id = %(customer_id)s)
  AND (%(key_name)s::text IS NULL OR key_name = %(key_name)s)
ORDER BY id DESC LIMIT %(limit)s
"""

# The page's kinds: every identifier plus the customer id itself.
_PAGE_KINDS = (*IDENTIFIER_KINDS, "customer_id")

# The lookup's query parameters, for the OpenAPI document: the handler reads them itself (see lookup()).
_LOOKUP_PARAMETERS = [
    {"name": name, "in": "query", "required": False, "schema": {"type": "string"}, "description": description}
    for name, description in (("phone", "any format; national numbers in the configured region"),
                              ("email", "case and surrounding spaces do not matter"),
                              ("card", "card number; spaces and dashes allowed"),
                              ("customer_no", "the customer number"), ("cookie", "a web cookie id"),
                              ("device", "a device id"))
] + [{"name": "unmasked", "in": "query", "required": False, "schema": {"type": "boolean", "default": False},
      "description": "clear identifiers (operations and admin only, with a reason)"},
   {"name": "reason", "in": "query", "required": False, "schema": {"type": "string", "maxLength": 200},
    "description": "why clear identifiers are read: required with unmasked=true, kept in the audit row"}]

_BOOL = TypeAdapter(bool)

# Cards are personal data: no cache, proxy or browser history keeps a copy.
_SECURITY_HEADERS = ((b"cache-control", b"no-store"), (b"x-content-type-options", b"nosniff"))


class CustomerCard(BaseModel):
    """A customer's card as the read model holds it."""

    customer_id: str
    as_of: datetime
    card: dict[str, Any]
    resolved_from: str | None = None


class Health(BaseModel):
    status: str


@dataclass(slots=True)  # not frozen: a frozen dataclass sets each field through object.__setattr__, per lookup
class _Outcome:
    """What one lookup answered, for the JSON doors and the page alike.

    ``masked``: the card as an agent sees it, JSON bytes as the customers projection stored them (sent as they
    are); ``card``: a card opened (and masked) here, for clear reads and rows from before the stored form.
    """

    status: int
    detail: str = ""
    customer_id: str | None = None
    as_of: datetime | None = None
    card: dict[str, Any] | None = None
    masked: bytes | None = None
    resolved_from: str | None = None
    retry_after_s: int | None = None  # a 429's Retry-After

    def shown_card(self) -> dict[str, Any] | None:
        """The card answered, as a document (the page renders it)."""
        return orjson.loads(self.masked) if self.masked is not None else self.card

    def body(self) -> bytes:
        """A 200's JSON body, ``{"customer_id", "as_of", "card"[, "resolved_from"]}``: the stored card's bytes
        copied in, not parsed and serialised again."""
        # orjson: pydantic_core's to_json took ~10 µs a value here; UTC written "Z" as pydantic writes it.
        card = self.masked if self.masked is not None else orjson.dumps(self.card, option=orjson.OPT_UTC_Z)
        tail = b"}" if self.resolved_from is None else b',"resolved_from":' + orjson.dumps(self.resolved_from) + b"}"
        return b"".join((b'{"customer_id":', orjson.dumps(self.customer_id), b',"as_of":',
                         orjson.dumps(self.as_of, option=orjson.OPT_UTC_Z), b',"card":', card, tail))

    def response(self) -> Response:
        """The JSON answer (an error as FastAPI answers an HTTPException)."""
        if self.status != 200:
            raise HTTPException(self.status, self.detail, headers=self.headers() or None)
        return Response(self.body(), media_type="application/json")

    def headers(self) -> dict[str, str]:
        """Headers a refusal carries: ``Retry-After`` for a 429."""
        return {"Retry-After": str(self.retry_after_s)} if self.retry_after_s is not None else {}


_PERSON_MAX = 2048  # bytes of the person block at most (a name of 200 characters sealed, a language, a channel)


def agent_card(text: bytes, masked: bytes, at: int, data_key_names: Sequence[str] | None,
               wrapped: Sequence[bytes] | None, keystore: PostgresKeyStore) -> bytes:
    """The card an agent sees: a stored view's text (identifiers last, beginning at ``at``) with the stored masked
    identifiers in their place (:func:`projections.customers.view_text`), what an agent sees whole (a customer
    number, sealed at rest, and the person's name, just before the identifiers) opened with the data keys the
    lookup's statement brought wrapped (:data:`~touchpoint.core.masking.ERASED` where they are gone)."""
    data_keys = keystore.open_wrapped(data_key_names, wrapped or ()) if data_key_names else {}
    person = text.rfind(b'"person":', max(0, at - _PERSON_MAX), at)
    head = text[:at] if person < 0 else text[:person] + open_in_text(text[person:at], data_keys)
    return head + b'"identifiers":' + open_in_text(masked, data_keys) + b"}"


class _Headers:
    """Adds the security headers to every answer that does not set them itself.

    A plain ASGI middleware: it only rewrites the ``http.response.start`` message, where Starlette's
    ``BaseHTTPMiddleware`` would run the request in a task of its own and pass the body through a stream.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", ()))
                present = {name.lower() for name, _ in headers}
                headers += [(name, value) for name, value in _SECURITY_HEADERS if name not in present]
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_with_headers)


# What answers 503 and may be retried: PostgreSQL cannot be reached (so no audit row can be written either).
_UNAVAILABLE: tuple[type[Exception], ...] = (*UNAVAILABLE, psycopg.OperationalError, PoolTimeout)


def _unavailable(exc: BaseException) -> str:
    return f"the read model cannot be reached just now ({type(exc).__name__}); try again shortly"


_Resolve = Callable[[Principal, str, dict[str, str], bool, str | None], Awaitable[_Outcome]]
"""One audited lookup: (caller, endpoint, the identifier given, unmasked, the reason for an unmasked read)."""


class _LookupDoor:
    """``GET /v1/customers/lookup`` with a key in a header and no ``unmasked``: served here, without the framework.

    The lookup is the front line's hot path; FastAPI's routing, request object and middleware stack were a
    fifth of its CPU. This ASGI layer answers the common case itself, with the same :func:`resolve` and the
    same answers (an error as ``{"detail": …}``); everything else (no or an invalid key, the page's cookie,
    ``unmasked``, every other door) goes on to the app, which answers it as before.
    """

    def __init__(self, app: ASGIApp, keys: KeyRing,
                 resolve: _Resolve) -> None:
        self.app, self.keys, self.resolve = app, keys, resolve

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] != "/v1/customers/lookup" or scope["method"] != "GET":
            await self.app(scope, receive, send)
            return
        headers = {name: value for name, value in scope["headers"] if name in (b"authorization", b"x-api-key")}
        presented = presented_key({name.decode("latin-1"): value.decode("latin-1") for name, value in headers.items()})
        principal = self.keys.principal(presented) if presented else None
        # As Starlette reads a query string (the last of a repeated parameter wins).
        params = dict(parse_qsl(scope["query_string"].decode("latin-1"), keep_blank_values=True))
        if principal is None or "unmasked" in params:
            await self.app(scope, receive, send)
            return
        extra: list[tuple[bytes, bytes]] = []
        try:
            outcome = await self.resolve(principal, "lookup", {k: params[k] for k in IDENTIFIER_KINDS if k in params},
                                         False, None)
        except _UNAVAILABLE as exc:
            status, body = 503, SafeJSONResponse({"detail": _unavailable(exc)}).body
            extra.append((b"retry-after", b"1"))
        else:
            status = outcome.status
            body = outcome.body() if status == 200 else SafeJSONResponse({"detail": outcome.detail}).body
            if outcome.retry_after_s is not None:
                extra.append((b"retry-after", str(outcome.retry_after_s).encode()))
        await send({"type": "http.response.start", "status": status, "headers": [
            (b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
            *extra, *_SECURITY_HEADERS]})
        await send({"type": "http.response.body", "body": body})


def _presented_key(request: Request, *, cookie: bool) -> str | None:
    """The key a request carries: a bearer token, an X-API-Key header or (if allowed) the page's cookie."""
    headers = request.headers
    scheme, _, token = headers.get("authorization", "").partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        return token.strip()
    if header := headers.get("x-api-key", "").strip():
        return header
    if cookie:
        return request.cookies.get(COOKIE) or None
    return None


def _shown(value: str) -> str:
    """A value for a message: NUL and other control characters escaped (they would corrupt a page or a log)."""
    if value.isprintable():
        return value
    return "".join(c if c.isprintable() else ascii(c)[1:-1] for c in value)


def _flag(request: Request, name: str) -> bool:
    """A boolean query parameter, spelt as FastAPI accepts one (``true``, ``1``, ``yes``, ``on``…); 422 if not."""
    raw = request.query_params.get(name)
    if raw is None:
        return False
    try:
        return _BOOL.validate_python(raw)
    except ValidationError as exc:
        raise RequestValidationError([{**error, "loc": ("query", name)}
                                      for error in exc.errors(include_url=False)]) from exc


REASON_MAX = 200
"""Characters an unmasked read's reason may have."""

_SHARDS_AGAIN_S = 10.0
"""A key refused over its rate has its bucket's missing shards made again at most this often (a process)."""


def _reason_refusal(reason: str | None,
                      why: str = "unmasked=true needs a reason, a few words on why clear identifiers are read"
                      ) -> _Outcome | None:
    """400 when an unmasked read (or a lift) gives no usable reason (``reason``: stripped), else None."""
    if not reason:
        return _Outcome(400, f"reason: {why} (at most {REASON_MAX} characters); it is kept in the audit trail")
    if len(reason) > REASON_MAX:
        return _Outcome(400, f"reason: at most {REASON_MAX} characters")
    if "\x00" in reason:
        return _Outcome(400, "reason: may not contain a NUL byte")
    return None


def _audited_reason(reason: str | None) -> str | None:
    """What of a reason an audit row keeps: a refused one cut to size and without NUL (PostgreSQL text cannot)."""
    return None if reason is None else reason[:REASON_MAX].replace("\x00", "")


def _no_nul(name: str, value: str | None) -> None:
    """400 naming ``name`` when a value bound for a text column holds NUL (PostgreSQL text cannot)."""
    if value is not None and "\x00" in value:
        raise HTTPException(400, f"{name}: may not contain a NUL byte")


async def _configure(conn: psycopg.AsyncConnection[Any]) -> None:
    # orjson parses the ~10 kB cards several times faster than the json module psycopg uses by default.
    set_json_loads(orjson.loads, conn)


def create_lookup_app(settings: Settings, *, pool_max_size: int = 8, lag_ttl_s: float = 1.0) -> ASGIApp:
    """Build the lookup API over the read model in ``settings``' database.

    :param settings: the connection settings, phone region, identifier key and API keys.
    :param pool_max_size: most PostgreSQL connections the API holds.
    :param lag_ttl_s: how long one lag probe's answer is reused.
    :raises ConfigError: the API key settings are invalid (at build time, not at the first request).
    """
    # Autocommit: every statement is its own transaction (a lookup and its audit row are one statement).
    pool = AsyncConnectionPool(settings.pg_conninfo(), min_size=2, max_size=pool_max_size, open=False,
                               name="lookup", kwargs={"autocommit": True}, configure=_configure)
    region = settings.phone_region
    secret = settings.identifier_key.get_secret_value().encode()
    keys = KeyRing(settings)
    if not len(keys):
        log.warning("no API keys configured: every request but /healthz and /readyz is refused (401); "
                    "see TOUCHPOINT_API_KEYS")
    lag_probe = LagProbe(settings, ttl_s=lag_ttl_s)
    keystore = PostgresKeyStore(settings, pool)
    hot = HotPool(settings, max_size=pool_max_size)
    limits_cache: dict[Principal, Limits] = {}  # one entry per key in use: the settings are fixed
    shards_made: dict[str, float] = {}  # key name -> when a 429 last had this process make its bucket's shards
    watch = AccessWatch(settings, AccessConfig(settings.api_access_window_s, settings.api_access_multiple,
                                               settings.api_access_min_lookups),
                        history_days=settings.api_access_history_days)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        await pool.open(wait=True)
        await hot.open()
        watching = asyncio.create_task(watch.run(), name="access watch")
        # What is alive once started (modules, the app, ~90,000 objects) is left out of every later collection:
        # API CPU per lookup at 200/s 0.48-0.49 -> 0.45 ms, p99 3.0-4.9 -> 2.2 ms (bench.lookup, 100,000 cards).
        gc.freeze()
        try:
            yield
        finally:
            watching.cancel()
            await asyncio.gather(watching, return_exceptions=True)
            await run_in_threadpool(watch.close)
            await run_in_threadpool(lag_probe.close)
            await hot.close()
            await pool.close()

    app = safe_json_app(title="Touchpoint lookup", version="1", lifespan=lifespan,
                  description="The front line's customer lookup by identifier or id. Send an API key as "
                              "`Authorization: Bearer <key>` or `X-API-Key: <key>`.")
    app.add_middleware(_Headers)

    async def unavailable(_: Request, exc: Exception) -> Response:
        # Nothing is shown that was not recorded: the lookup is refused, and may be retried.
        return SafeJSONResponse({"detail": _unavailable(exc)}, status_code=503, headers={"Retry-After": "1"})

    for failure in _UNAVAILABLE:
        app.add_exception_handler(failure, unavailable)

    def principal_of(request: Request) -> Principal:
        """The principal of a JSON request; 401 without a valid key."""
        presented = _presented_key(request, cookie=True)
        principal = keys.principal(presented) if presented else None
        if principal is None:
            reason = "no API key given" if not presented else "the API key is not valid (unknown or revoked)"
            raise HTTPException(401, f"{reason}: send Authorization: Bearer <key> or X-API-Key: <key>",
                                headers={"WWW-Authenticate": "Bearer"})
        return principal

    async def resolve(principal: Principal, endpoint: str, given: dict[str, str], unmasked: bool,
                      reason: str | None = None) -> _Outcome:
        """One audited lookup: validate, check the role (and an unmasked read's reason), read the card and record
        it, mask it."""
        kind = value = key = None
        display = ""
        refusal: _Outcome | None = None
        if len(given) == 1:
            ((kind, value),) = given.items()
        if kind is None or value is None:
            found = ", ".join(sorted(given)) or "none"
            refusal = _Outcome(400, f"give exactly one of {', '.join(IDENTIFIER_KINDS)} (got {found})")
        elif kind == "customer_id":
            key = identifier_key("customer_id", value, secret)
        elif "\x00" in value:
            # No identifier holds NUL (a key could be computed, but it names nothing): say which parameter.
            refusal = _Outcome(400, f"{kind}: may not contain a NUL byte")
        else:
            try:
                identifier = normalise(kind, value, region=region, secret=secret)
            except InvalidIdentifier as exc:
                refusal = _Outcome(400, f"{kind}: {exc.reason}")
            else:
                key, display = identifier.key, identifier.display
        if refusal is None and unmasked and not may_unmask(principal):
            refusal = _Outcome(403, f"role {principal.role} may not see unmasked identifiers "
                                    "(operations and admin may)")
        reason = reason.strip() if reason is not None and unmasked else None
        if refusal is None and unmasked:
            refusal = _reason_refusal(reason)
        outcome = refusal
        if outcome is None and kind == "customer_id" and "\x00" in str(value):
            # No customer id holds NUL (PostgreSQL text cannot): nobody, without asking.
            outcome = _Outcome(404, f"no customer {_shown(str(value))}")
        # The answer leaves only once its audit row is committed: the statement that writes it has returned.
        if outcome is not None:
            await hot.execute(_AUDIT, principal.name, principal.role, endpoint, kind, key, None, outcome.status,
                              unmasked, _audited_reason(reason))
            return outcome
        limits = limits_cache.get(principal)
        if limits is None:
            limits = limits_of(settings, principal)
            if limits.shards > 1:  # the whole burst from the first lookup on: every shard, full
                await hot.execute(SHARDS, principal.name, limits.burst / limits.shards, limits.shards)
            limits_cache[principal] = limits
        row = await hot.fetchrow(_AUDITED_BY_ID if kind == "customer_id" else _AUDITED_BY_KEY,
                                 value if kind == "customer_id" else key, unmasked, principal.name,
                                 principal.role, endpoint, kind, key, reason, limits.per_s, limits.burst,
                                 limits.daily_customers, limits.shards)
        status, retry_after_s, found, as_of, text, masked, at, data_key_names, wrapped = row
        if status == 429:
            if limits.shards > 1 and time.monotonic() - shards_made.get(principal.name, 0.0) > _SHARDS_AGAIN_S:
                # Shards the bucket lacks (its unlogged table emptied by a crash of PostgreSQL) are made again, full.
                shards_made[principal.name] = time.monotonic()
                await hot.execute(SHARDS, principal.name, limits.burst / limits.shards, limits.shards)
            return _Outcome(429, f"key {principal.name} is over its rate of {limits.per_s * 60:g} lookups a minute "
                                 f"(burst {limits.burst:g}): retry after {retry_after_s} s",
                            retry_after_s=retry_after_s)
        if status == 403:
            return _Outcome(403, f"key {principal.name} is blocked: it looked up more distinct customers today than "
                                 f"its daily ceiling of {limits.daily_customers}; an admin lifts the block "
                                 f"(POST /v1/keys/{{name}}/lift with a reason)")
        if status == 404:
            return _Outcome(404, f"no customer {_shown(str(value))}" if kind == "customer_id"
                            else f"nobody matches {kind} {display}")
        resolved_from = value if kind == "customer_id" and found != value else None
        if masked is not None and at is not None:  # the stored view with the masked identifiers in place
            return _Outcome(200, customer_id=found, as_of=as_of, resolved_from=resolved_from,
                            masked=agent_card(text, masked, at, data_key_names, wrapped, keystore))
        outcome = _Outcome(200, customer_id=found, as_of=as_of, resolved_from=resolved_from)
        view = orjson.loads(text)
        data_keys = keystore.open_wrapped(data_key_names or [], wrapped or [])
        if view.get("identifiers"):  # pseudonyms on the card: opened here, for this caller, masked by role
            view = {**view, "identifiers": open_identifiers(view["identifiers"], data_keys)}
        if isinstance(view.get("person"), dict):  # the name, sealed: shown whole to every role
            view = {**view, "person": {**view["person"], "name": open_sealed(view["person"].get("name"), data_keys)}}
        return replace(outcome, card=view if unmasked else mask_card(view))

    @app.get("/healthz", response_model=Health, summary="Liveness: the process answers")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz", summary="Readiness: PostgreSQL answers and every migration is applied",
             responses={503: {"description": "not ready, and why"}})
    async def readyz() -> SafeJSONResponse:
        shipped = [name for name, _ in migration_files()]
        try:
            async with pool.connection(timeout=2.0) as conn:
                cursor = await conn.execute("SELECT name FROM schema_migrations")
                applied = {name for (name,) in await cursor.fetchall()}
        except (PoolTimeout, psycopg.Error) as exc:
            return SafeJSONResponse({"status": "not ready", "reason": f"PostgreSQL: {type(exc).__name__}: {exc}"},
                                status_code=503)
        missing = [name for name in shipped if name not in applied]
        if missing:
            return SafeJSONResponse({"status": "not ready", "reason": f"migrations not applied: {', '.join(missing)}"},
                                status_code=503)
        return SafeJSONResponse({"status": "ready", "migrations": len(shipped)})

    async def caller(request: Request) -> Principal:
        """The principal of a JSON request, as a dependency; 401 without a valid key."""
        return principal_of(request)

    @app.get("/v1/lag", summary="How far the read model is behind, per projection partition",
             responses={401: {"description": "no or an invalid API key"}})
    async def lag(_: Principal = Depends(caller)) -> dict[str, Any]:
        return await lag_probe.lag(pool)

    @app.get("/v1/audit", summary="The newest lookup audit rows (admin only)",
             responses={400: {"description": "a filter PostgreSQL cannot compare (a NUL byte)"},
                        401: {"description": "no or an invalid API key"}, 403: {"description": "not admin"}})
    async def audit(principal: Principal = Depends(caller), limit: int = Query(50, ge=1, le=1000),
                    customer_id: str | None = Query(None), key_name: str | None = Query(None)) -> dict[str, Any]:
        if principal.role != "admin":
            raise HTTPException(403, f"role {principal.role} may not read the audit trail (admin may)")
        _no_nul("customer_id", customer_id)
        _no_nul("key_name", key_name)
        columns = ("id", "at", "key_name", "role", "endpoint", "identifier_kind", "identifier_key", "customer_id",
                   "status", "unmasked", "reason")
        async with pool.connection() as conn:
            cursor = await conn.execute(_AUDIT_READ, {"customer_id": customer_id, "key_name": key_name,
                                                      "limit": limit})
            return {"rows": [dict(zip(columns, row, strict=True)) for row in await cursor.fetchall()]}

    # The two lookup doors are the hot path, so they skip FastAPI's per-parameter solving: they read the
    # request themselves (the OpenAPI document gets the parameters from _LOOKUP_PARAMETERS), and return a
    # prebuilt Response, which FastAPI sends as it is (response_model documents it, no second validation
    # of the ~10 kB card).
    @app.get("/v1/customers/lookup", response_model=CustomerCard, response_model_exclude_none=True,
             summary="Find the customer an identifier belongs to",
             responses={400: {"description": "no, several or an invalid identifier; unmasked without a reason"},
                        401: {"description": "no or an invalid API key"},
                        403: {"description": "unmasked asked by a role that may not, or the key is blocked at its "
                                              "daily ceiling of distinct customers until an admin lifts it"},
                        429: {"description": "over the key's rate; Retry-After says when to try again"},
                        404: {"description": "nobody matches"},
                        422: {"description": "unmasked is not a boolean"}},
             openapi_extra={"parameters": _LOOKUP_PARAMETERS})
    async def lookup(request: Request) -> Response:
        principal = principal_of(request)
        params = request.query_params
        given = {kind: params[kind] for kind in IDENTIFIER_KINDS if kind in params}
        return (await resolve(principal, "lookup", given, _flag(request, "unmasked"),
                              params.get("reason"))).response()

    @app.get("/v1/customers/{customer_id}", response_model=CustomerCard, response_model_exclude_none=True,
             summary="A customer's card by id (an id merged away answers with its survivor)",
             responses={400: {"description": "unmasked without a reason"},
                        401: {"description": "no or an invalid API key"},
                        403: {"description": "unmasked asked by a role that may not, or the key is blocked at its "
                                              "daily ceiling of distinct customers until an admin lifts it"},
                        429: {"description": "over the key's rate; Retry-After says when to try again"},
                        404: {"description": "no such customer"},
                        422: {"description": "unmasked is not a boolean"}},
             openapi_extra={"parameters": _LOOKUP_PARAMETERS[-2:]})
    async def by_id(customer_id: str, request: Request) -> Response:
        principal = principal_of(request)
        return (await resolve(principal, "customer", {"customer_id": customer_id},
                              _flag(request, "unmasked"), request.query_params.get("reason"))).response()

    @app.post("/v1/customers/{customer_id}/erasure", response_model=Erasure,
              summary="Erase a customer (admin): destroy their identifiers' keys, record it in the log, purge "
                      "the read model",
              responses={401: {"description": "no or an invalid API key"},
                         403: {"description": "not an admin key"},
                         404: {"description": "no such customer in the read model"}})
    async def erasure(customer_id: str, request: Request) -> SafeJSONResponse:
        principal = principal_of(request)
        erased: str | None = None
        answer: SafeJSONResponse
        if principal.role != "admin":
            answer = SafeJSONResponse({"detail": f"role {principal.role} may not erase customers (admin may)"}, 403)
        elif "\x00" in customer_id:
            answer = SafeJSONResponse({"detail": f"no customer {_shown(customer_id)}"}, 404)
        else:
            try:
                done = await run_in_threadpool(erase, settings, customer_id)
            except UnknownCustomer as exc:
                answer = SafeJSONResponse({"detail": str(exc)}, 404)
            else:
                erased = done.customer_id
                answer = SafeJSONResponse(asdict(done))
        await hot.execute(_AUDIT, principal.name, principal.role, "erasure", "customer_id", None, erased,
                          answer.status_code, False, None)
        return answer

    @app.get("/v1/keys/blocked", summary="Keys blocked at their daily ceiling of distinct customers (admin only)",
             responses={401: {"description": "no or an invalid API key"}, 403: {"description": "not admin"}})
    async def blocked(principal: Principal = Depends(caller)) -> dict[str, Any]:
        if principal.role != "admin":
            raise HTTPException(403, f"role {principal.role} may not read the blocked keys (admin may)")
        columns = ("key_name", "role", "day", "customers", "ceiling", "since", "lifted_at", "lifted_by", "lift_reason")
        async with pool.connection() as conn:
            cursor = await conn.execute(f"SELECT {', '.join(columns)} FROM lookup_blocks ORDER BY since DESC LIMIT 500")
            rows = [dict(zip(columns, row, strict=True)) for row in await cursor.fetchall()]
        return {"blocked": [r for r in rows if r["lifted_at"] is None],
                "lifted": [r for r in rows if r["lifted_at"] is not None]}

    @app.post("/v1/keys/{key_name}/lift", summary="Lift a key's block (admin only), with a reason; the key may look "
                                                  "up another ceiling's worth of distinct customers today",
              responses={400: {"description": "no reason, or one too long"},
                         401: {"description": "no or an invalid API key"}, 403: {"description": "not admin"},
                         404: {"description": "the key is not blocked"}},
              openapi_extra={"parameters": [{"name": "reason", "in": "query", "required": True,
                                             "schema": {"type": "string", "maxLength": REASON_MAX},
                                             "description": "why the block is lifted (kept in the audit trail)"}]})
    async def lift(key_name: str, request: Request) -> SafeJSONResponse:
        principal = principal_of(request)
        reason = (request.query_params.get("reason") or "").strip()
        refusal = None
        if principal.role != "admin":
            refusal = _Outcome(403, f"role {principal.role} may not lift a block (admin may)")
        else:
            refusal = _reason_refusal(reason, "a lift needs a reason, a few words on why the key may read on")
        if refusal is None and "\x00" in key_name:
            refusal = _Outcome(404, f"key {_shown(key_name)} is not blocked")
        answer: SafeJSONResponse
        if refusal is not None:
            answer = SafeJSONResponse({"detail": refusal.detail}, refusal.status)
        else:
            async with pool.connection() as conn:
                cursor = await conn.execute(LIFT, {"key_name": key_name, "by": principal.name, "reason": reason})
                row = await cursor.fetchone()
            columns = ("key_name", "role", "day", "customers", "ceiling", "since")
            answer = (SafeJSONResponse(jsonable_encoder(dict(zip(columns, row, strict=True)))) if row is not None
                      else SafeJSONResponse({"detail": f"key {_shown(key_name)} is not blocked"}, 404))
        # The audit row names the key lifted where a lookup's names its identifier.
        await hot.execute(_AUDIT, principal.name, principal.role, "lift", "key_name", key_name.replace("\x00", ""),
                          None, answer.status_code, False, _audited_reason(reason or None))
        return answer

    _add_page_routes(app, keys, resolve)
    # In front of the framework: the hot door answers before FastAPI's stack (it sets the security headers itself).
    return _LookupDoor(app, keys, resolve)

def _html(body: str, status: int = 200, nonce: str | None = None) -> HTMLResponse:
    """An HTML answer with headers that keep it to this site and out of caches and referrers."""
    script = f"'nonce-{nonce}'" if nonce else "'none'"
    return HTMLResponse(body, status_code=status, headers={
        "Content-Security-Policy": (f"default-src 'none'; style-src 'unsafe-inline'; script-src {script}; "
                                    "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; "
                                    "base-uri 'none'"),
        # Links off the page must not carry the looked-up phone number in a Referer; same-origin ones
        # may (with no-referrer, browsers would send "Origin: null" on our own form posts).
        "Referrer-Policy": "same-origin",
        "X-Frame-Options": "DENY",
    })


def _same_origin(request: Request) -> bool:
    """A form post from this site's own pages (login CSRF guard); a client that is no browser passes.

    Browsers say where a request comes from in ``Sec-Fetch-Site``, older ones only in ``Origin``.
    """
    site = request.headers.get("sec-fetch-site")
    if site is not None:
        return site in ("same-origin", "none")
    origin = request.headers.get("origin")
    return origin is None or origin == f"{request.url.scheme}://{request.url.netloc}"


def _add_page_routes(app: FastAPI, keys: KeyRing,
                     resolve: _Resolve) -> None:
    """``/agent`` (the card page), ``/agent/login`` and ``/agent/logout``."""

    @app.get("/agent", response_class=HTMLResponse, include_in_schema=False)
    async def page(request: Request) -> HTMLResponse:
        presented = _presented_key(request, cookie=True)
        principal = keys.principal(presented) if presented else None
        if principal is None:
            here = request.url.path + (f"?{request.url.query}" if request.url.query else "")
            error = "Your key is no longer valid; sign in again." if presented else None
            response = _html(agent_page.login_page(here, error), 401)
            if presented and request.cookies.get(COOKIE):
                response.delete_cookie(COOKIE, path="/")
            return response
        params = request.query_params
        given = {kind: params[kind] for kind in _PAGE_KINDS if kind in params}
        if "kind" in params or "value" in params:  # the search form
            form_kind, form_value = params.get("kind", ""), params.get("value", "")
            if form_kind not in _PAGE_KINDS:
                return _html(agent_page.message_page(principal.name, principal.role,
                                                     f"cannot search by {form_kind!r}"), 400)
            given[form_kind] = form_value
        if not given:
            return _html(agent_page.message_page(principal.name, principal.role,
                                                 "Find a customer by phone, e-mail, customer number or card."))
        unmasked = params.get("unmasked", "").lower() in ("1", "true", "yes", "on")
        try:
            outcome = await resolve(principal, "agent_page", given, unmasked, params.get("reason"))
        except _UNAVAILABLE:
            return _html(agent_page.message_page(principal.name, principal.role,
                                                 "The read model cannot be reached just now: try again shortly."),
                         503)
        kind, value = next(iter(given.items()))
        # A card number typed in is not shown back, not even in the search box.
        echo = "" if kind == "card" else _shown(value)
        if outcome.status != 200:
            refused = _html(agent_page.message_page(principal.name, principal.role, outcome.detail, kind, echo),
                            outcome.status)
            refused.headers.update(outcome.headers())
            return refused
        card = outcome.shown_card()
        assert outcome.customer_id is not None and outcome.as_of is not None and card is not None
        nonce = secrets.token_urlsafe(16)
        return _html(agent_page.card_page(
            principal.name, principal.role, outcome.customer_id, outcome.as_of.isoformat(), card,
            nonce=nonce, kind=kind, value=echo, resolved_from=outcome.resolved_from), nonce=nonce)

    @app.get("/agent/login", response_class=HTMLResponse, include_in_schema=False)
    async def login_form(next_url: str = Query("/agent", alias="next")) -> HTMLResponse:
        return _html(agent_page.login_page(next_url))

    @app.post("/agent/login", include_in_schema=False)
    async def login(request: Request) -> Response:
        if not _same_origin(request):
            return _html(agent_page.login_page("/agent", "Sign in from this site's own form."), 403)
        body = await request.body()
        if len(body) > 8192:
            return _html(agent_page.login_page("/agent", "That form is too large."), 413)
        fields = parse_qs(body.decode("utf-8", "replace"), max_num_fields=4)
        key = (fields.get("key") or [""])[0].strip()
        target = agent_page.safe_next((fields.get("next") or ["/agent"])[0])
        if keys.principal(key) is None:
            return _html(agent_page.login_page(target, "That key is not valid."), 401)
        response = RedirectResponse(target, status_code=303)
        # Lax, not Strict: a CTI pop is a top-level link from another site and must carry the session;
        # every state-changing door (these two posts) checks Origin, and the rest only reads.
        response.set_cookie(COOKIE, key, max_age=_COOKIE_MAX_AGE_S, httponly=True, samesite="lax",
                            secure=request.url.scheme == "https", path="/")
        return response

    @app.post("/agent/logout", include_in_schema=False)
    async def logout(request: Request) -> Response:
        if not _same_origin(request):
            return _html(agent_page.login_page("/agent", "Sign out from this site's own page."), 403)
        response = RedirectResponse("/agent/login", status_code=303)
        response.delete_cookie(COOKIE, path="/")
        return response


def serve_lookup(settings: Settings, *, workers: int | None = None) -> None:
    """Run the lookup API with uvicorn on the gateway's host, port ``api_port``, in ``workers`` processes.

    uvicorn's ``auto`` loop and HTTP parser are uvloop and httptools (both dependencies): less CPU per
    request than asyncio's loop and h11 (Granian measured worse here: 0.29 against 0.21 ms of CPU per request
    of a bare ASGI app at 200 requests/s). One event loop is one thread, so one process serves from one core
    at most. With several, the API pre-forks them, all accepting on the one listening socket; each opens its
    own connection pools. The parent only waits: a signal is passed on to every worker, and a worker that
    dies takes the others down (whatever supervises the API restarts it whole).

    :param workers: server processes; default the ``api_workers`` setting, else one per core this process
        may run on but one (PostgreSQL and the pipeline share the machine), at least one.
    """
    import os
    import signal
    import threading
    import time

    import uvicorn

    from touchpoint.logs import configure_logging

    configure_logging(settings.log_level, settings.log_json)
    app = create_lookup_app(settings)  # a key settings error stops here, before any fork
    # No proxy-header rewriting: the API reads no client address (one middleware less per request).
    config = uvicorn.Config(app, host=settings.gateway_host, port=settings.api_port, log_config=None,
                            access_log=False, proxy_headers=False)
    if workers is None:
        workers = settings.api_workers
    if workers is None:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
        workers = max(1, cores - 1)
    count = workers
    if count <= 1:
        uvicorn.Server(config).run()
        return
    listener = config.bind_socket()
    parent = os.getpid()
    children: list[int] = []
    for _ in range(count):
        pid = os.fork()
        if pid == 0:  # a worker: serve until a signal, or until the parent is gone
            code = 1
            try:
                server = uvicorn.Server(config)

                def orphaned(server: uvicorn.Server = server) -> None:
                    while os.getppid() == parent:
                        time.sleep(1.0)
                    server.should_exit = True

                threading.Thread(target=orphaned, name="orphan-watch", daemon=True).start()
                server.run(sockets=[listener])
                code = 0
            finally:
                os._exit(code)
        children.append(pid)
    listener.close()
    log.info("lookup API serving", extra={"workers": count, "pids": children, "port": settings.api_port})

    stopping: list[int] = []

    def pass_on(sig: int, _: Any) -> None:
        stopping.append(sig)
        for child in children:
            try:
                os.kill(child, sig)
            except ProcessLookupError:
                pass

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, pass_on)
    failed = False
    while children:
        pid, status = os.wait()
        children.remove(pid)
        # After a graceful stop uvicorn re-raises the signal it caught: ending by it is no failure.
        if not stopping:
            failed = True
            log.error("a lookup API worker ended; stopping the others",
                      extra={"pid": pid, "exit": os.waitstatus_to_exitcode(status)})
            pass_on(signal.SIGTERM, None)
    if failed:
        raise SystemExit(1)
