"""Bulk lookup protection: how much one lookup key may read, kept where every API process sees it.

A stolen call-centre credential must not read the customer base. Each key has

* a **rate**: a token bucket of lookups (``per_minute`` sustained, ``burst`` at once); a lookup over it is
  answered 429 with ``Retry-After`` (whole seconds until a token is back);
* a **daily ceiling** of distinct customers (``daily_customers``, per UTC day): the lookup of the customer
  past it is refused and the key **blocked**, every lookup 403, until an admin lifts the block with a
  reason (``POST /v1/keys/{name}/lift``), which grants another ceiling's worth that day.

The limits are the role's (``api_limits``, else :data:`~touchpoint.settings.DEFAULT_LOOKUP_LIMITS`: a person
at a desk a few lookups a minute, a ``service`` role for systems at machine rates); a key's entry may name
its own. Both are kept in PostgreSQL **by the lookup's own statement** (:data:`LIMITED_AUDIT`, common table
expressions in front of its audit row), so every server process of the API shares them and a lookup stays
one round trip; a lookup refused by them is audited like every refusal (429, 403) and shows nothing.
Concurrent lookups of one key queue on its bucket's row for the statement's few hundred microseconds, so
no interleaving of processes lets a key past its bucket: it is exceeded by at most its burst in any window.

Operations learn of a key reading far more than usual, or blocked, from :mod:`connectors.operations.access`
(``touchpoint.alerts.access``).
"""

from __future__ import annotations

from dataclasses import dataclass

from connectors.frontline.access import Principal
from touchpoint.settings import DEFAULT_LOOKUP_LIMITS, LookupLimits, Settings

__all__ = ["LIFT", "LIMITED_AUDIT", "MAX_SHARDS", "SHARDS", "Limits", "limits_of"]


MAX_SHARDS = 16
"""Most rows one key's bucket is split into: at least as many as the API's concurrent statements (8 a process)."""


@dataclass(frozen=True, slots=True)
class Limits:
    """One key's limits as the statement takes them: per second, burst, ceiling (None: no ceiling), and the
    shards of its bucket (one per 10 of burst, at most :data:`MAX_SHARDS`: a person's key has one)."""

    per_s: float
    burst: float
    daily_customers: int | None
    shards: int = 1

    @classmethod
    def of(cls, limits: LookupLimits) -> Limits:
        return cls(limits.per_minute / 60.0, float(limits.burst), limits.daily_customers,
                   max(1, min(MAX_SHARDS, limits.burst // 10)))


def limits_of(settings: Settings, principal: Principal) -> Limits:
    """A key's limits: what its entry names, the rest its role's from the settings, else the role's default."""
    role = settings.api_limits.get(principal.role) or DEFAULT_LOOKUP_LIMITS[principal.role]
    return Limits.of(role.model_copy(update=dict(principal.own_limits)) if principal.own_limits else role)


LIMITED_AUDIT = """,
pick AS (
    SELECT shard FROM lookup_buckets WHERE key_name = $3 AND shard < $12::integer
    -- the most tokens now, burst aside: tokens + rate * (now - at), less the same rate * now for every shard
    ORDER BY tokens - $9::float8 / $12 * date_part('epoch', at) DESC
    LIMIT 1 FOR UPDATE SKIP LOCKED
),
bucket AS (
    INSERT INTO lookup_buckets AS b (key_name, shard, tokens, at, allowed)
    SELECT $3, coalesce((SELECT shard FROM pick), pg_backend_pid() % $12), $10::float8 / $12 - 1, now(), true
    ON CONFLICT (key_name, shard) DO UPDATE SET
        tokens = lookup_tokens(b.tokens, b.at, $9::float8 / $12, $10::float8 / $12)
                 - CASE WHEN lookup_tokens(b.tokens, b.at, $9::float8 / $12, $10::float8 / $12) >= 1 THEN 1 ELSE 0 END,
        at = greatest(b.at, now()),
        allowed = lookup_tokens(b.tokens, b.at, $9::float8 / $12, $10::float8 / $12) >= 1
    RETURNING shard, allowed, tokens
),
blocked AS (
    SELECT FROM lookup_blocks WHERE key_name = $3 AND lifted_at IS NULL
),
seen AS (
    INSERT INTO lookup_seen (key_name, day, customer_id)
    SELECT $3, (now() AT TIME ZONE 'UTC')::date, card.customer_id
    FROM card, bucket
    WHERE bucket.allowed AND $11::integer IS NOT NULL AND NOT EXISTS (SELECT FROM blocked)
    ON CONFLICT DO NOTHING
    RETURNING day
),
daily AS (
    INSERT INTO lookup_daily AS d (key_name, day, shard, customers)
    SELECT $3, seen.day, bucket.shard, 1 FROM seen, bucket
    ON CONFLICT (key_name, day, shard) DO UPDATE SET customers = d.customers + 1
    RETURNING day, shard, customers
),
today AS (
    SELECT daily.day,
           daily.customers + coalesce((SELECT sum(o.customers) FROM lookup_daily o
                                       WHERE o.key_name = $3 AND o.day = daily.day AND o.shard <> daily.shard), 0)
               AS customers,
           coalesce((SELECT a.allowance FROM lookup_allowances a WHERE a.key_name = $3 AND a.day = daily.day), 0)
               AS allowance
    FROM daily
),
blocking AS (
    INSERT INTO lookup_blocks AS k (key_name, role, day, customers, ceiling, since)
    SELECT $3, $4, day, customers, $11 + allowance, now() FROM today WHERE customers > $11 + allowance
    ON CONFLICT (key_name) DO UPDATE SET role = excluded.role, day = excluded.day, customers = excluded.customers,
        ceiling = excluded.ceiling, since = excluded.since, lifted_at = NULL, lifted_by = NULL, lift_reason = NULL
    RETURNING key_name
),
verdict AS (
    SELECT CASE WHEN NOT bucket.allowed THEN 429
                WHEN EXISTS (SELECT FROM blocked) OR EXISTS (SELECT FROM blocking) THEN 403
                WHEN card.customer_id IS NULL THEN 404 ELSE 200 END AS status,
           CASE WHEN NOT bucket.allowed THEN ceil((1 - bucket.tokens) / ($9::float8 / $12))::integer
           END AS retry_after_s,
           card.customer_id
    FROM bucket LEFT JOIN card ON true
),
audit AS (
    INSERT INTO lookup_audit (key_name, role, endpoint, identifier_kind, identifier_key, customer_id, status,
                              unmasked, reason)
    SELECT $3, $4, $5, $6, $7, CASE WHEN status = 200 THEN customer_id END, status, $2, $8 FROM verdict
)"""
"""The limits and the audit row, after the card's CTEs (``card``): parameters ``$3`` key name, ``$4`` role,
``$5`` endpoint, ``$6``/``$7`` identifier kind and key, ``$2`` unmasked, ``$8`` reason, ``$9`` tokens per
second, ``$10`` burst, ``$11`` daily ceiling (NULL: none), ``$12`` shards. ``verdict`` holds the status (429
over the rate, 403 blocked or past the ceiling just now, 404 nobody, 200), ``Retry-After`` for a 429, and the
customer.

The bucket: each shard holds ``1/$12`` of the burst and refills at ``1/$12`` of the rate, so together they
hold the key's burst and refill at its rate. A lookup takes a token from the fullest shard no other statement
holds (``SKIP LOCKED``), so concurrent lookups of one key do not wait for each other, and it is refused only
when that shard is empty; when every shard is held it waits for one. The shards of a key are made before its
first lookup (:data:`SHARDS`), so its whole burst is there from the start.

The day's distinct customers are counted in the shard the lookup took its token from (its row is held
already, so counting adds no wait) and summed with the other shards as committed when the statement began:
concurrent lookups on other shards may each let one more customer past the ceiling."""

SHARDS = """
INSERT INTO lookup_buckets (key_name, shard, tokens, at, allowed)
SELECT $1, s, $2::float8, now(), true FROM generate_series(0, $3::integer - 1) AS s
ON CONFLICT (key_name, shard) DO NOTHING
"""
"""Make the shards of key ``$1``'s bucket, full (``$2`` tokens each, ``$3`` shards), unless they exist."""

LIFT = """
WITH lifted AS (
    UPDATE lookup_blocks SET lifted_at = now(), lifted_by = %(by)s, lift_reason = %(reason)s
    WHERE key_name = %(key_name)s AND lifted_at IS NULL
    RETURNING key_name, role, day, customers, ceiling, since
),
granted AS (
    INSERT INTO lookup_allowances (key_name, day, allowance)
    SELECT lifted.key_name, (now() AT TIME ZONE 'UTC')::date, coalesce(sum(d.customers), 0)
    FROM lifted LEFT JOIN lookup_daily d ON d.key_name = lifted.key_name AND d.day = (now() AT TIME ZONE 'UTC')::date
    GROUP BY lifted.key_name
    ON CONFLICT (key_name, day) DO UPDATE SET allowance = excluded.allowance
)
SELECT key_name, role, day, customers, ceiling, since FROM lifted
"""
"""Lift ``key_name``'s block (by an admin, with a reason): no row when it is not blocked. The key may look up as
many distinct customers again today as its ceiling (today's allowance becomes today's count)."""
