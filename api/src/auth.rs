//! Who is calling. API keys are configured as `tenant:sha256(key)`, so the config never holds
//! a usable key; a presented key (`X-API-Key`, or `Authorization: Bearer`) is hashed and
//! compared with every configured hash in constant time. A caller becomes a [`Principal`]:
//! its tenant, a subject the audit log names, and what it may do.

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use soma_core::Config;

use crate::{ApiContext, ApiError};

/// What a principal may do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scope {
    /// Every call on its tenant's sessions: what an API key grants.
    Tenant,
}

/// An authenticated caller.
#[derive(Debug, Clone)]
pub struct Principal {
    pub tenant_id: String,
    /// Who acted, as audit rows name it: `key:<first 12 hex digits of the key's hash>`.
    pub subject: String,
    pub scopes: Vec<Scope>,
}

struct KeyEntry {
    tenant_id: String,
    hash: [u8; 32],
}

pub struct ApiKeys {
    entries: Vec<KeyEntry>,
}

impl ApiKeys {
    pub fn from_config(config: &Config) -> anyhow::Result<Self> {
        let mut entries = Vec::new();
        for entry in config.api_key_entries() {
            let (tenant, hash) = entry.map_err(anyhow::Error::msg)?;
            let hash: [u8; 32] = hex::decode(hash)?
                .try_into()
                .map_err(|_| anyhow::anyhow!("api key hash for {tenant} is not 32 bytes"))?;
            entries.push(KeyEntry { tenant_id: tenant.to_string(), hash });
        }
        Ok(Self { entries })
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The principal a key stands for. Every entry is compared, match or not.
    pub fn principal_for(&self, key: &str) -> Option<Principal> {
        let hash: [u8; 32] = Sha256::digest(key.as_bytes()).into();
        let mut found = None;
        for entry in &self.entries {
            if bool::from(entry.hash.ct_eq(&hash)) {
                found = Some(entry);
            }
        }
        found.map(|entry| Principal {
            tenant_id: entry.tenant_id.clone(),
            subject: format!("key:{}", &hex::encode(entry.hash)[..12]),
            scopes: vec![Scope::Tenant],
        })
    }
}

/// The hex SHA-256 of a key, as `api_keys` stores it.
pub fn hash_key(key: &str) -> String {
    hex::encode(Sha256::digest(key.as_bytes()))
}

/// The key a request presents, if any.
fn presented_key(parts: &Parts) -> Option<&str> {
    let headers = &parts.headers;
    headers
        .get("x-api-key")
        .and_then(|v| v.to_str().ok())
        .or_else(|| {
            headers
                .get(axum::http::header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.strip_prefix("Bearer "))
        })
        .map(str::trim)
        .filter(|k| !k.is_empty())
}

/// Handlers that take a `Principal` require a valid API key.
impl FromRequestParts<ApiContext> for Principal {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, ctx: &ApiContext) -> Result<Self, ApiError> {
        let key = presented_key(parts).ok_or(ApiError::Unauthorized)?;
        ctx.keys.principal_for(key).ok_or(ApiError::Unauthorized)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_map_to_their_tenant_only() {
        let config = Config {
            api_keys: format!("acme:{},globex:{}", hash_key("k-acme"), hash_key("k-globex")),
            ..Config::default()
        };
        let keys = ApiKeys::from_config(&config).unwrap();
        let acme = keys.principal_for("k-acme").unwrap();
        assert_eq!(acme.tenant_id, "acme");
        assert_eq!(acme.subject, format!("key:{}", &hash_key("k-acme")[..12]));
        assert_eq!(keys.principal_for("k-globex").unwrap().tenant_id, "globex");
        assert!(keys.principal_for("k-other").is_none());
        assert!(keys.principal_for("").is_none());
    }
}
