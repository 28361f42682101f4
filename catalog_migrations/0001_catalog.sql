-- pgtenant catalog, version 1: servers, tenants, tenant users, and change notifications.
-- Applied by `pgtenant catalog migrate` inside one transaction under an advisory lock.

CREATE TABLE pgtenant.servers (
    name             text PRIMARY KEY CHECK (name ~ '^[a-z][a-z0-9_-]{0,47}$'),
    host             text NOT NULL,
    port             integer NOT NULL DEFAULT 5432 CHECK (port BETWEEN 1 AND 65535),
    backend_user     text NOT NULL,
    -- The password of backend_user. Restrict who can read this table.
    backend_password text NOT NULL DEFAULT '',
    created_at       timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE pgtenant.tenants (
    slug                text PRIMARY KEY CHECK (slug ~ '^[a-z][a-z0-9_-]{0,47}$'),
    server              text NOT NULL REFERENCES pgtenant.servers (name) ON UPDATE CASCADE,
    database            text,
    status              text NOT NULL DEFAULT 'active'
                        CHECK (status IN ('active', 'paused', 'disabled', 'moving')),
    isolation           text NOT NULL DEFAULT 'database'
                        CHECK (isolation IN ('database', 'schema', 'shared')),
    backend_user        text,
    backend_password    text,
    pool_size           integer CHECK (pool_size > 0),
    min_idle            integer CHECK (min_idle >= 0),
    idle_timeout_ms     bigint CHECK (idle_timeout_ms > 0),
    max_lifetime_ms     bigint CHECK (max_lifetime_ms > 0),
    checkout_timeout_ms bigint CHECK (checkout_timeout_ms > 0),
    created_at          timestamptz NOT NULL DEFAULT now(),
    updated_at          timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE pgtenant.tenant_users (
    tenant        text NOT NULL REFERENCES pgtenant.tenants (slug) ON DELETE CASCADE ON UPDATE CASCADE,
    name          text NOT NULL CHECK (name <> ''),
    -- A SCRAM-SHA-256 verifier or an md5 hash; never a plaintext password.
    password_hash text NOT NULL
                  CHECK (password_hash LIKE 'SCRAM-SHA-256$%' OR password_hash ~ '^md5[0-9a-f]{32}$'),
    created_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant, name)
);

CREATE FUNCTION pgtenant.touch_updated_at() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    NEW.updated_at := now();
    RETURN NEW;
END $$;

CREATE TRIGGER tenants_updated_at BEFORE UPDATE ON pgtenant.tenants
    FOR EACH ROW EXECUTE FUNCTION pgtenant.touch_updated_at();

-- Every change to a catalog table wakes every proxy, which reloads its snapshot.
CREATE FUNCTION pgtenant.notify_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('pgtenant_catalog', TG_TABLE_NAME || ':' || TG_OP);
    RETURN NULL;
END $$;

CREATE TRIGGER servers_notify AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON pgtenant.servers
    FOR EACH STATEMENT EXECUTE FUNCTION pgtenant.notify_change();
CREATE TRIGGER tenants_notify AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON pgtenant.tenants
    FOR EACH STATEMENT EXECUTE FUNCTION pgtenant.notify_change();
CREATE TRIGGER tenant_users_notify AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON pgtenant.tenant_users
    FOR EACH STATEMENT EXECUTE FUNCTION pgtenant.notify_change();
