-- Batches (`/v1/batches`, docs/batch.md). `route` says who runs one: `gateway` (this gateway
-- runs the lines itself against an OpenAI-compatible upstream) or `upstream` (forwarded to a
-- dashscope upstream's batch API, which `upstream` and `upstream_batch_id` name).
-- `key_hash` (SHA-256 hex of the client key, never the key) rebuilds the caller after a
-- restart. A runner holds a batch while `lease_until` is ahead, so two gateways on one store
-- do not run the same batch.

CREATE TABLE batches (
    id                 TEXT PRIMARY KEY,
    owner              TEXT NOT NULL,
    key_hash           TEXT,
    endpoint           TEXT NOT NULL,
    input_file_id      TEXT NOT NULL,
    completion_window  TEXT NOT NULL,
    route              TEXT NOT NULL,
    model              TEXT NOT NULL,
    upstream           TEXT NOT NULL,
    upstream_batch_id  TEXT,
    status             TEXT NOT NULL,
    output_file_id     TEXT,
    error_file_id      TEXT,
    total              BIGINT NOT NULL,
    completed          BIGINT NOT NULL,
    failed             BIGINT NOT NULL,
    metadata           TEXT,               -- JSON object, as the client sent it
    errors             TEXT,               -- JSON, OpenAI's `errors` object
    usage_recorded     BIGINT NOT NULL,    -- 1 once a forwarded batch's usage is in the ledger
    lease_owner        TEXT,
    lease_until        BIGINT,
    created_at         BIGINT NOT NULL,    -- Unix milliseconds, like every time here
    in_progress_at     BIGINT,
    finalizing_at      BIGINT,
    completed_at       BIGINT,
    failed_at          BIGINT,
    expired_at         BIGINT,
    cancelling_at      BIGINT,
    cancelled_at       BIGINT,
    expires_at         BIGINT NOT NULL
);
CREATE INDEX batches_owner ON batches (owner, created_at);
CREATE INDEX batches_status ON batches (status);

-- The answer to each line of a gateway-run batch, kept as it is made: a restart runs only the
-- lines without one. `output` is the whole output (or error) file line.
CREATE TABLE batch_results (
    batch_id    TEXT NOT NULL,
    line        BIGINT NOT NULL,
    custom_id   TEXT NOT NULL,
    ok          BIGINT NOT NULL,           -- 1: goes to the output file; 0: to the error file
    output      TEXT NOT NULL,
    created_at  BIGINT NOT NULL,
    PRIMARY KEY (batch_id, line)
);
