-- A document's text, extracted once (at upload, or at first use for files uploaded before
-- this table), or why it was refused (a JSON refusal naming the limit); never both.

CREATE TABLE file_texts (
    file_id     TEXT PRIMARY KEY,
    text        TEXT,
    refusal     TEXT,
    created_at  BIGINT NOT NULL       -- Unix milliseconds
);
