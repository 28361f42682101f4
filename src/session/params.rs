//! Client session settings: the startup parameters (and `options -c` settings) a client asked
//! for, carried onto its pooled backend connection as SET statements, since the backend's own
//! startup packet was the proxy's.

use crate::error::ClientError;

/// Startup parameters that are about the connection, not session settings.
const NOT_SETTINGS: &[&str] = &["user", "database", "options", "replication"];

/// Longest setting name Postgres accepts (NAMEDATALEN - 1).
const MAX_SETTING_NAME: usize = 63;

/// The settings a client asked for, in order: startup parameters first, then `options`.
pub fn client_settings(
    params: &[(String, String)],
    options: &[(String, String)],
) -> Result<Vec<(String, String)>, ClientError> {
    if let Some((_, v)) = params.iter().find(|(n, _)| n == "replication")
        && !matches!(v.as_str(), "false" | "off" | "no" | "0")
    {
        return Err(ClientError::unsupported(
            "replication connections are not supported by pgtenant",
        ));
    }
    let settings: Vec<(String, String)> = params
        .iter()
        .filter(|(n, _)| !NOT_SETTINGS.contains(&n.as_str()))
        .chain(options)
        .cloned()
        .collect();
    for (name, _) in &settings {
        let ok = !name.is_empty()
            && name.len() <= MAX_SETTING_NAME
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'.');
        if !ok {
            return Err(ClientError::protocol(format!(
                "invalid setting name \"{}\"",
                name.escape_debug()
            )));
        }
    }
    Ok(settings)
}

/// One SQL string setting every value that differs from what the backend reports (`current`
/// returns a reported value, `None` when it is not reported). Empty when nothing needs setting.
pub fn settings_sql<'a>(
    settings: &[(String, String)],
    current: impl Fn(&str) -> Option<&'a str>,
) -> String {
    let mut sql = String::new();
    for (name, value) in settings {
        if current(name) == Some(value.as_str()) {
            continue;
        }
        push_set(&mut sql, name, value);
        sql.push(';');
    }
    sql
}

/// Appends `SET name TO 'value'` (name already validated as a setting name).
pub(crate) fn push_set(sql: &mut String, name: &str, value: &str) {
    sql.push_str("SET ");
    sql.push_str(name);
    sql.push_str(" TO ");
    push_literal(sql, value);
}

/// Appends `value` as an E'' literal, which means the same whatever standard_conforming_strings is.
fn push_literal(sql: &mut String, value: &str) {
    sql.push_str("E'");
    for c in value.chars() {
        match c {
            '\'' => sql.push_str("''"),
            '\\' => sql.push_str("\\\\"),
            c => sql.push(c),
        }
    }
    sql.push('\'');
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect()
    }

    #[test]
    fn settings_skip_connection_params_and_check_names() {
        let s = client_settings(
            &p(&[
                ("user", "u"),
                ("database", "d"),
                ("application_name", "app"),
                ("options", "-c x=y"),
            ]),
            &p(&[("work_mem", "64kB")]),
        )
        .expect("valid");
        assert_eq!(s, p(&[("application_name", "app"), ("work_mem", "64kB")]));
        assert!(client_settings(&p(&[("bad name", "x")]), &[]).is_err());
        assert!(client_settings(&p(&[("x;drop table t", "x")]), &[]).is_err());
        assert_eq!(
            client_settings(&p(&[("replication", "database")]), &[]).map_err(|e| e.code),
            Err("0A000")
        );
        assert!(client_settings(&p(&[("replication", "false")]), &[]).is_ok());
    }

    #[test]
    fn sql_quotes_values_and_skips_current_ones() {
        let s = p(&[
            ("application_name", "it's \\ fine"),
            ("client_encoding", "UTF8"),
        ]);
        let sql = settings_sql(&s, |n| (n == "client_encoding").then_some("UTF8"));
        assert_eq!(sql, r"SET application_name TO E'it''s \\ fine';");
        assert_eq!(settings_sql(&s[1..], |_| Some("UTF8")), "");
    }
}
