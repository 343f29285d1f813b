-- Dormancy and churn alerts for the front line: the latest transition of every
-- customer's episode of each kind (raised, escalated or resolved). Active alerts are
-- the rows whose state is not 'resolved'. A row is only replaced by a record from a
-- later offset of the same partition (alerts are keyed by customer id, so one
-- customer's alerts of one kind arrive in order on one partition): a redelivered or
-- replayed alert never takes a newer one back.
CREATE TABLE alerts (
    customer_id  text        NOT NULL,
    kind         text        NOT NULL CHECK (kind IN ('dormancy', 'churn')),
    alert_id     text        NOT NULL,
    state        text        NOT NULL CHECK (state IN ('raised', 'escalated', 'resolved')),
    severity     text        NOT NULL CHECK (severity IN ('medium', 'high')),
    since        timestamptz NOT NULL,
    raised_at    timestamptz NOT NULL,
    at           timestamptz NOT NULL,
    segment      text        NOT NULL,
    value_minor  bigint      NOT NULL,
    contactable  jsonb       NOT NULL,
    reasons      jsonb       NOT NULL,
    source_topic     text    NOT NULL,
    source_partition integer NOT NULL,
    source_offset    bigint  NOT NULL,
    updated_at   timestamptz NOT NULL DEFAULT clock_timestamp(),
    PRIMARY KEY (customer_id, kind)
);
-- The front line's question: which alerts are open now, newest first.
CREATE INDEX alerts_active ON alerts (at DESC) WHERE state <> 'resolved';
