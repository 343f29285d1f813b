-- Why clear identifiers were read: an unmasked lookup (operations, admin) must give a short reason, kept with
-- its audit row. NULL for masked lookups and rows from before.
ALTER TABLE lookup_audit ADD COLUMN reason text;
