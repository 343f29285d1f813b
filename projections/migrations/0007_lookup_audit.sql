-- Who looked whom up, when, by what and with what outcome (connectors/lookup.py writes
-- one row per lookup, page view included, in the transaction that read the card, so
-- nothing is disclosed that was not recorded). Identifiers are recorded as their keyed
-- hash (the form customer_identifiers holds), never as the clear value the caller typed.
CREATE TABLE lookup_audit (
    id              bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    at              timestamptz NOT NULL DEFAULT clock_timestamp(),
    key_name        text        NOT NULL,   -- the API key's name from the settings: who
    role            text        NOT NULL CHECK (role IN ('agent', 'operations', 'admin')),
    endpoint        text        NOT NULL,   -- 'lookup', 'customer' or 'agent_page'
    identifier_kind text,                   -- phone, email, card, ... or customer_id; null: none given
    identifier_key  text,                   -- keyed hash of the normalised value; null: invalid or none
    customer_id     text,                   -- whom: the customer whose card was answered, else null
    status          smallint    NOT NULL,   -- the HTTP status answered
    unmasked        boolean     NOT NULL DEFAULT false  -- clear identifiers were asked for
);
-- The questions an auditor asks: what happened lately, who looked at this customer, what did this key do.
CREATE INDEX lookup_audit_at ON lookup_audit (at DESC);
CREATE INDEX lookup_audit_customer ON lookup_audit (customer_id, at DESC) WHERE customer_id IS NOT NULL;
CREATE INDEX lookup_audit_key_name ON lookup_audit (key_name, at DESC);
-- The newest card's instant, for the API's freshness report (max(as_of) without a scan).
CREATE INDEX customers_as_of ON customers (as_of);
