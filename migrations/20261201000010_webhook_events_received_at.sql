-- The dedupe table of Jelou's webhooks is pruned by age (webhook.max_age): an index on the
-- receipt time keeps each bounded prune a range scan instead of a walk over every row.
CREATE INDEX IF NOT EXISTS webhook_events_received_at ON webhook_events (received_at);
