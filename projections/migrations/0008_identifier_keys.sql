-- The key store (connectors/keystore.py): one data key per identifier, keyed by the
-- identifier's keyed hash, wrapped (AES-256-GCM) under the master key from the settings.
-- Pseudonyms on the topics are sealed with these keys; erasing a person deletes their rows
-- (crypto-shredding), after which nothing can open those pseudonyms. Not part of the read
-- model: a rebuild never empties it.
CREATE TABLE identifier_keys (
    key        text        PRIMARY KEY,   -- "<kind>:<32 hex>", as in customer_identifiers
    wrapped    bytea       NOT NULL,      -- 12-byte nonce || AES-GCM(master key, data key, aad = key)
    created_at timestamptz NOT NULL DEFAULT clock_timestamp()
);
-- What erasure left behind, for the auditor: which customer, when, how many keys were destroyed.
CREATE TABLE erasures (
    customer_id  text        PRIMARY KEY,
    aliases      text[]      NOT NULL,
    keys_destroyed integer   NOT NULL,
    erased_at    timestamptz NOT NULL DEFAULT clock_timestamp()
);
