-- pgtenant catalog, version 5: TLS to each server (libpq's sslmode meanings), and change
-- notifications that carry the time of the change, so proxies can report how late they apply it.

ALTER TABLE pgtenant.servers
    ADD COLUMN tls_mode text NOT NULL DEFAULT 'prefer'
        CHECK (tls_mode IN ('disable', 'prefer', 'require', 'verify-full')),
    -- A PEM file on each proxy's host: the CA that signs the server's certificate.
    ADD COLUMN tls_ca_file text,
    ADD CONSTRAINT servers_verify_full_needs_ca
        CHECK (tls_mode <> 'verify-full' OR coalesce(tls_ca_file, '') <> '');

CREATE OR REPLACE FUNCTION pgtenant.notify_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('pgtenant_catalog',
        TG_TABLE_NAME || ':' || TG_OP || '@' || extract(epoch FROM clock_timestamp())::text);
    RETURN NULL;
END $$;
