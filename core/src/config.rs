//! One configuration type, loaded in layers: defaults → optional TOML file → `SOMA_*`
//! environment variables (plus the conventional `DATABASE_URL` and `TEMPORAL_ADDRESS`).
//! Secrets are [`Secret`]s, which never print.

use std::fmt;
use std::path::Path;

use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use serde::{Deserialize, Serialize};

use crate::schedules::ScheduleConfig;

/// A value that must not appear in logs or `--print-config` output.
#[derive(Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.0.is_empty() { "\"\"" } else { "\"********\"" })
    }
}

impl Serialize for Secret {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(if self.0.is_empty() { "" } else { "********" })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Human,
    Json,
}

/// Which memory backend the engine writes to and recalls from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum MemoryBackendKind {
    /// Built in: the `memories` table, full-text search.
    #[default]
    Postgres,
    /// The platform's memory service over HTTP.
    Somabrain,
}

/// The effective configuration of an api or worker process.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Where the HTTP API listens.
    pub listen_addr: String,
    /// Postgres connection URL (may hold a password, hence secret).
    pub database_url: Secret,
    pub database_max_connections: u32,
    /// Temporal frontend, `host:port`.
    pub temporal_address: String,
    pub temporal_namespace: String,
    /// Task queue the chat workflows and activities run on.
    pub task_queue: String,
    /// Where a worker takes chat turns' starts from the api (`host:port`, HTTP), to start them
    /// eagerly: Temporal hands the turn's first workflow task back in the start response, to
    /// the worker that asked, instead of dispatching it through the task queue. The worker
    /// listens here (unless another process on the host already does); the api sends each
    /// turn's start here and, when no worker answers, starts the turn itself. Empty: the api
    /// starts every turn itself. It takes no key (a request names a stored turn, whose own
    /// workflow is all it can start): bind it to loopback or a private network.
    pub eager_start_addr: String,
    /// OpenAI-compatible base URL (…/v1) of the LLM provider. The worker needs one.
    pub llm_base_url: String,
    /// The provider's key; empty for a keyless provider.
    pub llm_api_key: Secret,
    pub llm_model: String,
    /// A provider stream silent for this long (before its first token too) has stalled: the
    /// attempt fails and is retried.
    pub llm_stall_timeout_ms: u64,
    /// Delta coalescing window before `llm.delta` events are written.
    pub delta_coalesce_ms: u64,
    /// Rounds of tool calls one chat turn may make (the model is offered no tools after them).
    pub max_tool_rounds: u32,
    /// Directory of the Rego policies (`*.rego`, deciding `data.soma.allow`), evaluated
    /// in-process unless `policy_opa_url` is set.
    pub policy_dir: String,
    /// An OPA server to ask instead (`POST {url}/v1/data/soma/allow`); empty: in-process.
    pub policy_opa_url: String,
    /// Tools that always wait for a person's approval here, whatever the catalog says, comma
    /// separated (a deployment's rule, e.g. `http_fetch`).
    pub approval_required_tools: String,
    /// Hosts the `http_fetch` tool may reach, comma separated; none by default.
    pub tool_fetch_allowlist: String,
    /// Signs HTTP tools' requests (`X-Soma-Signature`).
    pub tool_hmac_secret: Secret,
    /// MCP servers whose tools join the catalog, as `name=url` (streamable HTTP), comma
    /// separated; their tools are named `{name}__{tool}`.
    pub mcp_servers: String,
    /// The memory backend: `postgres` (built in, full-text search) or `somabrain` (the
    /// platform's memory service at `somabrain_url`).
    pub memory_backend: MemoryBackendKind,
    /// SomaBrain's base URL (e.g. `http://somabrain:30101`).
    pub somabrain_url: String,
    /// SomaBrain's bearer token.
    pub somabrain_token: Secret,
    /// The memory namespace every write and recall uses (part of each memory's key).
    pub memory_namespace: String,
    /// How many memories a turn recalls at most…
    pub memory_recall_top_k: u32,
    /// …within this many tokens of prompt (about 4 characters each).
    pub memory_recall_token_budget: u32,
    /// A turn's recall waiting longer than this goes on without memories (and says so).
    pub memory_recall_timeout_ms: u64,
    /// The text of a clean file a message carries is remembered with the message.
    pub memory_remember_attachments: bool,
    /// A memory write's retries back off exponentially up to this interval…
    pub memory_retry_max_interval_secs: u64,
    /// …for at most this long in all, then the write becomes a dead letter. The default rides
    /// out a backend outage of an hour.
    pub memory_retry_budget_secs: u64,
    /// Admin API keys as `name:sha256_hex_of_key`, comma separated: dead letters and other
    /// operations across tenants.
    pub admin_api_keys: String,
    /// clamd's TCP address (`host:port`): every uploaded file is scanned there before anyone
    /// can read it.
    pub clamd_address: String,
    /// clamd's `StreamMaxLength`: a larger file is quarantined as too large to scan, without
    /// sending it. Keep the two equal.
    pub clamd_stream_max_bytes: u64,
    /// The S3 endpoint clean attachments above `attachment_inline_max_bytes` are kept in; empty:
    /// AWS S3 itself.
    pub s3_endpoint: String,
    pub s3_bucket: String,
    pub s3_region: String,
    pub s3_access_key_id: String,
    pub s3_secret_access_key: Secret,
    /// A clean attachment up to this size is kept in its Postgres row; a larger one in S3.
    pub attachment_inline_max_bytes: u64,
    /// How much of a clean text-like file's text (text, Markdown, JSON, CSV) is kept for the
    /// messages that carry it.
    pub attachment_text_max_bytes: usize,
    /// The largest upload (tus `Tus-Max-Size`); larger ones get 413.
    pub upload_max_bytes: u64,
    /// The largest plain multipart upload; larger files go over tus.
    pub upload_multipart_max_bytes: u64,
    /// Uploads one tenant may have in progress at once (tus uploads not yet complete).
    pub upload_max_in_progress: u32,
    /// An unfinished upload expires this long after its creation (tus `Upload-Expires`).
    pub upload_expiry_secs: u64,
    /// Received bytes are stored in chunks of at most this size, each durable once stored.
    pub upload_chunk_bytes: usize,
    /// A tus upload's scan reads its chunks as they are stored; when no byte comes for this
    /// long it lets go (of clamd's connection and a worker slot) and scans the file from its
    /// first byte once the rest is in. Keep it below clamd's `ReadTimeout` (120 s by default).
    pub upload_follow_patience_ms: u64,
    /// The periodic jobs, as Temporal Schedules; each worker creates or updates them when it
    /// starts (`[[schedules]]` tables in the config file replace the whole list).
    pub schedules: Vec<ScheduleConfig>,
    /// A session untouched for this long is deleted with everything it owns (cleanup-sessions).
    pub session_retention_secs: u64,
    /// Deleting a session (by its user or by cleanup-sessions) also deletes its memories.
    /// Off by default: memories outlive their session. Built-in backend only (SomaBrain's API
    /// has no delete route).
    pub forget_memories_with_session: bool,
    /// The `llm.delta` events of a turn that ended this long ago are compacted (compact-deltas).
    pub compact_deltas_after_secs: u64,
    /// Items (sessions, turns, uploads, dead letters) a periodic job handles per batch.
    pub maintenance_batch_size: u32,
    /// How often each worker sweeps for turns that need recovering.
    pub turn_recovery_interval_ms: u64,
    /// An open turn that has not changed for this long is looked at by the sweep: started if
    /// its workflow never was, recorded as failed if its workflow ended without it.
    pub turn_recovery_quiet_ms: u64,
    /// Largest accepted user message, in bytes.
    pub max_message_bytes: usize,
    /// API keys as `tenant_id:sha256_hex_of_key`, comma separated. Only hashes are stored.
    pub api_keys: String,
    /// Signs stream tokens. Every api process behind one address needs the same secret; when
    /// it is empty each process makes a random one (tokens then work only on the process that
    /// minted them).
    pub stream_token_secret: Secret,
    /// How long a stream token opens its session's stream for.
    pub stream_token_ttl_secs: u64,
    /// Origins a browser UI may call the API from (CORS), comma separated; none by default.
    pub cors_allowed_origins: String,
    /// The Temporal UI's base URL, shown to UIs for links to a turn's workflow; none by default.
    pub temporal_ui_url: String,
    pub log_format: LogFormat,
    /// `tracing` filter, e.g. `info,soma_api=debug`.
    pub log_filter: String,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            listen_addr: "127.0.0.1:20020".into(),
            database_url: Secret::new("postgres://postgres@127.0.0.1:5432/soma"),
            database_max_connections: 20,
            temporal_address: "127.0.0.1:7233".into(),
            temporal_namespace: "default".into(),
            task_queue: "soma-chat".into(),
            eager_start_addr: String::new(),
            llm_base_url: String::new(),
            llm_api_key: Secret::default(),
            llm_model: String::new(),
            llm_stall_timeout_ms: 120_000,
            delta_coalesce_ms: 15,
            max_tool_rounds: 8,
            policy_dir: "ops/policy".into(),
            policy_opa_url: String::new(),
            approval_required_tools: String::new(),
            tool_fetch_allowlist: String::new(),
            tool_hmac_secret: Secret::default(),
            mcp_servers: String::new(),
            memory_backend: MemoryBackendKind::Postgres,
            somabrain_url: String::new(),
            somabrain_token: Secret::default(),
            memory_namespace: "default".into(),
            memory_recall_top_k: 5,
            memory_recall_token_budget: 800,
            memory_recall_timeout_ms: 2_000,
            memory_remember_attachments: true,
            memory_retry_max_interval_secs: 120,
            memory_retry_budget_secs: 2 * 3600,
            admin_api_keys: String::new(),
            clamd_address: "127.0.0.1:3310".into(),
            clamd_stream_max_bytes: 1024 * 1024 * 1024,
            s3_endpoint: String::new(),
            s3_bucket: "soma-attachments".into(),
            s3_region: "us-east-1".into(),
            s3_access_key_id: String::new(),
            s3_secret_access_key: Secret::default(),
            attachment_inline_max_bytes: 1024 * 1024,
            attachment_text_max_bytes: 64 * 1024,
            upload_max_bytes: 2 * 1024 * 1024 * 1024,
            upload_multipart_max_bytes: 32 * 1024 * 1024,
            upload_max_in_progress: 20,
            upload_expiry_secs: 24 * 3600,
            upload_chunk_bytes: 1024 * 1024,
            upload_follow_patience_ms: 30_000,
            schedules: crate::schedules::default_schedules(),
            session_retention_secs: 30 * 24 * 3600,
            forget_memories_with_session: false,
            compact_deltas_after_secs: 3600,
            maintenance_batch_size: 100,
            turn_recovery_interval_ms: 5_000,
            turn_recovery_quiet_ms: 10_000,
            max_message_bytes: 32 * 1024,
            api_keys: String::new(),
            stream_token_secret: Secret::default(),
            stream_token_ttl_secs: 300,
            cors_allowed_origins: String::new(),
            temporal_ui_url: String::new(),
            log_format: LogFormat::Human,
            log_filter: "info".into(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[error("invalid configuration: {0}")]
pub struct ConfigError(String);

impl Config {
    /// Defaults, then `file` (if given), then the environment.
    pub fn load(file: Option<&Path>) -> Result<Self, ConfigError> {
        let mut figment = Figment::from(Serialized::defaults(Config::default()));
        if let Some(file) = file {
            if !file.exists() {
                return Err(ConfigError(format!("config file {} not found", file.display())));
            }
            figment = figment.merge(Toml::file(file));
        }
        let figment = figment
            .merge(
                Env::raw()
                    .only(&["DATABASE_URL", "TEMPORAL_ADDRESS"])
                    .map(|k| k.as_str().to_ascii_lowercase().into()),
            )
            // Only our own keys: other SOMA_* variables (SOMA_API_URL for clients, say) are not
            // configuration of this process.
            .merge(Env::prefixed("SOMA_").filter(|key| Config::is_key(key.as_str())));
        let config: Config = figment.extract().map_err(|e| ConfigError(e.to_string()))?;
        config.validate()?;
        Ok(config)
    }

    fn is_key(key: &str) -> bool {
        let defaults = figment::value::Value::serialize(Config::default());
        defaults
            .ok()
            .and_then(|v| v.into_dict())
            .is_some_and(|dict| dict.contains_key(&key.to_ascii_lowercase()))
    }

    fn validate(&self) -> Result<(), ConfigError> {
        if self.max_message_bytes == 0 {
            return Err(ConfigError("max_message_bytes must be positive".into()));
        }
        if self.stream_token_ttl_secs == 0 {
            return Err(ConfigError("stream_token_ttl_secs must be positive".into()));
        }
        for origin in self.cors_origins() {
            let valid = url::Url::parse(origin).is_ok_and(|u| u.origin().ascii_serialization() == origin);
            if !valid {
                return Err(ConfigError(format!(
                    "cors_allowed_origins: {origin:?} is not an origin (scheme://host[:port], no path)"
                )));
            }
        }
        self.mcp_server_entries()?;
        if self.memory_backend == MemoryBackendKind::Somabrain && url::Url::parse(&self.somabrain_url).is_err() {
            return Err(ConfigError(format!(
                "memory_backend is somabrain but somabrain_url {:?} is not a URL",
                self.somabrain_url
            )));
        }
        if self.forget_memories_with_session && self.memory_backend == MemoryBackendKind::Somabrain {
            return Err(ConfigError(
                "forget_memories_with_session needs memory_backend = postgres: SomaBrain's API cannot delete memories"
                    .into(),
            ));
        }
        if self.memory_retry_budget_secs == 0 || self.memory_retry_max_interval_secs == 0 {
            return Err(ConfigError("memory_retry_budget_secs and memory_retry_max_interval_secs must be positive".into()));
        }
        if self.upload_chunk_bytes == 0 || self.upload_max_in_progress == 0 || self.upload_expiry_secs == 0 {
            return Err(ConfigError(
                "upload_chunk_bytes, upload_max_in_progress and upload_expiry_secs must be positive".into(),
            ));
        }
        crate::schedules::validate(&self.schedules).map_err(ConfigError)?;
        if self.session_retention_secs == 0 || self.maintenance_batch_size == 0 {
            return Err(ConfigError("session_retention_secs and maintenance_batch_size must be positive".into()));
        }
        for entry in self.api_key_entries().chain(self.admin_key_entries()) {
            let (owner, hash) = entry.map_err(ConfigError)?;
            if owner.is_empty() || hash.len() != 64 {
                return Err(ConfigError(format!("api key for {owner:?} is not a sha256")));
            }
        }
        Ok(())
    }

    /// `(name, url)` of each MCP server in `mcp_servers`.
    pub fn mcp_server_entries(&self) -> Result<Vec<(String, String)>, ConfigError> {
        self.mcp_servers
            .split(',')
            .map(str::trim)
            .filter(|e| !e.is_empty())
            .map(|entry| match entry.split_once('=') {
                Some((name, url)) if !name.trim().is_empty() && url::Url::parse(url.trim()).is_ok() => {
                    Ok((name.trim().to_string(), url.trim().to_string()))
                }
                _ => Err(ConfigError(format!("mcp_servers entry {entry:?} is not name=url"))),
            })
            .collect()
    }

    /// Whether the deployment requires approval for `tool` (`approval_required_tools`).
    pub fn requires_approval(&self, tool: &str) -> bool {
        self.approval_required_tool_names().iter().any(|name| name == tool)
    }

    /// The tools in `approval_required_tools`.
    pub fn approval_required_tool_names(&self) -> Vec<String> {
        comma_list(&self.approval_required_tools)
    }

    /// The hosts in `tool_fetch_allowlist`.
    pub fn fetch_allowlist(&self) -> Vec<String> {
        comma_list(&self.tool_fetch_allowlist)
    }

    /// The origins in `cors_allowed_origins`.
    pub fn cors_origins(&self) -> impl Iterator<Item = &str> {
        self.cors_allowed_origins.split(',').map(str::trim).filter(|o| !o.is_empty())
    }

    /// `(tenant_id, sha256_hex)` pairs from `api_keys`.
    pub fn api_key_entries(&self) -> impl Iterator<Item = Result<(&str, &str), String>> {
        key_entries(&self.api_keys, "api_keys", "tenant")
    }

    /// How long memory writes keep trying.
    pub fn memory_retry(&self) -> soma_contract::memory::MemoryRetry {
        soma_contract::memory::MemoryRetry {
            max_interval_secs: self.memory_retry_max_interval_secs,
            budget_secs: self.memory_retry_budget_secs,
        }
    }

    /// `(name, sha256 hex)` of each admin key in `admin_api_keys`.
    pub fn admin_key_entries(&self) -> impl Iterator<Item = Result<(&str, &str), String>> {
        key_entries(&self.admin_api_keys, "admin_api_keys", "name")
    }

    /// The LLM provider's base URL and model, or why the worker cannot run without them.
    pub fn llm_provider(&self) -> Result<(&str, &str), ConfigError> {
        if self.llm_base_url.trim().is_empty() || self.llm_model.trim().is_empty() {
            return Err(ConfigError(
                "no LLM provider configured: set llm_base_url and llm_model (SOMA_LLM_BASE_URL, \
                 SOMA_LLM_MODEL, and SOMA_LLM_API_KEY if it needs a key); `ops/dev up` runs a \
                 keyless dev provider"
                    .into(),
            ));
        }
        Ok((self.llm_base_url.trim(), self.llm_model.trim()))
    }

    /// The effective configuration as TOML, secrets masked, for `--print-config`.
    pub fn to_masked_toml(&self) -> String {
        let Ok(toml::Value::Table(mut table)) = toml::Value::try_from(self) else {
            return String::new();
        };
        // The database URL is shown with only its password masked: host and name help operators.
        table.insert(
            "database_url".into(),
            toml::Value::String(mask_url_password(self.database_url.expose())),
        );
        toml::to_string_pretty(&table).unwrap_or_default()
    }
}

/// The non-empty items of a comma-separated setting.
/// `owner:sha256` entries of a key list (`api_keys`, `admin_api_keys`).
fn key_entries<'a>(
    value: &'a str,
    setting: &'static str,
    owner: &'static str,
) -> impl Iterator<Item = Result<(&'a str, &'a str), String>> {
    value.split(',').map(str::trim).filter(|e| !e.is_empty()).map(move |entry| {
        entry.split_once(':').ok_or_else(|| format!("{setting} entry {entry:?} is not {owner}:sha256"))
    })
}

fn comma_list(value: &str) -> Vec<String> {
    value.split(',').map(str::trim).filter(|item| !item.is_empty()).map(str::to_string).collect()
}

/// `postgres://user:pw@host/db` → `postgres://user:********@host/db`.
pub fn mask_url_password(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut parsed) if parsed.password().is_some() => {
            let _ = parsed.set_password(Some("********"));
            parsed.to_string()
        }
        _ => url.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_never_print() {
        let config = Config { llm_api_key: Secret::new("sk-live-123"), ..Config::default() };
        assert!(!format!("{config:?}").contains("sk-live-123"));
        assert!(!config.to_masked_toml().contains("sk-live-123"));
        assert!(config.to_masked_toml().contains("llm_api_key = \"********\""));
    }

    #[test]
    fn database_password_is_masked_but_host_shown() {
        let config = Config {
            database_url: Secret::new("postgres://app:hunter2@db.internal:5432/soma"),
            ..Config::default()
        };
        let shown = config.to_masked_toml();
        assert!(!shown.contains("hunter2"));
        assert!(shown.contains("db.internal:5432/soma"));
    }

    #[test]
    fn api_keys_must_be_tenant_and_hash() {
        let bad = Config { api_keys: "tenant-without-hash".into(), ..Config::default() };
        assert!(bad.validate().is_err());
        let good = Config { api_keys: format!("acme:{}", "a".repeat(64)), ..Config::default() };
        assert!(good.validate().is_ok());
    }

    #[test]
    fn forgetting_a_sessions_memories_needs_the_built_in_backend() {
        let forget = Config { forget_memories_with_session: true, ..Config::default() };
        assert!(forget.validate().is_ok());
        let brain =
            Config { memory_backend: MemoryBackendKind::Somabrain, somabrain_url: "http://brain:30101".into(), ..forget };
        let err = brain.validate().unwrap_err().to_string();
        assert!(err.contains("forget_memories_with_session"), "{err}");
    }
}
