"""The front-line lookup API: who is calling, read from the projections' read model.

``GET /v1/customers/lookup?phone=…`` (or ``email``, ``card``, ``customer_no``,
``cookie``, ``device``; exactly one) normalises the value exactly as ingestion
does (:func:`touchpoint.core.normalise.normalise` with the same region and
identifier key), so ``07700 900123`` finds the customer whose events carried
``+447700900123``, and looks its keyed hash up in ``customer_identifiers``.
``GET /v1/customers/{customer_id}`` answers with the card; an id merged away
answers with its survivor's card (following ``customer_aliases``, a chain
too) and says ``resolved_from``.

Answers. ``200`` ``{"customer_id", "as_of", "card"}`` (``card`` is the JSONB
card as the customers agent rendered it); ``404`` when nobody matches, naming
the kind and the normalised value (a card only by its last four digits, the
normaliser's ``display``); ``400`` naming the bad parameter (none or several
given, or a value the normaliser rejects, with its reason).

Queries. Plain SQL with bound parameters, one query per request: the alias
chain is walked by a recursive CTE whose deepest row is the survivor. The
connection pool is opened on startup and closed on shutdown; handlers are
plain ``def`` so FastAPI runs them in its thread pool next to the blocking
driver.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import datetime
from typing import Any

from fastapi import FastAPI, HTTPException, Query
from psycopg_pool import ConnectionPool
from pydantic import BaseModel
from starlette.concurrency import run_in_threadpool

from touchpoint.core.identifiers import IDENTIFIER_KINDS
from touchpoint.core.normalise import InvalidIdentifier, normalise
from touchpoint.settings import Settings

__all__ = ["create_lookup_app", "serve_lookup"]

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


class CustomerCard(BaseModel):
    """A customer's card as the read model holds it."""

    customer_id: str
    as_of: datetime
    card: dict[str, Any]
    resolved_from: str | None = None


class Health(BaseModel):
    status: str


def create_lookup_app(settings: Settings, *, pool_max_size: int = 8) -> FastAPI:
    """Build the lookup API over the read model in ``settings``' database.

    :param settings: the connection settings, phone region and identifier key.
    :param pool_max_size: most PostgreSQL connections the API holds.
    """
    pool = ConnectionPool(settings.pg_conninfo(), min_size=1, max_size=pool_max_size, open=False,
                          name="lookup")
    region = settings.phone_region
    secret = settings.identifier_key.get_secret_value().encode()

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        await run_in_threadpool(pool.open, True)
        try:
            yield
        finally:
            await run_in_threadpool(pool.close)

    app = FastAPI(title="Touchpoint lookup", version="1", lifespan=lifespan,
                  description="The front line's customer lookup by identifier or id.")

    def fetch(query: str, params: dict[str, str]) -> tuple[str, datetime, dict[str, Any]] | None:
        with pool.connection() as conn:
            return conn.execute(query, params).fetchone()  # type: ignore[return-value]

    @app.get("/healthz", response_model=Health, summary="The process answers")
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/v1/customers/lookup", response_model=CustomerCard, response_model_exclude_none=True,
             summary="Find the customer an identifier belongs to",
             responses={400: {"description": "no, several or an invalid identifier"},
                        404: {"description": "nobody matches"}})
    def lookup(
        phone: str | None = Query(None, description="any format; national numbers in the configured region"),
        email: str | None = Query(None, description="case and surrounding spaces do not matter"),
        card: str | None = Query(None, description="card number; spaces and dashes allowed"),
        customer_no: str | None = Query(None),
        cookie: str | None = Query(None),
        device: str | None = Query(None),
    ) -> dict[str, Any]:
        given = {kind: value for kind, value in (("phone", phone), ("email", email), ("card", card),
                                                 ("customer_no", customer_no), ("cookie", cookie),
                                                 ("device", device)) if value is not None}
        if len(given) != 1:
            found = ", ".join(sorted(given)) or "none"
            raise HTTPException(400, f"give exactly one of {', '.join(IDENTIFIER_KINDS)} (got {found})")
        ((kind, value),) = given.items()
        try:
            identifier = normalise(kind, value, region=region, secret=secret)
        except InvalidIdentifier as exc:
            raise HTTPException(400, f"{kind}: {exc.reason}") from exc
        row = fetch(_CARD_BY_KEY, {"key": identifier.key})
        if row is None:
            raise HTTPException(404, f"nobody matches {kind} {identifier.display}")
        customer_id, as_of, view = row
        return {"customer_id": customer_id, "as_of": as_of, "card": view}

    @app.get("/v1/customers/{customer_id}", response_model=CustomerCard, response_model_exclude_none=True,
             summary="A customer's card by id (an id merged away answers with its survivor)",
             responses={404: {"description": "no such customer"}})
    def by_id(customer_id: str) -> dict[str, Any]:
        row = fetch(_CARD_BY_ID, {"start": customer_id})
        if row is None:
            raise HTTPException(404, f"no customer {customer_id}")
        found, as_of, view = row
        answer: dict[str, Any] = {"customer_id": found, "as_of": as_of, "card": view}
        if found != customer_id:
            answer["resolved_from"] = customer_id
        return answer

    return app


def serve_lookup(settings: Settings) -> None:
    """Run the lookup API with uvicorn on the gateway's host, port ``api_port``."""
    import uvicorn

    from touchpoint.logs import configure_logging

    configure_logging(settings.log_level, settings.log_json)
    app = create_lookup_app(settings)
    uvicorn.run(app, host=settings.gateway_host, port=settings.api_port, log_config=None,
                access_log=False)
