-- When each API key was last used (unix milliseconds), for the admin console's key list.
-- Written at most once a minute per key and replica, off the request path.
ALTER TABLE api_keys ADD COLUMN last_used_at BIGINT;
-- The admin console's usage charts for one user read that user's rows in a time range:
-- without this index every row of the range is read (1M rows: 124 ms on SQLite, 116 ms on
-- PostgreSQL; with it 6.6 and 4.4 ms, bench/usage_query.sh). Orgs are few and large, so
-- an org index saves little and is not kept; the whole log's charts read the primary key.
CREATE INDEX request_log_user_time ON request_log (user_id, created_at);
