ALTER TABLE request_log DROP CONSTRAINT request_log_pkey;
ALTER TABLE request_log ADD PRIMARY KEY (id);
CREATE INDEX request_log_created_at ON request_log (created_at);
