-- The latest card of every customer, as the customers agent rendered it.
CREATE TABLE customers (
    customer_id   text        PRIMARY KEY,
    view          jsonb       NOT NULL,
    as_of         timestamptz NOT NULL,
    value_segment text        NOT NULL,
    source_topic     text    NOT NULL,
    source_partition integer NOT NULL,
    source_offset    bigint  NOT NULL
);

-- Customers merged away: their old id still resolves to the survivor.
CREATE TABLE customer_aliases (
    alias       text PRIMARY KEY,
    survivor    text NOT NULL,
    source_offset bigint NOT NULL
);
CREATE INDEX customer_aliases_survivor ON customer_aliases (survivor);
