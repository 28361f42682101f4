//! Authentication on both legs. Clients prove themselves against the tenant user's stored
//! verifier ([`client`]); the proxy logs in to backends with the server's configured role
//! ([`backend`]). Plaintext passwords are never stored, logged or compared.

pub mod backend;
pub mod client;
pub mod scram;

use md5::{Digest, Md5};
use subtle::ConstantTimeEq;

pub use scram::ScramVerifier;

/// A tenant user's stored password: what Postgres itself would keep in `pg_authid`.
#[derive(Clone, PartialEq, Eq)]
pub enum StoredPassword {
    /// A SCRAM-SHA-256 verifier.
    Scram(ScramVerifier),
    /// `md5` followed by hex(md5(password || user)).
    Md5(String),
}

impl std::fmt::Debug for StoredPassword {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            StoredPassword::Scram(_) => "Scram(***)",
            StoredPassword::Md5(_) => "Md5(***)",
        })
    }
}

impl StoredPassword {
    /// Parses a stored hash; `None` for anything else (plaintext included).
    pub fn parse(s: &str) -> Option<Self> {
        if let Some(v) = ScramVerifier::parse(s) {
            return Some(StoredPassword::Scram(v));
        }
        let hex = s.strip_prefix("md5")?;
        (hex.len() == 32
            && hex
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)))
        .then(|| StoredPassword::Md5(hex.to_owned()))
    }
}

/// Checks an md5 PasswordMessage (`md5` + hex(md5(stored_hex || salt))) in constant time.
pub fn md5_response_matches(stored_hex: &str, salt: [u8; 4], response: &[u8]) -> bool {
    let mut h = Md5::new();
    h.update(stored_hex.as_bytes());
    h.update(salt);
    let expected = format!("md5{:x}", h.finalize());
    expected.as_bytes().ct_eq(response).unwrap_u8() == 1
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn md5_matches_what_libpq_sends() {
        let stored = postgres_protocol::password::md5(b"pw", "app");
        let Some(StoredPassword::Md5(hex)) = StoredPassword::parse(&stored) else {
            panic!("md5 hash parses")
        };
        let salt = [1, 2, 3, 4];
        let sent = postgres_protocol::authentication::md5_hash(b"app", b"pw", salt);
        assert!(md5_response_matches(&hex, salt, sent.as_bytes()));
        let wrong = postgres_protocol::authentication::md5_hash(b"app", b"nope", salt);
        assert!(!md5_response_matches(&hex, salt, wrong.as_bytes()));
    }

    #[test]
    fn plaintext_is_not_a_stored_password() {
        for s in [
            "secret",
            "md5",
            "md5XYZ",
            "md5d41d8cd98f00b204e9800998ecf8427",
        ] {
            assert!(StoredPassword::parse(s).is_none(), "{s}");
        }
    }
}
