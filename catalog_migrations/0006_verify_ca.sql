-- pgtenant catalog, version 6: tls_mode verify-ca (libpq's: the certificate chain is checked
-- against tls_ca_file, the host name is not).

ALTER TABLE pgtenant.servers
    DROP CONSTRAINT servers_tls_mode_check,
    ADD CONSTRAINT servers_tls_mode_check
        CHECK (tls_mode IN ('disable', 'prefer', 'require', 'verify-ca', 'verify-full')),
    DROP CONSTRAINT servers_verify_full_needs_ca,
    ADD CONSTRAINT servers_verification_needs_ca
        CHECK (tls_mode NOT IN ('verify-ca', 'verify-full') OR coalesce(tls_ca_file, '') <> '');
