-- When each row was written, for the event-to-view latency the front line cares about.
ALTER TABLE interactions ADD COLUMN recorded_at timestamptz NOT NULL DEFAULT clock_timestamp();
ALTER TABLE customers ADD COLUMN updated_at timestamptz NOT NULL DEFAULT clock_timestamp();
