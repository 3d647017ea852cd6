//! Stream tokens: a browser's `EventSource` cannot send headers, so a client with an API key
//! mints a short-lived token that opens one session's event stream of one tenant, as
//! `?token=…`, and nothing else. A token is `st1.<payload>.<mac>`: the base64url JSON payload
//! `{tenant, session, expires}` and its HMAC-SHA256 under the server's secret, so any api
//! process with the same secret accepts it without a database lookup.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::{DateTime, Duration, Utc};
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use uuid::Uuid;

use soma_contract::api::StreamToken;
use soma_core::Config;

const PREFIX: &str = "st1";

#[derive(Serialize, Deserialize)]
struct Payload {
    tenant: String,
    session: Uuid,
    /// Unix seconds.
    expires: i64,
}

/// Why a token does not open a stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenRefusal {
    /// Not a token this server made, or made for another session.
    Invalid,
    /// It was valid, and has expired: mint a new one and resume with `?after=`.
    Expired,
}

pub struct StreamTokens {
    key: Vec<u8>,
    ttl: Duration,
}

impl StreamTokens {
    pub fn from_config(config: &Config) -> Self {
        let key = if config.stream_token_secret.is_empty() {
            tracing::warn!(
                "stream_token_secret is not set: stream tokens work only on the api process that minted them"
            );
            let random: [u8; 32] = rand_bytes();
            random.to_vec()
        } else {
            config.stream_token_secret.expose().as_bytes().to_vec()
        };
        Self { key, ttl: Duration::seconds(config.stream_token_ttl_secs as i64) }
    }

    /// A token for reading `session` of `tenant` until `now` + the configured lifetime.
    pub fn mint(&self, tenant: &str, session: Uuid, now: DateTime<Utc>) -> StreamToken {
        let expires_at = now + self.ttl;
        let payload = Payload { tenant: tenant.to_string(), session, expires: expires_at.timestamp() };
        let payload = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&payload).expect("payload serializes"));
        let signed = format!("{PREFIX}.{payload}");
        let mac = URL_SAFE_NO_PAD.encode(self.mac(&signed).finalize().into_bytes());
        StreamToken { token: format!("{signed}.{mac}"), expires_at }
    }

    /// The tenant whose `session` the token opens, if it is valid for it at `now`.
    pub fn verify(&self, token: &str, session: Uuid, now: DateTime<Utc>) -> Result<String, TokenRefusal> {
        let (signed, mac) = token.rsplit_once('.').ok_or(TokenRefusal::Invalid)?;
        let (prefix, payload) = signed.split_once('.').ok_or(TokenRefusal::Invalid)?;
        let mac = URL_SAFE_NO_PAD.decode(mac).map_err(|_| TokenRefusal::Invalid)?;
        if prefix != PREFIX || self.mac(signed).verify_slice(&mac).is_err() {
            return Err(TokenRefusal::Invalid);
        }
        let payload = URL_SAFE_NO_PAD.decode(payload).map_err(|_| TokenRefusal::Invalid)?;
        let payload: Payload = serde_json::from_slice(&payload).map_err(|_| TokenRefusal::Invalid)?;
        if payload.session != session {
            return Err(TokenRefusal::Invalid);
        }
        if now.timestamp() >= payload.expires {
            return Err(TokenRefusal::Expired);
        }
        Ok(payload.tenant)
    }

    fn mac(&self, signed: &str) -> Hmac<Sha256> {
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.key).expect("HMAC takes any key length");
        mac.update(signed.as_bytes());
        mac
    }
}

/// 32 random bytes from the OS (through UUIDv4, which already depends on it).
fn rand_bytes() -> [u8; 32] {
    let mut bytes = [0u8; 32];
    bytes[..16].copy_from_slice(Uuid::new_v4().as_bytes());
    bytes[16..].copy_from_slice(Uuid::new_v4().as_bytes());
    bytes
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tokens(secret: &str) -> StreamTokens {
        StreamTokens::from_config(&Config {
            stream_token_secret: soma_core::Secret::new(secret),
            stream_token_ttl_secs: 60,
            ..Config::default()
        })
    }

    #[test]
    fn a_token_opens_its_session_only_until_it_expires() {
        let (tokens, session, now) = (tokens("s3cret"), Uuid::new_v4(), Utc::now());
        let minted = tokens.mint("acme", session, now);
        assert_eq!(tokens.verify(&minted.token, session, now), Ok("acme".into()));
        assert_eq!(tokens.verify(&minted.token, Uuid::new_v4(), now), Err(TokenRefusal::Invalid));
        assert_eq!(tokens.verify(&minted.token, session, minted.expires_at), Err(TokenRefusal::Expired));
    }

    #[test]
    fn a_forged_or_foreign_token_is_refused() {
        let (ours, session, now) = (tokens("s3cret"), Uuid::new_v4(), Utc::now());
        let foreign = tokens("other").mint("acme", session, now);
        assert_eq!(ours.verify(&foreign.token, session, now), Err(TokenRefusal::Invalid));
        // The payload changed to another tenant, the MAC kept.
        let minted = ours.mint("acme", session, now);
        let (_, rest) = minted.token.split_once('.').unwrap();
        let (_, mac) = rest.split_once('.').unwrap();
        let payload = Payload { tenant: "globex".into(), session, expires: now.timestamp() + 60 };
        let forged = format!("st1.{}.{mac}", URL_SAFE_NO_PAD.encode(serde_json::to_vec(&payload).unwrap()));
        assert_eq!(ours.verify(&forged, session, now), Err(TokenRefusal::Invalid));
        for garbage in ["", "st1", "st1..", "x.y.z", "st1.!!.!!"] {
            assert_eq!(ours.verify(garbage, session, now), Err(TokenRefusal::Invalid), "{garbage:?}");
        }
    }
}
