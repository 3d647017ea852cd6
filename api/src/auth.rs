//! API keys: configured as `tenant:sha256(key)`, so the config never holds a usable key.
//! A presented key (`X-API-Key`, or `Authorization: Bearer`) is hashed and compared with every
//! configured hash in constant time.

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use soma_core::Config;

use crate::{ApiContext, ApiError};

pub struct ApiKeys {
    entries: Vec<(String, [u8; 32])>,
}

impl ApiKeys {
    pub fn from_config(config: &Config) -> anyhow::Result<Self> {
        let mut entries = Vec::new();
        for entry in config.api_key_entries() {
            let (tenant, hash) = entry.map_err(anyhow::Error::msg)?;
            let bytes: [u8; 32] = hex::decode(hash)?
                .try_into()
                .map_err(|_| anyhow::anyhow!("api key hash for {tenant} is not 32 bytes"))?;
            entries.push((tenant.to_string(), bytes));
        }
        Ok(Self { entries })
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The tenant a key belongs to. Every entry is compared, match or not.
    pub fn tenant_for(&self, key: &str) -> Option<&str> {
        let hash: [u8; 32] = Sha256::digest(key.as_bytes()).into();
        let mut found = None;
        for (tenant, expected) in &self.entries {
            if bool::from(expected.ct_eq(&hash)) {
                found = Some(tenant.as_str());
            }
        }
        found
    }
}

/// The hex SHA-256 of a key, as `api_keys` stores it.
pub fn hash_key(key: &str) -> String {
    hex::encode(Sha256::digest(key.as_bytes()))
}

/// The caller's tenant, from its API key. Handlers that take it require a key.
#[derive(Debug, Clone)]
pub struct Tenant(pub String);

impl FromRequestParts<ApiContext> for Tenant {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, ctx: &ApiContext) -> Result<Self, ApiError> {
        let headers = &parts.headers;
        let key = headers
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
            .ok_or(ApiError::Unauthorized)?;
        ctx.keys.tenant_for(key).map(|t| Tenant(t.to_string())).ok_or(ApiError::Unauthorized)
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
        assert_eq!(keys.tenant_for("k-acme"), Some("acme"));
        assert_eq!(keys.tenant_for("k-globex"), Some("globex"));
        assert_eq!(keys.tenant_for("k-other"), None);
        assert_eq!(keys.tenant_for(""), None);
    }
}
