-- Cards are stored as json (their text, checked on the way in), not jsonb: the customers projection
-- writes one per changed customer, and PostgreSQL parsing each into jsonb was most of that write's CPU.
-- Readers get the same document; SQL over a card uses the json_* functions.
ALTER TABLE customers ALTER COLUMN view TYPE json USING view::json;
ALTER TABLE customers ALTER COLUMN view SET COMPRESSION lz4;
