-- A late campaign invitation re-scores the purchases it precedes in event time: the difference is an
-- 'adjustment' entry (touchpoint/core/loyalty.py), never a rewrite of the earn entry already written.
ALTER TABLE loyalty_ledger DROP CONSTRAINT loyalty_ledger_kind_check;
ALTER TABLE loyalty_ledger ADD CONSTRAINT loyalty_ledger_kind_check
    CHECK (kind IN ('earn', 'reversal', 'expiry', 'adjustment'));
