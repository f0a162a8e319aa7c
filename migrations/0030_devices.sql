-- Device fleets: which account a store key belongs to, the account and device of every usage
-- record, and revocations of device tokens (a device, or a whole account when device_id is '').

ALTER TABLE api_keys ADD COLUMN account TEXT;
ALTER TABLE usage_records ADD COLUMN account TEXT;
ALTER TABLE usage_records ADD COLUMN device TEXT;
CREATE INDEX usage_records_account_at ON usage_records (account, at);

CREATE TABLE device_revocations (
    account     TEXT NOT NULL,
    device_id   TEXT NOT NULL,          -- '' revokes every device of the account
    revoked_at  BIGINT NOT NULL,        -- Unix milliseconds: tokens issued up to then are refused
    PRIMARY KEY (account, device_id)
);
