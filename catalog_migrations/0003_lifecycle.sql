-- pgtenant catalog, version 3: the tenant lifecycle (provisioning and tenant migrations).

-- Schema isolation: the tenant's schema inside `database`; NULL for the other modes.
ALTER TABLE pgtenant.tenants
    ADD COLUMN schema_name text;

-- Where each tenant stands with its own migrations (`pgtenant migrate`): the highest version
-- applied, and the file and error that stopped the last run, if one did.
CREATE TABLE pgtenant.tenant_migrations (
    tenant      text PRIMARY KEY REFERENCES pgtenant.tenants (slug) ON DELETE CASCADE ON UPDATE CASCADE,
    version     bigint NOT NULL DEFAULT 0,
    failed_file text,
    error       text,
    updated_at  timestamptz NOT NULL DEFAULT now()
);
