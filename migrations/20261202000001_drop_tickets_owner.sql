-- No statement looks tickets up by owner alone: the lease renewal names its tickets by primary
-- key (`ticket_id IN (…)`), and every other condition on `owner` goes with a `ticket_id`.
-- The index still cost an entry written at every claim and moved at every finish (the owner
-- set, then cleared), on both engines. A binary one release older runs the same statements
-- without it.
DROP INDEX IF EXISTS tickets_owner;
