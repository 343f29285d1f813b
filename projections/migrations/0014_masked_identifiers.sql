-- The card an agent sees is no second copy of the card any more (masked_card, 0013, doubled what the customers
-- projection wrote: 14 kB a card): the view is stored with its identifiers last, identifiers_at says where they
-- begin in its text, and masked_identifiers holds them opened and masked. A lookup sends the view's text up to
-- identifiers_at, then the masked identifiers. NULL: a row written before; the lookup API masks the card itself.
ALTER TABLE customers DROP COLUMN masked_card;
ALTER TABLE customers ADD COLUMN masked_identifiers json;
ALTER TABLE customers ADD COLUMN identifiers_at integer;
