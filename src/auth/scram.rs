//! The server side of SCRAM-SHA-256 (RFC 5802/7677) against a stored verifier, I/O-free: feed it
//! the client's messages, send back what it returns. Proof checks are constant-time.

use std::fmt::Write as _;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use hmac::{Hmac, Mac};
use rand::RngCore;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

type HmacSha256 = Hmac<Sha256>;

/// A parsed `SCRAM-SHA-256$iterations:salt$StoredKey:ServerKey` verifier.
#[derive(Clone, PartialEq, Eq)]
pub struct ScramVerifier {
    /// PBKDF2 iterations.
    pub iterations: u32,
    /// Salt bytes.
    pub salt: Vec<u8>,
    /// H(ClientKey).
    pub stored_key: [u8; 32],
    /// HMAC(SaltedPassword, "Server Key").
    pub server_key: [u8; 32],
}

impl std::fmt::Debug for ScramVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ScramVerifier(***)")
    }
}

impl ScramVerifier {
    /// Parses the text form Postgres stores in `pg_authid.rolpassword`.
    pub fn parse(s: &str) -> Option<Self> {
        let rest = s.strip_prefix("SCRAM-SHA-256$")?;
        let (params, keys) = rest.split_once('$')?;
        let (iter, salt) = params.split_once(':')?;
        let (stored, server) = keys.split_once(':')?;
        let iterations: u32 = iter.parse().ok().filter(|&i| i > 0)?;
        let salt = B64.decode(salt).ok().filter(|s| !s.is_empty())?;
        let stored_key = B64.decode(stored).ok()?.try_into().ok()?;
        let server_key = B64.decode(server).ok()?.try_into().ok()?;
        Some(ScramVerifier {
            iterations,
            salt,
            stored_key,
            server_key,
        })
    }

    /// A verifier no password matches, shaped like a real one for `user`, so that an unknown user
    /// goes through the same exchange as a known one and cannot be told apart.
    pub fn decoy(user: &str, key: &[u8; 32]) -> Self {
        let mut mac = HmacSha256::new_from_slice(key).expect("HMAC takes keys of any length");
        mac.update(user.as_bytes());
        let salt = mac.finalize().into_bytes()[..16].to_vec();
        let mut stored_key = [0u8; 32];
        let mut server_key = [0u8; 32];
        rand::rng().fill_bytes(&mut stored_key);
        rand::rng().fill_bytes(&mut server_key);
        ScramVerifier {
            iterations: 4096,
            salt,
            stored_key,
            server_key,
        }
    }
}

/// Why an exchange failed. Every variant ends as 28P01 for the client.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScramError {
    /// The client's message does not follow RFC 5802.
    #[error("malformed SCRAM message: {0}")]
    Malformed(&'static str),
    /// Channel binding or an authorization identity, which pgtenant does not offer.
    #[error("unsupported SCRAM feature: {0}")]
    Unsupported(&'static str),
    /// The proof does not match the verifier.
    #[error("SCRAM proof does not match")]
    WrongProof,
}

/// The exchange after the server-first message, waiting for client-final.
pub struct ScramServer<'a> {
    verifier: &'a ScramVerifier,
    gs2_header: String,
    client_first_bare: String,
    server_first: String,
    nonce: String,
}

impl<'a> ScramServer<'a> {
    /// Takes client-first, returns the exchange and the server-first message to send.
    pub fn start(
        verifier: &'a ScramVerifier,
        client_first: &[u8],
    ) -> Result<(Self, String), ScramError> {
        let msg =
            std::str::from_utf8(client_first).map_err(|_| ScramError::Malformed("not UTF-8"))?;
        let (cbind, rest) = msg
            .split_once(',')
            .ok_or(ScramError::Malformed("no GS2 header"))?;
        match cbind {
            "n" | "y" => {}
            c if c.starts_with("p=") => return Err(ScramError::Unsupported("channel binding")),
            _ => return Err(ScramError::Malformed("bad channel binding flag")),
        }
        let (authzid, bare) = rest
            .split_once(',')
            .ok_or(ScramError::Malformed("no GS2 header"))?;
        if !authzid.is_empty() {
            return Err(ScramError::Unsupported("authorization identity"));
        }
        let mut attrs = bare.split(',');
        if !attrs.next().is_some_and(|a| a.starts_with("n=")) {
            return Err(ScramError::Malformed("no user attribute"));
        }
        let client_nonce = attrs
            .next()
            .and_then(|a| a.strip_prefix("r="))
            .filter(|n| !n.is_empty() && n.bytes().all(|b| (0x21..=0x7e).contains(&b) && b != b','))
            .ok_or(ScramError::Malformed("bad nonce"))?;
        let mut server_nonce = [0u8; 18];
        rand::rng().fill_bytes(&mut server_nonce);
        // Built by appending, not `format!`: with `auth_message` and server-final, about 3,000
        // instructions a login less (`CONNECT=1 bash benches/instructions.sh`).
        let mut nonce = String::with_capacity(client_nonce.len() + 24);
        nonce.push_str(client_nonce);
        B64.encode_string(server_nonce, &mut nonce);
        let mut server_first = String::with_capacity(nonce.len() + 64);
        server_first.push_str("r=");
        server_first.push_str(&nonce);
        server_first.push_str(",s=");
        B64.encode_string(&verifier.salt, &mut server_first);
        let _ = write!(server_first, ",i={}", verifier.iterations);
        let exchange = ScramServer {
            verifier,
            // The authorization identity is empty (refused above otherwise).
            gs2_header: [cbind, ",,"].concat(),
            client_first_bare: bare.to_owned(),
            server_first: server_first.clone(),
            nonce,
        };
        Ok((exchange, server_first))
    }

    /// Takes client-final; on a matching proof returns server-final (`v=…`) to send.
    pub fn finish(self, client_final: &[u8]) -> Result<String, ScramError> {
        let msg =
            std::str::from_utf8(client_final).map_err(|_| ScramError::Malformed("not UTF-8"))?;
        let (without_proof, proof) = msg
            .rsplit_once(",p=")
            .ok_or(ScramError::Malformed("no proof"))?;
        let mut attrs = without_proof.split(',');
        let cbind = attrs
            .next()
            .and_then(|a| a.strip_prefix("c="))
            .ok_or(ScramError::Malformed("no binding"))?;
        if B64.decode(cbind).ok().as_deref() != Some(self.gs2_header.as_bytes()) {
            return Err(ScramError::Malformed("channel binding does not match"));
        }
        let nonce = attrs
            .next()
            .and_then(|a| a.strip_prefix("r="))
            .ok_or(ScramError::Malformed("no nonce"))?;
        if nonce.as_bytes().ct_eq(self.nonce.as_bytes()).unwrap_u8() == 0 {
            return Err(ScramError::Malformed("nonce does not match"));
        }
        let proof: [u8; 32] = B64
            .decode(proof)
            .ok()
            .and_then(|p| p.try_into().ok())
            .ok_or(ScramError::Malformed("bad proof encoding"))?;
        let auth_message = [
            &self.client_first_bare,
            ",",
            &self.server_first,
            ",",
            without_proof,
        ]
        .concat();
        let client_signature = hmac(&self.verifier.stored_key, auth_message.as_bytes());
        let mut client_key = proof;
        for (k, s) in client_key.iter_mut().zip(client_signature) {
            *k ^= s;
        }
        let computed_stored: [u8; 32] = Sha256::digest(client_key).into();
        if computed_stored.ct_eq(&self.verifier.stored_key).unwrap_u8() == 0 {
            return Err(ScramError::WrongProof);
        }
        let server_signature = hmac(&self.verifier.server_key, auth_message.as_bytes());
        let mut server_final = String::with_capacity(46);
        server_final.push_str("v=");
        B64.encode_string(server_signature, &mut server_final);
        Ok(server_final)
    }
}

fn hmac(key: &[u8], data: &[u8]) -> [u8; 32] {
    let mut mac = HmacSha256::new_from_slice(key).expect("HMAC takes keys of any length");
    mac.update(data);
    mac.finalize().into_bytes().into()
}

#[cfg(test)]
mod tests {
    use super::*;
    use postgres_protocol::authentication::sasl::{ChannelBinding, ScramSha256};

    fn run(verifier: &ScramVerifier, password: &str) -> Result<(), ScramError> {
        let mut client = ScramSha256::new(password.as_bytes(), ChannelBinding::unsupported());
        let (server, server_first) = ScramServer::start(verifier, client.message())?;
        client
            .update(server_first.as_bytes())
            .map_err(|_| ScramError::Malformed("client rejected"))?;
        let server_final = server.finish(client.message())?;
        client
            .finish(server_final.as_bytes())
            .map_err(|_| ScramError::Malformed("client rejected final"))
    }

    #[test]
    fn real_client_authenticates_against_real_verifier() {
        let v = ScramVerifier::parse(&postgres_protocol::password::scram_sha_256(b"s3cret"))
            .expect("parses");
        assert_eq!(run(&v, "s3cret"), Ok(()));
        assert_eq!(run(&v, "wrong"), Err(ScramError::WrongProof));
    }

    #[test]
    fn decoy_never_matches() {
        let v = ScramVerifier::decoy("nobody", &[7; 32]);
        assert_eq!(run(&v, ""), Err(ScramError::WrongProof));
        assert_eq!(
            ScramVerifier::decoy("nobody", &[7; 32]).salt,
            v.salt,
            "same user, same salt"
        );
    }

    #[test]
    fn verifier_parsing() {
        for bad in [
            "",
            "SCRAM-SHA-256$",
            "SCRAM-SHA-256$0:c2FsdA==$AAAA:AAAA",
            "md5abc",
            "SCRAM-SHA-256$4096:c2FsdA==$AAAA:AAAA",
        ] {
            assert!(ScramVerifier::parse(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn malformed_client_messages_are_rejected() {
        let v = ScramVerifier::parse(&postgres_protocol::password::scram_sha_256(b"x"))
            .expect("parses");
        for bad in [
            &b""[..],
            b"n",
            b"n,,",
            b"p=tls-server-end-point,,n=,r=abc",
            b"n,a=bob,n=,r=abc",
            b"n,,n=,r=",
            b"\xff",
        ] {
            assert!(ScramServer::start(&v, bad).is_err(), "{bad:?}");
        }
        let (server, _) = ScramServer::start(&v, b"n,,n=,r=abc").expect("valid first");
        assert!(server.finish(b"c=biws,r=abc,p=AAAA").is_err());
    }
}
