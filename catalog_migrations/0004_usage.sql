-- pgtenant catalog, version 4: per-tenant usage, flushed by every proxy at
-- [catalog] usage_interval_ms. One row per tenant, proxy and period in which the tenant did
-- something. No foreign key: a dropped tenant's history stays for billing.

CREATE TABLE pgtenant.tenant_usage (
    tenant       text NOT NULL,
    proxy        text NOT NULL,
    period_start timestamptz NOT NULL,
    period_end   timestamptz NOT NULL,
    transactions bigint NOT NULL,
    queries      bigint NOT NULL,
    bytes_in     bigint NOT NULL,
    bytes_out    bigint NOT NULL,
    busy_time_us bigint NOT NULL,
    PRIMARY KEY (tenant, proxy, period_start)
);

CREATE INDEX tenant_usage_period ON pgtenant.tenant_usage (period_start);
