-- What the bridge did per ticket. Portable SQL: the same file runs on SQLite and PostgreSQL.
-- Times are milliseconds since the Unix epoch.
CREATE TABLE IF NOT EXISTS tickets (
    ticket_id       TEXT PRIMARY KEY,
    bot_id          TEXT,
    user_id         TEXT,
    conversation_id TEXT,
    -- starting | active | closing | closed | failed
    state           TEXT NOT NULL,
    -- The bridge process working on the ticket, and until when its hold lasts.
    owner           TEXT,
    lease_until     BIGINT,
    ended_reason    TEXT,
    last_error      TEXT,
    attempts        BIGINT NOT NULL DEFAULT 0,
    created_at      BIGINT NOT NULL,
    updated_at      BIGINT NOT NULL
);
CREATE INDEX IF NOT EXISTS tickets_conversation_id ON tickets (conversation_id);
CREATE INDEX IF NOT EXISTS tickets_state ON tickets (state, updated_at);
CREATE INDEX IF NOT EXISTS tickets_owner ON tickets (owner);

-- Webhook deliveries already forwarded, so a repeated delivery publishes once.
CREATE TABLE IF NOT EXISTS webhook_events (
    event_key   TEXT PRIMARY KEY,
    received_at BIGINT NOT NULL
);
