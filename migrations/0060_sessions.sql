-- Server-side sessions: the conversation of one (owner, session id), its messages as JSON.
-- `version` grows with every stored turn, so two gateways storing the same session at once
-- cannot overwrite each other's turn.

CREATE TABLE sessions (
    owner       TEXT NOT NULL,          -- `key:<name>` or `device:<account>/<device>`
    id          TEXT NOT NULL,
    messages    TEXT NOT NULL,          -- JSON array of {message, text_tokens, images, tokens_per_image}
    tokens      BIGINT NOT NULL,        -- estimated tokens of the messages
    bytes       BIGINT NOT NULL,        -- length of `messages`
    version     BIGINT NOT NULL,
    created_at  BIGINT NOT NULL,        -- Unix milliseconds
    updated_at  BIGINT NOT NULL,
    PRIMARY KEY (owner, id)
);
CREATE INDEX sessions_owner_updated ON sessions (owner, updated_at);
CREATE INDEX sessions_updated ON sessions (updated_at);
