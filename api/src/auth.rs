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

/// An operator, authenticated by an admin key (`admin_api_keys`): the admin routes, across
/// tenants. Admin keys and tenant keys are separate lists, so neither opens the other's routes.
#[derive(Debug, Clone)]
pub struct Admin {
    /// Who acted, as audit rows name it: `admin:{name}`.
    pub subject: String,
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
    /// Admin keys: `tenant_id` holds the admin's name.
    admins: Vec<KeyEntry>,
}

fn key_entries<'a>(entries: impl Iterator<Item = Result<(&'a str, &'a str), String>>) -> anyhow::Result<Vec<KeyEntry>> {
    let mut parsed = Vec::new();
    for entry in entries {
        let (owner, hash) = entry.map_err(anyhow::Error::msg)?;
        let hash: [u8; 32] =
            hex::decode(hash)?.try_into().map_err(|_| anyhow::anyhow!("api key hash for {owner} is not 32 bytes"))?;
        parsed.push(KeyEntry { tenant_id: owner.to_string(), hash });
    }
    Ok(parsed)
}

/// The entry `key` matches; every entry is compared, match or not.
fn matching<'a>(entries: &'a [KeyEntry], key: &str) -> Option<&'a KeyEntry> {
    let hash: [u8; 32] = Sha256::digest(key.as_bytes()).into();
    let mut found = None;
    for entry in entries {
        if bool::from(entry.hash.ct_eq(&hash)) {
            found = Some(entry);
        }
    }
    found
}

impl ApiKeys {
    pub fn from_config(config: &Config) -> anyhow::Result<Self> {
        Ok(Self { entries: key_entries(config.api_key_entries())?, admins: key_entries(config.admin_key_entries())? })
    }

    /// The operator an admin key stands for.
    pub fn admin_for(&self, key: &str) -> Option<Admin> {
        matching(&self.admins, key).map(|entry| Admin { subject: format!("admin:{}", entry.tenant_id) })
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The principal a key stands for. Every entry is compared, match or not.
    pub fn principal_for(&self, key: &str) -> Option<Principal> {
        matching(&self.entries, key).map(|entry| Principal {
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

/// Admin routes require an admin key.
impl FromRequestParts<ApiContext> for Admin {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, ctx: &ApiContext) -> Result<Self, ApiError> {
        let key = presented_key(parts).ok_or(ApiError::Unauthorized)?;
        ctx.keys.admin_for(key).ok_or(ApiError::Unauthorized)
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

    #[test]
    fn admin_keys_and_tenant_keys_open_only_their_own_routes() {
        let config = Config {
            api_keys: format!("acme:{}", hash_key("k-acme")),
            admin_api_keys: format!("ops:{}", hash_key("k-ops")),
            ..Config::default()
        };
        let keys = ApiKeys::from_config(&config).unwrap();
        assert_eq!(keys.admin_for("k-ops").unwrap().subject, "admin:ops");
        assert!(keys.admin_for("k-acme").is_none());
        assert!(keys.principal_for("k-ops").is_none());
    }
}
