-- v0.2.0, additive only: who owns a bot + user's conversation is read per (bot_id, user_id)
-- among open tickets, on every start and close.
CREATE INDEX IF NOT EXISTS tickets_bot_user ON tickets (bot_id, user_id, state);
