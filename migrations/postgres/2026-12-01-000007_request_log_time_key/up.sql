-- The request log keyed by (created_at, id): one index (the primary key) instead of two
-- (id and created_at). Usage reports and retention select by time, a key prefix; a
-- replayed row still conflicts on (created_at, id) and is skipped.
ALTER TABLE request_log DROP CONSTRAINT request_log_pkey;
ALTER TABLE request_log ADD PRIMARY KEY (created_at, id);
DROP INDEX request_log_created_at;
