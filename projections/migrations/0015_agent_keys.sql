-- What an agent's card opens per lookup: the data-key names of the sealed values it shows whole (the customer
-- numbers left sealed in masked_identifiers, the person's name in the view), so the lookup's statement fetches
-- their wrapped keys by primary key instead of reading them out of the JSON. NULL: a row written before; the
-- lookup then reads the customer numbers' keys out of masked_identifiers, as before.
ALTER TABLE customers ADD COLUMN agent_keys text[];
