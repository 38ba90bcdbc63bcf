-- v0.2.0, additive only (a v0.1.0 process still running against this store is unaffected):
-- the conversation's room (what sending a message to the customer needs), and agents' replies
-- sent through Jelou, so that a message is sent once per messageId.
ALTER TABLE tickets ADD COLUMN room_id TEXT;

CREATE TABLE IF NOT EXISTS sent_messages (
    ticket_id       TEXT NOT NULL,
    -- The helpdesk's own id of the message.
    message_id      TEXT NOT NULL,
    conversation_id TEXT,
    -- sending (claimed; a call may be under way or its answer was lost) | sent
    state           TEXT NOT NULL,
    owner           TEXT,
    lease_until     BIGINT,
    created_at      BIGINT NOT NULL,
    updated_at      BIGINT NOT NULL,
    PRIMARY KEY (ticket_id, message_id)
);
