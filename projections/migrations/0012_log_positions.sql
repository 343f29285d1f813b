-- Identity's position in the ordered log (customer-views records carry it, see touchpoint/contract/cards.py):
-- it orders a card against the merge of its id, which come from different partitions. NULL: written before.
ALTER TABLE customers ADD COLUMN source_position bigint;
ALTER TABLE customer_aliases ADD COLUMN source_position bigint;
