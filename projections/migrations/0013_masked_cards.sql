-- The card as an agent sees it (identifiers opened and masked, see touchpoint/core/masking.py), JSON bytes
-- written by the customers projection once per card change, so a lookup sends them as they are instead of
-- parsing, opening, masking and serialising the card per request. NULL: written before; the lookup API
-- then masks the card itself.
ALTER TABLE customers ADD COLUMN masked_card bytea;
ALTER TABLE customers ALTER COLUMN masked_card SET COMPRESSION lz4;
