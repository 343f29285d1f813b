-- Bulk lookup protection (connectors/frontline/limits.py): a stolen key must not read the customer base.
-- The lookup's own statement keeps these tables, so every API process shares them and a lookup stays one
-- round trip.

-- A service role: systems (a CTI screen pop, an IVR) that look customers up at machine rates, masked.
ALTER TABLE lookup_audit DROP CONSTRAINT lookup_audit_role_check;
ALTER TABLE lookup_audit ADD CONSTRAINT lookup_audit_role_check
    CHECK (role IN ('agent', 'operations', 'admin', 'service'));

-- The token bucket of lookups of each key: tokens left at the instant `at`. A key with a large burst has its
-- bucket in shards (rows) that share its rate and burst, so its concurrent lookups do not queue on one row.
-- Unlogged: after a crash of PostgreSQL every bucket starts full again, which grants at most one burst more.
CREATE UNLOGGED TABLE lookup_buckets (
    key_name text        NOT NULL,
    shard    smallint    NOT NULL,
    tokens   float8      NOT NULL,
    at       timestamptz NOT NULL,
    allowed  boolean     NOT NULL,  -- whether the lookup that last wrote the row took a token
    PRIMARY KEY (key_name, shard)
);

-- The tokens a bucket holds now: refilled at per_s since `at`, at most burst.
CREATE FUNCTION lookup_tokens(tokens float8, at timestamptz, per_s float8, burst float8) RETURNS float8
    LANGUAGE sql STABLE
    RETURN least(burst, tokens + per_s * greatest(0, date_part('epoch', now() - at)));  -- float8, not numeric

-- The distinct customers each key looked up per UTC day, and the day's count, in the shards of the key's bucket
-- (a lookup counts in the shard it took its token from, whose row it holds already).
CREATE TABLE lookup_seen (
    key_name    text NOT NULL,
    day         date NOT NULL,
    customer_id text NOT NULL,
    PRIMARY KEY (key_name, day, customer_id)
);
CREATE TABLE lookup_daily (
    key_name  text     NOT NULL,
    day       date     NOT NULL,
    shard     smallint NOT NULL,
    customers integer  NOT NULL,
    PRIMARY KEY (key_name, day, shard)
);
-- How many more distinct customers an admin's lift granted a key that day: its ceiling is the role's plus this.
CREATE TABLE lookup_allowances (
    key_name  text    NOT NULL,
    day       date    NOT NULL,
    allowance integer NOT NULL,
    PRIMARY KEY (key_name, day)
);

-- A key that went past its daily ceiling is refused (403) until an admin lifts the block, with a reason.
CREATE TABLE lookup_blocks (
    key_name    text        PRIMARY KEY,
    role        text        NOT NULL,
    day         date        NOT NULL,
    customers   integer     NOT NULL,   -- distinct customers that day when it was blocked
    ceiling     integer     NOT NULL,   -- the ceiling it went past
    since       timestamptz NOT NULL,
    lifted_at   timestamptz,            -- null: blocked now
    lifted_by   text,
    lift_reason text
);

-- The access watch (connectors/operations/access.py): each key's lookups per judged window, its usual volume
-- over the history kept, and how far the lookup windows have been judged.
CREATE TABLE lookup_windows (
    key_name     text        NOT NULL,
    window_start timestamptz NOT NULL,
    lookups      integer     NOT NULL,
    PRIMARY KEY (key_name, window_start)
);
CREATE TABLE access_watch (
    id           smallint    PRIMARY KEY CHECK (id = 1),
    judged_until timestamptz NOT NULL
);
