-- Cards are 10-40 KB of jsonb, stored compressed (TOAST). PostgreSQL's default compression, pglz,
-- was most of the customers projection's time in PostgreSQL; lz4 compresses several times faster.
-- Cards written before this keep their pglz form and read as before.
ALTER TABLE customers ALTER COLUMN view SET COMPRESSION lz4;
