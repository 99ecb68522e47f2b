DROP INDEX request_log_user_time;
ALTER TABLE api_keys DROP COLUMN last_used_at;
