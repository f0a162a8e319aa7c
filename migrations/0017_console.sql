-- The console's settings: today the admin token the gateway made itself (the bootstrap token of
-- a first run, or the one that replaced it through the console), only as its SHA-256.

CREATE TABLE console_settings (
    name        TEXT PRIMARY KEY,
    value       TEXT NOT NULL,
    updated_at  BIGINT NOT NULL       -- Unix milliseconds
);
