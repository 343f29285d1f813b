-- The loyalty ledger: one row per entry (earn, reversal, expiry). The entry id is
-- derived from the source event, the rule and the kind, so a retry, a redelivery or
-- a full replay finds the row already there and can never double a point.
-- customer_id is the customer the entry was issued to; a customer merged away keeps
-- its id here and customer_aliases leads to the survivor. Balance = sum of points.
CREATE TABLE loyalty_ledger (
    entry_id        text        PRIMARY KEY,
    customer_id     text        NOT NULL,
    kind            text        NOT NULL CHECK (kind IN ('earn', 'reversal', 'expiry')),
    points          bigint      NOT NULL,
    occurred_at     timestamptz NOT NULL,
    source_event_id text        NOT NULL,
    transaction_id  text,
    rule_version    text        NOT NULL,
    rule_id         text        NOT NULL,
    multiplier      integer,
    reason          text        NOT NULL,
    source_topic     text    NOT NULL,
    source_partition integer NOT NULL,
    source_offset    bigint  NOT NULL,
    recorded_at     timestamptz NOT NULL DEFAULT clock_timestamp()
);
CREATE INDEX loyalty_ledger_customer ON loyalty_ledger (customer_id, occurred_at);
