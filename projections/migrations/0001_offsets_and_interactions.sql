-- Consumed positions of every projection, written in the same transaction as its rows.
CREATE TABLE projection_offsets (
    projection  text    NOT NULL,
    topic       text    NOT NULL,
    partition   integer NOT NULL,
    next_offset bigint  NOT NULL,
    updated_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (projection, topic, partition)
);

-- Every accepted interaction, one row per event id (the idempotency key).
CREATE TABLE interactions (
    event_id     text        PRIMARY KEY,
    customer_key text        NOT NULL,
    type         text        NOT NULL,
    channel      text        NOT NULL,
    occurred_at  timestamptz NOT NULL,
    payload      jsonb       NOT NULL,
    source_topic     text    NOT NULL,
    source_partition integer NOT NULL,
    source_offset    bigint  NOT NULL
);
CREATE INDEX interactions_customer_time ON interactions (customer_key, occurred_at DESC);
