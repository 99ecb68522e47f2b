ALTER TABLE quota_overrides DROP COLUMN max_batches;
ALTER TABLE quota_overrides DROP COLUMN tokens_per_minute;
