-- pgtenant catalog, version 2: transaction pooling and shared server budgets.

-- Backend connections one server holds for all its tenants together; NULL takes
-- [pool] server_max_connections from the proxy's config.
ALTER TABLE pgtenant.servers
    ADD COLUMN max_connections integer CHECK (max_connections > 0);

-- 'session' or 'transaction'; NULL takes [pool] mode from the proxy's config.
ALTER TABLE pgtenant.tenants
    ADD COLUMN pool_mode text CHECK (pool_mode IN ('session', 'transaction')),
    -- Clients of this tenant connected at once; NULL takes [pool] max_client_connections.
    ADD COLUMN max_client_connections integer CHECK (max_client_connections > 0);
