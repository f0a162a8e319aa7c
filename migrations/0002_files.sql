-- Files uploaded through /v1/files: metadata here, bytes in the file storage ([files]).

CREATE TABLE files (
    id          TEXT PRIMARY KEY,     -- file-fe-... (file-extract) or file-batch-... (batch)
    owner       TEXT NOT NULL,        -- the name of the key that uploaded it
    filename    TEXT NOT NULL,
    purpose     TEXT NOT NULL,
    bytes       BIGINT NOT NULL,
    sha256      TEXT NOT NULL,
    created_at  BIGINT NOT NULL,      -- Unix milliseconds
    deleted_at  BIGINT
);

CREATE INDEX files_owner ON files (owner, created_at);

-- The id a dashscope upstream gave the file when the gateway uploaded it there.
CREATE TABLE upstream_files (
    file_id           TEXT NOT NULL,
    upstream          TEXT NOT NULL,
    upstream_file_id  TEXT NOT NULL,
    created_at        BIGINT NOT NULL,
    PRIMARY KEY (file_id, upstream)
);
