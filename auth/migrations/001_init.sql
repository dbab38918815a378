-- Teams, API keys (hashes only), templates and the sandbox audit log.
CREATE TABLE teams (
    id             uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    name           text NOT NULL UNIQUE CHECK (name ~ '^[A-Za-z0-9_.@-]{1,128}$'),
    blocked        boolean NOT NULL DEFAULT false,
    max_concurrent integer NOT NULL DEFAULT 20 CHECK (max_concurrent >= 0),
    max_timeout_s  integer NOT NULL DEFAULT 3600 CHECK (max_timeout_s > 0),
    max_vcpu       integer NOT NULL DEFAULT 8 CHECK (max_vcpu > 0),
    max_mem_mb     integer NOT NULL DEFAULT 8192 CHECK (max_mem_mb >= 64),
    created_at     timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE api_keys (
    id           uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    team_id      uuid NOT NULL REFERENCES teams(id) ON DELETE CASCADE,
    -- SHA-256 of the key's 20 random bytes, lower-case hex; the key itself is never stored.
    hash         char(64) NOT NULL UNIQUE CHECK (hash ~ '^[0-9a-f]{64}$'),
    prefix       text NOT NULL,
    mask         text NOT NULL,
    name         text NOT NULL DEFAULT '' CHECK (length(name) <= 128),
    created_at   timestamptz NOT NULL DEFAULT now(),
    last_used_at timestamptz,
    expires_at   timestamptz,
    revoked_at   timestamptz
);
CREATE INDEX api_keys_team_idx ON api_keys (team_id);

CREATE TABLE templates (
    id           text PRIMARY KEY CHECK (id ~ '^[A-Za-z0-9_-]{1,64}$'),
    alias        text UNIQUE CHECK (alias ~ '^[A-Za-z0-9_-]{1,64}$'),
    team_id      uuid REFERENCES teams(id) ON DELETE CASCADE, -- NULL: public
    vcpu         integer NOT NULL DEFAULT 2 CHECK (vcpu > 0),
    memory_mb    integer NOT NULL DEFAULT 512 CHECK (memory_mb >= 64),
    disk_mb      integer NOT NULL DEFAULT 1024 CHECK (disk_mb >= 0),
    envd_version text NOT NULL DEFAULT '',
    created_at   timestamptz NOT NULL DEFAULT now()
);
INSERT INTO templates (id, alias, vcpu, memory_mb, disk_mb) VALUES ('base', 'base', 2, 512, 1024);

CREATE TABLE sandbox_events (
    id         bigserial PRIMARY KEY,
    sandbox_id text NOT NULL,
    team_id    uuid,
    node_id    text,
    kind       text NOT NULL CHECK (kind IN ('create', 'kill', 'expire', 'lost', 'reconcile')),
    at         timestamptz NOT NULL DEFAULT now(),
    detail     jsonb NOT NULL DEFAULT '{}'
);
CREATE INDEX sandbox_events_sandbox_idx ON sandbox_events (sandbox_id);
CREATE INDEX sandbox_events_team_idx ON sandbox_events (team_id, at);
