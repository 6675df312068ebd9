-- Flywheel's store on PostgreSQL, first step: the tables of backend/store/sqlite/schema.py's steps
-- 1-4 in PostgreSQL's types. Never edit a released step; add the next number (0002_...sql).

-- Served completions (abstentions too). JSON columns are text, as on SQLite: a row that cannot be
-- read is set aside by the pass that meets it (quarantine.py), never refused by a cast mid-pass.
CREATE TABLE completions (
    completion_id text PRIMARY KEY,
    user_id text NOT NULL,
    model_version text NOT NULL,
    context text NOT NULL,
    prompt_ids text NOT NULL,
    completion_ids text NOT NULL,
    token_logprobs text NOT NULL,
    temperature double precision NOT NULL,
    text text NOT NULL,
    created_at double precision NOT NULL,
    latency_ms double precision NOT NULL,
    -- Set at ingest when an event with final=true arrives, so finalizing needs no event scan.
    final_seen boolean NOT NULL DEFAULT false,
    finalized_at double precision,
    -- Set when retention has deleted the context and events; the episode stays.
    purged_at double precision,
    evaluation boolean NOT NULL DEFAULT false
);
-- Only open completions are indexed: the finalizer scans this small set every few seconds.
CREATE INDEX completions_open ON completions (created_at, completion_id) WHERE finalized_at IS NULL;
CREATE INDEX completions_by_time ON completions (created_at);

CREATE TABLE events (
    -- Insertion order: the tie-break between events of one client time, as SQLite's rowid.
    id bigint GENERATED ALWAYS AS IDENTITY,
    event_id text PRIMARY KEY,
    completion_id text NOT NULL REFERENCES completions (completion_id),
    kind text NOT NULL,
    payload text NOT NULL,
    client_ts double precision NOT NULL,
    received_at double precision NOT NULL
);
CREATE INDEX events_by_completion ON events (completion_id);
CREATE INDEX events_by_time ON events (received_at);

CREATE TABLE episodes (
    -- The trainer's cursor. Episodes are inserted under one advisory lock (episodes.py), so seqs
    -- commit in order and a reader that sees seq n has seen every lower one it will ever see.
    seq bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    completion_id text NOT NULL UNIQUE REFERENCES completions (completion_id),
    outcome text NOT NULL,
    reward double precision,
    similarity double precision,
    accept_visible_ms double precision,
    finalized_at double precision NOT NULL
);

CREATE TABLE checkpoints (
    added bigint GENERATED ALWAYS AS IDENTITY,
    version text PRIMARY KEY,
    parent_version text,
    state text NOT NULL,
    path text NOT NULL,
    created_at double precision NOT NULL,
    metrics text NOT NULL DEFAULT '{}'
);
-- At most one live version, enforced by the database rather than by convention.
CREATE UNIQUE INDEX checkpoints_one_live ON checkpoints (state) WHERE state = 'live';

CREATE TABLE checkpoint_transitions (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    version text NOT NULL REFERENCES checkpoints (version),
    from_state text,
    to_state text NOT NULL,
    reason text NOT NULL,
    metrics text NOT NULL DEFAULT '{}',
    at double precision NOT NULL
);
CREATE INDEX checkpoint_transitions_by_version ON checkpoint_transitions (version);

-- A sequence never hands out a number twice, even across rolled-back transactions.
CREATE SEQUENCE version_numbers;

CREATE TABLE tokens (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name text NOT NULL,
    role text NOT NULL CHECK (role IN ('client', 'admin')),
    hash text NOT NULL UNIQUE,
    created_at double precision NOT NULL,
    revoked_at double precision
);

CREATE TABLE backend_settings (key text PRIMARY KEY, value text NOT NULL);

-- Rows that could not be read, set aside so that no pass stops on them (quarantine.py).
CREATE TABLE quarantine (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    tbl text NOT NULL,
    row_key text NOT NULL,
    reason text NOT NULL,
    content text,
    stored_at double precision,
    at double precision NOT NULL,
    UNIQUE (tbl, row_key)
);
