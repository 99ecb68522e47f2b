-- Quotas: tokens per minute (FIRST's tpm) and active batches per user, per subject.
-- NULL = the configured default.
ALTER TABLE quota_overrides ADD COLUMN tokens_per_minute BIGINT;
ALTER TABLE quota_overrides ADD COLUMN max_batches BIGINT;
