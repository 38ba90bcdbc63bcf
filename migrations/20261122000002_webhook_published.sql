-- A webhook delivery is claimed (published = 0) before it is forwarded and marked published
-- (1) after the broker confirmed it. A claim whose process died before forwarding grows stale
-- and is taken again by Jelou's next delivery, so a crash cannot turn an event into a
-- "duplicate" that was never published. Rows from before this column were published.
ALTER TABLE webhook_events ADD COLUMN published BIGINT NOT NULL DEFAULT 1;
