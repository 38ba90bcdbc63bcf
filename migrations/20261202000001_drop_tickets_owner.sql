-- No statement looks tickets up by owner alone: the lease renewal names its tickets by primary
-- key (`ticket_id IN (…)`), and every other condition on `owner` goes with a `ticket_id`.
-- The index still cost an entry written at every claim and moved at every finish (the owner
-- set, then cleared), on both engines. Older binaries run their statements without it too:
-- none names it, and v0.1.0's renewal (by owner and state alone) reads the `starting` and
-- `closing` stretch of tickets_state instead.
DROP INDEX IF EXISTS tickets_owner;
