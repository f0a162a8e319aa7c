-- Requests answered from the response cache: no upstream tokens were spent, so the token
-- columns hold 0; the original reply's figures are kept beside them for reference.

ALTER TABLE usage_records ADD COLUMN cache_hit BIGINT NOT NULL DEFAULT 0;
ALTER TABLE usage_records ADD COLUMN cache_prompt_tokens BIGINT;
ALTER TABLE usage_records ADD COLUMN cache_completion_tokens BIGINT;
