-- v0.3.0, additive only: the W3C traceparent of the delivery that started a ticket, so
-- Jelou's webhooks about the ticket continue its trace and `tickets show` names it.
ALTER TABLE tickets ADD COLUMN traceparent TEXT;
