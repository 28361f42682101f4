//! Finding the tenant in a startup packet: a pure function of the startup parameters and the
//! configured strategies, so it is table-tested without a socket.

use crate::config::ResolveStrategy;
use crate::error::ClientError;

/// The option name that carries a tenant in `options=-c pgtenant.tenant=…`.
pub const TENANT_OPTION: &str = "pgtenant.tenant";

/// Outcome of resolution.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolved {
    /// Tenant slug (not yet checked against the catalog).
    pub tenant: String,
    /// User name with any tenant suffix removed.
    pub user: String,
    /// `-c name=value` settings from `options`, with `pgtenant.*` removed, for the backend.
    pub settings: Vec<(String, String)>,
}

/// The TLS server name a client sent, and the domain under which a first label names a tenant.
#[derive(Debug, Clone, Copy)]
pub struct TlsServerName<'a> {
    /// The host name from the ClientHello.
    pub host: &'a str,
    /// `db.example.com`: `acme.db.example.com` names tenant `acme`.
    pub suffix: &'a str,
}

/// `acme.db.example.com` under `db.example.com` → `acme`; a name outside the domain, or with
/// more than one label in front of it, names nobody.
pub fn tenant_from_sni(host: &str, suffix: &str) -> Option<String> {
    let host = host.trim_end_matches('.').to_ascii_lowercase();
    let suffix = suffix.trim_matches('.').to_ascii_lowercase();
    if suffix.is_empty() {
        return None;
    }
    let label = host.strip_suffix(&suffix)?.strip_suffix('.')?;
    (!label.is_empty() && !label.contains('.')).then(|| label.to_owned())
}

/// Resolves the tenant from startup `params`. Every strategy that yields a tenant must agree;
/// the first one in `strategies` wins otherwise.
pub fn resolve(
    params: &[(String, String)],
    strategies: &[ResolveStrategy],
    sni: Option<TlsServerName<'_>>,
) -> Result<Resolved, ClientError> {
    let get = |name: &str| {
        params
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    };
    let raw_user = get("user").unwrap_or_default();
    let options = parse_options(get("options").unwrap_or_default())?;
    let mut user = raw_user.to_owned();
    let mut found: Option<(&'static str, String)> = None;
    for strategy in strategies {
        let candidate = match strategy {
            ResolveStrategy::Database => get("database")
                // libpq sends the user name as the database when none is given; for `app.acme`
                // that default is not a tenant name.
                .filter(|db| {
                    !(db.is_empty() || (*db == raw_user && split_user(raw_user).is_some()))
                })
                .map(|db| ("database name", db.to_owned())),
            ResolveStrategy::UserSuffix => split_user(raw_user).map(|(name, tenant)| {
                user = name.to_owned();
                ("user name suffix", tenant.to_owned())
            }),
            ResolveStrategy::Options => options
                .iter()
                .find(|(n, _)| n == TENANT_OPTION)
                .map(|(_, v)| ("options parameter", v.clone())),
            ResolveStrategy::Sni => sni
                .and_then(|s| tenant_from_sni(s.host, s.suffix))
                .map(|t| ("TLS server name", t)),
        };
        match (&found, candidate) {
            (_, None) => {}
            (None, Some(c)) => found = Some(c),
            (Some(first), Some(c)) if first.1 != c.1 => {
                return Err(ClientError::conflicting_tenants(
                    (first.0, &first.1),
                    (c.0, &c.1),
                ));
            }
            (Some(_), Some(_)) => {}
        }
    }
    let Some((_, tenant)) = found else {
        return Err(ClientError::no_tenant());
    };
    let settings = options
        .into_iter()
        .filter(|(n, _)| !n.starts_with("pgtenant."))
        .collect();
    Ok(Resolved {
        tenant,
        user,
        settings,
    })
}

/// Splits `user.tenant` at the last dot, when both sides are non-empty.
fn split_user(raw: &str) -> Option<(&str, &str)> {
    raw.rsplit_once('.')
        .filter(|(name, tenant)| !name.is_empty() && !tenant.is_empty())
}

/// Parses the `options` startup parameter the way the backend does: whitespace-separated
/// switches, `\` escaping the next character; only `-c name=value` and `--name=value` carry
/// settings, anything else is refused.
pub fn parse_options(options: &str) -> Result<Vec<(String, String)>, ClientError> {
    let mut words = Vec::new();
    let mut word = String::new();
    let mut chars = options.chars();
    let mut in_word = false;
    while let Some(c) = chars.next() {
        match c {
            '\\' => {
                if let Some(n) = chars.next() {
                    word.push(n);
                }
                in_word = true;
            }
            c if c.is_whitespace() => {
                if in_word {
                    words.push(std::mem::take(&mut word));
                    in_word = false;
                }
            }
            c => {
                word.push(c);
                in_word = true;
            }
        }
    }
    if in_word {
        words.push(word);
    }
    let bad = |w: &str| {
        ClientError::protocol(format!(
            "unsupported switch in options: \"{}\"",
            w.escape_debug()
        ))
        .with_hint("Only -c name=value and --name=value are accepted in options.")
    };
    let mut out = Vec::new();
    let mut it = words.into_iter();
    while let Some(w) = it.next() {
        let setting = if w == "-c" {
            it.next().ok_or_else(|| bad("-c"))?
        } else if let Some(s) = w.strip_prefix("--") {
            s.to_owned()
        } else if let Some(s) = w.strip_prefix("-c") {
            s.to_owned()
        } else {
            return Err(bad(&w));
        };
        let Some((name, value)) = setting.split_once('=') else {
            return Err(bad(&setting));
        };
        // The backend treats '-' and '_' alike in option names.
        out.push((name.replace('-', "_"), value.to_owned()));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ResolveStrategy::*;

    fn params(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect()
    }

    #[test]
    fn resolution_table() {
        let all = [Database, UserSuffix, Options];
        let ok = |t: &str, u: &str| Ok::<_, &'static str>((t.to_owned(), u.to_owned()));
        type Case<'a> = (
            &'a [(&'a str, &'a str)],
            &'a [ResolveStrategy],
            Result<(String, String), &'static str>,
        );
        let cases: Vec<Case> = vec![
            (
                &[("user", "app"), ("database", "acme")],
                &all,
                ok("acme", "app"),
            ),
            (&[("user", "app.acme")], &all, ok("acme", "app")),
            (
                &[("user", "app.acme"), ("database", "app.acme")],
                &all,
                ok("acme", "app"),
            ),
            (
                &[("user", "app.acme"), ("database", "acme")],
                &all,
                ok("acme", "app"),
            ),
            (
                &[("user", "first.last.acme"), ("database", "acme")],
                &all,
                ok("acme", "first.last"),
            ),
            (
                &[("user", "app"), ("options", "-c pgtenant.tenant=acme")],
                &all,
                ok("acme", "app"),
            ),
            (
                &[("user", "app"), ("options", "--pgtenant.tenant=acme")],
                &all,
                ok("acme", "app"),
            ),
            (
                &[("user", "app.globex"), ("database", "acme")],
                &all,
                Err("08004"),
            ),
            (
                &[
                    ("user", "app"),
                    ("database", "acme"),
                    ("options", "-c pgtenant.tenant=globex"),
                ],
                &all,
                Err("08004"),
            ),
            (&[("user", "app")], &all, Err("3D000")),
            // A tenant may share its name with the user.
            (
                &[("user", "app"), ("database", "app")],
                &all,
                ok("app", "app"),
            ),
            (&[("user", ".acme")], &all, Err("3D000")),
            (&[("user", "app.")], &all, Err("3D000")),
            // A disabled strategy is ignored entirely.
            (
                &[("user", "app.acme"), ("database", "globex")],
                &[Database],
                ok("globex", "app.acme"),
            ),
            (
                &[("user", "app.acme"), ("database", "globex")],
                &[UserSuffix],
                ok("acme", "app"),
            ),
            (&[("user", "app"), ("options", "-x")], &all, Err("08P01")),
        ];
        for (p, strategies, want) in cases {
            let got = resolve(&params(p), strategies, None)
                .map(|r| (r.tenant, r.user))
                .map_err(|e| e.code);
            assert_eq!(got, want, "{p:?} with {strategies:?}");
        }
    }

    #[test]
    fn sni_names_a_tenant_under_the_configured_domain() {
        for (host, want) in [
            ("acme.db.example.com", Some("acme")),
            ("ACME.DB.Example.com.", Some("acme")),
            ("db.example.com", None),
            ("a.b.db.example.com", None),
            ("acme.db.example.org", None),
            ("acmedb.example.com", None),
            ("localhost", None),
        ] {
            assert_eq!(
                tenant_from_sni(host, "db.example.com").as_deref(),
                want,
                "{host}"
            );
        }
        assert_eq!(tenant_from_sni("acme.db.example.com", ""), None);
        let sni = TlsServerName {
            host: "acme.db.example.com",
            suffix: "db.example.com",
        };
        let p = params(&[("user", "app"), ("database", "globex")]);
        let r = resolve(&p, &[Sni], Some(sni)).expect("resolves");
        assert_eq!(r.tenant, "acme");
        let conflict = resolve(&p, &[Database, Sni], Some(sni)).expect_err("disagree");
        assert_eq!(conflict.code, "08004");
        // Without TLS the strategy says nothing.
        let r = resolve(&p, &[Database, Sni], None).expect("resolves");
        assert_eq!(r.tenant, "globex");
    }

    #[test]
    fn options_parsing() {
        let got =
            parse_options(r"-c search_path=a\ b  --statement-timeout=5s -capplication_name=x")
                .expect("valid");
        assert_eq!(
            got,
            vec![
                ("search_path".into(), "a b".into()),
                ("statement_timeout".into(), "5s".into()),
                ("application_name".into(), "x".into())
            ]
        );
        assert!(parse_options("-c").is_err());
        assert!(parse_options("-c novalue").is_err());
        assert!(parse_options("").expect("empty").is_empty());
    }

    #[test]
    fn settings_drop_pgtenant_options() {
        let r = resolve(
            &params(&[
                ("user", "app"),
                ("options", "-c pgtenant.tenant=acme -c work_mem=64kB"),
            ]),
            &[Options],
            None,
        )
        .expect("resolves");
        assert_eq!(
            r.settings,
            vec![("work_mem".to_string(), "64kB".to_string())]
        );
    }
}
