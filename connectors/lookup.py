"""The front-line lookup API: who is calling, read from the projections' read model.

``GET /v1/customers/lookup?phone=…`` (or ``email``, ``card``, ``customer_no``,
``cookie``, ``device``; exactly one) normalises the value exactly as ingestion
does (:func:`touchpoint.core.normalise.normalise` with the same region and
identifier key), so ``07700 900123`` finds the customer whose events carried
``+447700900123``, and looks its keyed hash up in ``customer_identifiers``.
``GET /v1/customers/{customer_id}`` answers with the card; an id merged away
answers with its survivor's card (following ``customer_aliases``, a chain
too) and says ``resolved_from``. ``GET /agent?phone=…`` is the same lookup as
a page for people (:mod:`connectors.agent_page`).

Access (:mod:`connectors.access`). Every door but ``/healthz`` and
``/readyz`` needs an API key (``Authorization: Bearer``, ``X-API-Key``, or the
page's HttpOnly cookie): none or an unknown one is ``401``. Identifiers on
cards are masked unless an ``operations`` or ``admin`` key asks
``unmasked=true``; an ``agent`` asking is ``403``. ``GET /v1/audit`` is
``admin`` only.

Audit. Every lookup (JSON or page, found or not, refused with 400 or 403)
writes one ``lookup_audit`` row: key name, role, endpoint, identifier kind,
the identifier's keyed hash (never the clear value), the customer answered,
the status. The row is written in the transaction that read the card and the
answer is sent only after it commits: what was not recorded was not shown.

Answers. ``200`` ``{"customer_id", "as_of", "card"}`` (``card`` is the JSONB
card as the customers agent rendered it, identifiers masked unless asked);
``404`` when nobody matches, naming the kind and the normalised value (a
card only by its last four digits, the normaliser's ``display``); ``400``
naming the bad parameter (none or several given, or a value the normaliser
rejects, with its reason).

Health. ``/healthz``: the process answers. ``/readyz``: PostgreSQL answers
and every migration this code ships is applied (else ``503`` saying which
is missing). ``/v1/lag``: per-partition projection lag and the newest card's
instant (:mod:`connectors.freshness`, cached a second).

Queries. Plain SQL with bound parameters: the alias chain is walked by a
recursive CTE whose deepest row is the survivor. The connection pool is
opened on startup and closed on shutdown; handlers are plain ``def`` so
FastAPI runs them in its thread pool next to the blocking driver.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from urllib.parse import parse_qs

import psycopg
from fastapi import Depends, FastAPI, HTTPException, Query, Request, Response
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse
from psycopg_pool import ConnectionPool, PoolTimeout
from pydantic import BaseModel
from starlette.concurrency import run_in_threadpool

from connectors import agent_page
from connectors.access import KeyRing, Principal, mask_card, may_unmask
from connectors.freshness import LagProbe
from projections.migrate import migration_files
from touchpoint.core.identifiers import IDENTIFIER_KINDS
from touchpoint.core.normalise import InvalidIdentifier, identifier_key, normalise
from touchpoint.settings import Settings

__all__ = ["COOKIE", "create_lookup_app", "serve_lookup"]

log = logging.getLogger(__name__)

COOKIE = "touchpoint_key"
"""The agent page's session cookie: the API key itself, HttpOnly, SameSite=Lax."""

# A shift; the agent signs in again after it.
_COOKIE_MAX_AGE_S = 8 * 3600

# The card at the end of an alias chain (the survivor), or of the customer itself. A chain
# deeper than 16 is a bug or a cycle: the walk stops there. Constant SQL, bound parameters.
_CARD_BY_ID = """
WITH RECURSIVE chain (id, depth) AS (
    SELECT %(start)s::text, 0
    UNION ALL
    SELECT a.survivor, chain.depth + 1 FROM customer_aliases a JOIN chain ON a.alias = chain.id
    WHERE chain.depth < 16
)
SELECT c.customer_id, c.as_of, c.view FROM chain JOIN customers c ON c.customer_id = chain.id
ORDER BY chain.depth DESC LIMIT 1
"""

# The same walk, starting from the customer an identifier key belongs to.
_CARD_BY_KEY = """
WITH RECURSIVE chain (id, depth) AS (
    SELECT customer_id, 0 FROM customer_identifiers WHERE key = %(key)s
    UNION ALL
    SELECT a.survivor, chain.depth + 1 FROM customer_aliases a JOIN chain ON a.alias = chain.id
    WHERE chain.depth < 16
)
SELECT c.customer_id, c.as_of, c.view FROM chain JOIN customers c ON c.customer_id = chain.id
ORDER BY chain.depth DESC LIMIT 1
"""

_AUDIT = """
INSERT INTO lookup_audit (key_name, role, endpoint, identifier_kind, identifier_key, customer_id, status, unmasked)
VALUES (%(key_name)s, %(role)s, %(endpoint)s, %(kind)s, %(key)s, %(customer_id)s, %(status)s, %(unmasked)s)
"""

_AUDIT_READ = """
SELECT id, at, key_name, role, endpoint, identifier_kind, identifier_key, customer_id, status, unmasked
FROM lookup_audit
WHERE (%(customer_id)s::text IS NULL OR customer_id = %(customer_id)s)
  AND (%(key_name)s::text IS NULL OR key_name = %(key_name)s)
ORDER BY id DESC LIMIT %(limit)s
"""

# The page's kinds: every identifier plus the customer id itself.
_PAGE_KINDS = (*IDENTIFIER_KINDS, "customer_id")


class CustomerCard(BaseModel):
    """A customer's card as the read model holds it."""

    customer_id: str
    as_of: datetime
    card: dict[str, Any]
    resolved_from: str | None = None


class Health(BaseModel):
    status: str


@dataclass(frozen=True, slots=True)
class _Outcome:
    """What one lookup answered, for the JSON doors and the page alike."""

    status: int
    detail: str = ""
    customer_id: str | None = None
    as_of: datetime | None = None
    card: dict[str, Any] | None = None
    resolved_from: str | None = None

    def json(self) -> dict[str, Any]:
        if self.status != 200:
            raise HTTPException(self.status, self.detail)
        answer: dict[str, Any] = {"customer_id": self.customer_id, "as_of": self.as_of, "card": self.card}
        if self.resolved_from is not None:
            answer["resolved_from"] = self.resolved_from
        return answer


def _presented_key(request: Request, *, cookie: bool) -> str | None:
    """The key a request carries: a bearer token, an X-API-Key header or (if allowed) the page's cookie."""
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        return token.strip()
    if header := request.headers.get("x-api-key", "").strip():
        return header
    if cookie:
        return request.cookies.get(COOKIE) or None
    return None


def create_lookup_app(settings: Settings, *, pool_max_size: int = 8, lag_ttl_s: float = 1.0) -> FastAPI:
    """Build the lookup API over the read model in ``settings``' database.

    :param settings: the connection settings, phone region, identifier key and API keys.
    :param pool_max_size: most PostgreSQL connections the API holds.
    :param lag_ttl_s: how long one lag probe's answer is reused.
    :raises ConfigError: the API key settings are invalid (at build time, not at the first request).
    """
    pool = ConnectionPool(settings.pg_conninfo(), min_size=1, max_size=pool_max_size, open=False,
                          name="lookup")
    region = settings.phone_region
    secret = settings.identifier_key.get_secret_value().encode()
    keys = KeyRing(settings)
    if not len(keys):
        log.warning("no API keys configured: every request but /healthz and /readyz is refused (401); "
                    "see TOUCHPOINT_API_KEYS")
    lag_probe = LagProbe(settings, ttl_s=lag_ttl_s)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        await run_in_threadpool(pool.open, True)
        try:
            yield
        finally:
            await run_in_threadpool(lag_probe.close)
            await run_in_threadpool(pool.close)

    app = FastAPI(title="Touchpoint lookup", version="1", lifespan=lifespan,
                  description="The front line's customer lookup by identifier or id. Send an API key as "
                              "`Authorization: Bearer <key>` or `X-API-Key: <key>`.")

    @app.middleware("http")
    async def no_store(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        # Cards are personal data: no cache, proxy or browser history keeps a copy.
        response = await call_next(request)
        response.headers.setdefault("Cache-Control", "no-store")
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        return response

    def caller(request: Request) -> Principal:
        """The principal of a JSON request; 401 without a valid key."""
        presented = _presented_key(request, cookie=True)
        principal = keys.principal(presented) if presented else None
        if principal is None:
            reason = "no API key given" if not presented else "the API key is not valid (unknown or revoked)"
            raise HTTPException(401, f"{reason}: send Authorization: Bearer <key> or X-API-Key: <key>",
                                headers={"WWW-Authenticate": "Bearer"})
        return principal

    def resolve(principal: Principal, endpoint: str, given: dict[str, str], unmasked: bool) -> _Outcome:
        """One audited lookup: validate, check the role, read the card, mask it, record it."""
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
        with pool.connection() as conn:
            if refusal is not None:
                outcome = refusal
            else:
                row = (conn.execute(_CARD_BY_ID, {"start": value}) if kind == "customer_id"
                       else conn.execute(_CARD_BY_KEY, {"key": key})).fetchone()
                if row is None:
                    outcome = _Outcome(404, f"no customer {value}" if kind == "customer_id"
                                       else f"nobody matches {kind} {display}")
                else:
                    found, as_of, view = row
                    outcome = _Outcome(200, customer_id=found, as_of=as_of,
                                       card=view if unmasked else mask_card(view),
                                       resolved_from=value if kind == "customer_id" and found != value else None)
            conn.execute(_AUDIT, {"key_name": principal.name, "role": principal.role, "endpoint": endpoint,
                                  "kind": kind, "key": key, "customer_id": outcome.customer_id,
                                  "status": outcome.status, "unmasked": unmasked})
        # Leaving the block committed the audit row; only now is the answer given.
        return outcome

    @app.get("/healthz", response_model=Health, summary="Liveness: the process answers")
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz", summary="Readiness: PostgreSQL answers and every migration is applied",
             responses={503: {"description": "not ready, and why"}})
    def readyz() -> JSONResponse:
        shipped = [name for name, _ in migration_files()]
        try:
            with pool.connection(timeout=2.0) as conn:
                applied = {name for (name,) in conn.execute("SELECT name FROM schema_migrations")}
        except (PoolTimeout, psycopg.Error) as exc:
            return JSONResponse({"status": "not ready", "reason": f"PostgreSQL: {type(exc).__name__}: {exc}"},
                                status_code=503)
        missing = [name for name in shipped if name not in applied]
        if missing:
            return JSONResponse({"status": "not ready", "reason": f"migrations not applied: {', '.join(missing)}"},
                                status_code=503)
        return JSONResponse({"status": "ready", "migrations": len(shipped)})

    @app.get("/v1/lag", summary="How far the read model is behind, per projection partition",
             responses={401: {"description": "no or an invalid API key"}})
    def lag(_: Principal = Depends(caller)) -> dict[str, Any]:
        return lag_probe.lag(pool)

    @app.get("/v1/audit", summary="The newest lookup audit rows (admin only)",
             responses={401: {"description": "no or an invalid API key"}, 403: {"description": "not admin"}})
    def audit(principal: Principal = Depends(caller), limit: int = Query(50, ge=1, le=1000),
              customer_id: str | None = Query(None), key_name: str | None = Query(None)) -> dict[str, Any]:
        if principal.role != "admin":
            raise HTTPException(403, f"role {principal.role} may not read the audit trail (admin may)")
        columns = ("id", "at", "key_name", "role", "endpoint", "identifier_kind", "identifier_key", "customer_id",
                   "status", "unmasked")
        with pool.connection() as conn:
            rows = conn.execute(_AUDIT_READ, {"customer_id": customer_id, "key_name": key_name, "limit": limit})
            return {"rows": [dict(zip(columns, row, strict=True)) for row in rows]}

    @app.get("/v1/customers/lookup", response_model=CustomerCard, response_model_exclude_none=True,
             summary="Find the customer an identifier belongs to",
             responses={400: {"description": "no, several or an invalid identifier"},
                        401: {"description": "no or an invalid API key"},
                        403: {"description": "unmasked asked by a role that may not"},
                        404: {"description": "nobody matches"}})
    def lookup(
        principal: Principal = Depends(caller),
        phone: str | None = Query(None, description="any format; national numbers in the configured region"),
        email: str | None = Query(None, description="case and surrounding spaces do not matter"),
        card: str | None = Query(None, description="card number; spaces and dashes allowed"),
        customer_no: str | None = Query(None),
        cookie: str | None = Query(None),
        device: str | None = Query(None),
        unmasked: bool = Query(False, description="clear identifiers (operations and admin only)"),
    ) -> dict[str, Any]:
        given = {kind: value for kind, value in (("phone", phone), ("email", email), ("card", card),
                                                 ("customer_no", customer_no), ("cookie", cookie),
                                                 ("device", device)) if value is not None}
        return resolve(principal, "lookup", given, unmasked).json()

    @app.get("/v1/customers/{customer_id}", response_model=CustomerCard, response_model_exclude_none=True,
             summary="A customer's card by id (an id merged away answers with its survivor)",
             responses={401: {"description": "no or an invalid API key"},
                        403: {"description": "unmasked asked by a role that may not"},
                        404: {"description": "no such customer"}})
    def by_id(customer_id: str, principal: Principal = Depends(caller),
              unmasked: bool = Query(False, description="clear identifiers (operations and admin only)"),
              ) -> dict[str, Any]:
        return resolve(principal, "customer", {"customer_id": customer_id}, unmasked).json()

    _add_page_routes(app, keys, resolve)
    return app


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
                     resolve: Callable[[Principal, str, dict[str, str], bool], _Outcome]) -> None:
    """``/agent`` (the card page), ``/agent/login`` and ``/agent/logout``."""

    @app.get("/agent", response_class=HTMLResponse, include_in_schema=False)
    def page(request: Request) -> HTMLResponse:
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
        outcome = resolve(principal, "agent_page", given, unmasked)
        kind, value = next(iter(given.items()))
        # A card number typed in is not shown back, not even in the search box.
        echo = "" if kind == "card" else value
        if outcome.status != 200:
            return _html(agent_page.message_page(principal.name, principal.role, outcome.detail, kind, echo),
                         outcome.status)
        assert outcome.customer_id is not None and outcome.as_of is not None and outcome.card is not None
        nonce = secrets.token_urlsafe(16)
        return _html(agent_page.card_page(
            principal.name, principal.role, outcome.customer_id, outcome.as_of.isoformat(), outcome.card,
            nonce=nonce, kind=kind, value=echo, resolved_from=outcome.resolved_from), nonce=nonce)

    @app.get("/agent/login", response_class=HTMLResponse, include_in_schema=False)
    def login_form(next_url: str = Query("/agent", alias="next")) -> HTMLResponse:
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
    def logout(request: Request) -> Response:
        if not _same_origin(request):
            return _html(agent_page.login_page("/agent", "Sign out from this site's own page."), 403)
        response = RedirectResponse("/agent/login", status_code=303)
        response.delete_cookie(COOKIE, path="/")
        return response


def serve_lookup(settings: Settings) -> None:
    """Run the lookup API with uvicorn on the gateway's host, port ``api_port``."""
    import uvicorn

    from touchpoint.logs import configure_logging

    configure_logging(settings.log_level, settings.log_json)
    app = create_lookup_app(settings)
    uvicorn.run(app, host=settings.gateway_host, port=settings.api_port, log_config=None,
                access_log=False)
