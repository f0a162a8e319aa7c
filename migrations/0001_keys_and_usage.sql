-- Portable between SQLite and PostgreSQL: TEXT, BIGINT and DOUBLE PRECISION only; times are
-- Unix milliseconds, flags are 0/1.

CREATE TABLE api_keys (
    id            TEXT PRIMARY KEY,
    name          TEXT NOT NULL UNIQUE,
    key_hash      TEXT NOT NULL UNIQUE,   -- hex SHA-256 of the key; the key itself is never stored
    key_prefix    TEXT NOT NULL,          -- first characters, to tell keys apart in listings
    models        TEXT,                   -- comma-separated allow-list; NULL allows all
    rpm           BIGINT,
    tpm           BIGINT,
    token_quota   BIGINT,
    quota_period  TEXT NOT NULL DEFAULT 'total',
    expires_at    BIGINT,
    disabled      BIGINT NOT NULL DEFAULT 0,
    revoked_at    BIGINT,
    created_at    BIGINT NOT NULL,
    updated_at    BIGINT NOT NULL
);

CREATE TABLE usage_records (
    id                   TEXT PRIMARY KEY,   -- made by the gateway: a replayed spill writes nothing twice
    at                   BIGINT NOT NULL,
    day                  TEXT NOT NULL,      -- UTC date, YYYY-MM-DD
    request_id           TEXT NOT NULL,
    key_id               TEXT,
    key_name             TEXT NOT NULL,
    model                TEXT NOT NULL,
    upstream             TEXT NOT NULL,
    route                TEXT NOT NULL,
    dialect              TEXT NOT NULL,
    stream               BIGINT NOT NULL,
    status               BIGINT NOT NULL,
    error_code           TEXT,
    prompt_tokens        BIGINT NOT NULL,
    completion_tokens    BIGINT NOT NULL,
    total_tokens         BIGINT NOT NULL,
    cached_tokens        BIGINT,
    reasoning_tokens     BIGINT,
    image_tokens         BIGINT,
    audio_tokens         BIGINT,
    estimated            BIGINT NOT NULL,
    ttft_ms              BIGINT,
    duration_ms          BIGINT NOT NULL,
    bytes_in             BIGINT NOT NULL,
    bytes_out            BIGINT NOT NULL,
    images               BIGINT NOT NULL,
    image_original_bytes BIGINT NOT NULL,
    image_sent_bytes     BIGINT NOT NULL,
    image_tokens_before  BIGINT NOT NULL,
    image_tokens_after   BIGINT NOT NULL,
    cost                 DOUBLE PRECISION
);

CREATE INDEX usage_records_key_at ON usage_records (key_name, at);
CREATE INDEX usage_records_at ON usage_records (at);
