-- The front line's lookup: the keyed hash of an identifier (never its clear value,
-- see touchpoint.core.normalise) -> the customer it belongs to now. A merged-away
-- customer's keys move to the survivor, whose card lists them. source_offset is the
-- customer-views offset of the card that last moved the key.
CREATE TABLE customer_identifiers (
    key           text   PRIMARY KEY,
    kind          text   NOT NULL,
    customer_id   text   NOT NULL,
    source_offset bigint NOT NULL
);
-- Which keys a customer holds (to move or drop them with the customer).
CREATE INDEX customer_identifiers_customer ON customer_identifiers (customer_id);
