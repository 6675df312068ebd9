-- Tokens may have the role metrics (a scraper's: /metrics and nothing else). The CHECK of
-- 0001_initial.sql has PostgreSQL's default name for a column's constraint; it is replaced in
-- place, so every row keeps its id, hash and times.
ALTER TABLE tokens DROP CONSTRAINT tokens_role_check;
ALTER TABLE tokens ADD CONSTRAINT tokens_role_check CHECK (role IN ('client', 'admin', 'metrics'));
