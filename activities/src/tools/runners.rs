//! The code that runs a tool, by kind: the built-ins, HTTP tools (inputs POSTed as JSON,
//! signed with HMAC) and MCP tools (`rmcp`, streamable HTTP). Each returns the output as text,
//! or a [`ToolError`] that says whether trying again may help.

use std::collections::HashMap;
use std::time::Duration;

use hmac::{Hmac, Mac};
use serde_json::{Value, json};
use sha2::Sha256;

use soma_contract::ToolKind;
use soma_core::MemoryBackend;
use soma_core::store::CatalogTool;

/// Largest output kept, in bytes; longer ones are cut (and say so).
pub const MAX_OUTPUT_BYTES: usize = 4 * 1024 * 1024;
/// Largest body `http_fetch` reads.
const FETCH_MAX_BYTES: usize = 256 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum ToolError {
    /// Worth retrying within the tool's profile: connection trouble, 429, 5xx.
    #[error("tool unavailable: {0}")]
    Transient(String),
    /// Retrying will not help: the tool refused the inputs or failed on them.
    #[error("{0}")]
    Permanent(String),
}

impl crate::failure::Failure for ToolError {
    fn is_transient(&self) -> bool {
        matches!(self, ToolError::Transient(_))
    }
}

/// What the tools need from the deployment.
#[derive(Debug, Clone, Default)]
pub struct ToolSettings {
    /// Hosts `http_fetch` may reach (exact names; none by default, so it reaches nothing).
    pub fetch_allowlist: Vec<String>,
    /// Signs the requests of HTTP tools.
    pub hmac_secret: String,
    /// MCP servers by name: their streamable HTTP URLs.
    pub mcp_servers: HashMap<String, String>,
    /// Tools that always need approval here, whatever the catalog says.
    pub approval_required: Vec<String>,
}

/// The built-in tools' catalog entries.
pub fn builtin_catalog() -> Vec<CatalogTool> {
    vec![
        CatalogTool::builtin(
            "calculator",
            "Evaluates an arithmetic expression (+ - * / ^, parentheses, sqrt, sin, cos, ln, exp…) and returns the number.",
            json!({"type": "object", "properties": {"expression": {"type": "string", "maxLength": 1000,
                   "description": "e.g. 17*23 or sqrt(2)^2"}}, "required": ["expression"], "additionalProperties": false}),
        ),
        CatalogTool::builtin(
            "current_time",
            "Returns the current date and time in UTC (RFC 3339).",
            json!({"type": "object", "properties": {}, "additionalProperties": false}),
        ),
        CatalogTool::builtin(
            "memory_recall",
            "Recalls what the user said in earlier conversations that is relevant to a query (the tenant's memory).",
            json!({"type": "object", "properties": {"query": {"type": "string", "minLength": 1, "maxLength": 1000},
                   "top_k": {"type": "integer", "minimum": 1, "maximum": 20}}, "required": ["query"],
                   "additionalProperties": false}),
        ),
        CatalogTool::builtin(
            "http_fetch",
            "Fetches a web page or API response with GET (only hosts the deployment allows; at most 256 KiB).",
            json!({"type": "object", "properties": {"url": {"type": "string", "format": "uri", "maxLength": 2000}},
                   "required": ["url"], "additionalProperties": false}),
        ),
    ]
}

/// Whether `tool` runs inside the worker in microseconds, calling nothing (the calculator, the
/// clock): such a call needs no heartbeats and is run as a local activity, with no server
/// round trip.
pub fn is_instant(tool: &CatalogTool) -> bool {
    tool.kind == ToolKind::Builtin && matches!(tool.name.as_str(), "calculator" | "current_time")
}

/// What a tool runs with: the deployment's settings and the clients the tools share.
pub struct Clients<'a> {
    pub settings: &'a ToolSettings,
    pub http: &'a reqwest::Client,
    /// For `memory_recall`.
    pub memory: &'a MemoryBackend,
}

/// One call: whose it is, its idempotency key (the call's ID), and how long it may take.
pub struct Call<'a> {
    pub tenant_id: &'a str,
    pub idempotency_key: &'a str,
    pub timeout: Duration,
}

/// Runs `tool` on `inputs` (already checked against its schema).
pub async fn run(clients: &Clients<'_>, tool: &CatalogTool, inputs: &Value, call: &Call<'_>) -> Result<String, ToolError> {
    let (settings, http, idempotency_key, timeout) = (clients.settings, clients.http, call.idempotency_key, call.timeout);
    let output = match tool.kind {
        ToolKind::Builtin => run_builtin(clients, tool, inputs, call).await?,
        ToolKind::Http => run_http(settings, http, tool, inputs, idempotency_key, timeout).await?,
        ToolKind::Mcp => run_mcp(settings, tool, inputs).await?,
    };
    Ok(cut(output))
}

fn cut(output: String) -> String {
    match super::preview(&output, MAX_OUTPUT_BYTES) {
        (kept, true) => kept + "\n[output cut at 4 MiB]",
        (_, false) => output,
    }
}

async fn run_builtin(clients: &Clients<'_>, tool: &CatalogTool, inputs: &Value, call: &Call<'_>) -> Result<String, ToolError> {
    let (settings, timeout) = (clients.settings, call.timeout);
    match tool.name.as_str() {
        "calculator" => {
            let expression = inputs.get("expression").and_then(Value::as_str).unwrap_or_default();
            calculate(expression)
        }
        "current_time" => Ok(chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true)),
        "http_fetch" => {
            let url = inputs.get("url").and_then(Value::as_str).unwrap_or_default();
            fetch(&settings.fetch_allowlist, url, timeout).await
        }
        "memory_recall" => {
            let query = inputs.get("query").and_then(Value::as_str).unwrap_or_default();
            let top_k = inputs.get("top_k").and_then(Value::as_u64).unwrap_or(5).clamp(1, 20) as u32;
            recall(clients.memory, call.tenant_id, query, top_k).await
        }
        other => Err(ToolError::Permanent(format!("no built-in tool is called {other}"))),
    }
}

/// The tenant's memories relevant to `query`, one per line, best first.
async fn recall(memory: &MemoryBackend, tenant_id: &str, query: &str, top_k: u32) -> Result<String, ToolError> {
    let recalled = memory.recall(tenant_id, query, None, top_k).await.map_err(|err| {
        if err.is_transient() { ToolError::Transient(err.to_string()) } else { ToolError::Permanent(err.to_string()) }
    })?;
    if recalled.hits.is_empty() {
        return Ok(format!("Nothing remembered matches {query:?}."));
    }
    let lines: Vec<String> =
        recalled.hits.iter().map(|hit| format!("- ({:.2}) {}", hit.score, hit.content.replace('\n', " "))).collect();
    let degraded = if recalled.degraded { "\n(memory answered from part of its storage)" } else { "" };
    Ok(format!("{}{degraded}", lines.join("\n")))
}

/// Arithmetic only (`exmex`): no variables, no code.
pub fn calculate(expression: &str) -> Result<String, ToolError> {
    let value = exmex::eval_str::<f64>(expression)
        .map_err(|e| ToolError::Permanent(format!("cannot evaluate {expression:?}: {e}")))?;
    if !value.is_finite() {
        return Err(ToolError::Permanent(format!("{expression} is not a finite number")));
    }
    Ok(if value.fract() == 0.0 && value.abs() < 1e15 { format!("{}", value as i64) } else { format!("{value}") })
}

fn host_allowed(allowlist: &[String], url: &url::Url) -> bool {
    matches!(url.scheme(), "http" | "https")
        && url.host_str().is_some_and(|host| allowlist.iter().any(|allowed| allowed.eq_ignore_ascii_case(host)))
}

/// GET within the allowlist; redirects are followed only to allowed hosts.
async fn fetch(allowlist: &[String], url: &str, timeout: Duration) -> Result<String, ToolError> {
    let parsed = url::Url::parse(url).map_err(|e| ToolError::Permanent(format!("not a URL: {e}")))?;
    if !host_allowed(allowlist, &parsed) {
        return Err(ToolError::Permanent(format!(
            "{} is not on this deployment's egress allowlist",
            parsed.host_str().unwrap_or(url)
        )));
    }
    let allowed = allowlist.to_vec();
    let client = reqwest::Client::builder()
        .timeout(timeout)
        .redirect(reqwest::redirect::Policy::custom(move |attempt| {
            if attempt.previous().len() >= 5 {
                attempt.error("too many redirects")
            } else if host_allowed(&allowed, attempt.url()) {
                attempt.follow()
            } else {
                attempt.error("a redirect left the egress allowlist")
            }
        }))
        .build()
        .map_err(|e| ToolError::Transient(e.to_string()))?;
    let response = client.get(parsed).send().await.map_err(|e| {
        if e.is_redirect() { ToolError::Permanent(e.to_string()) } else { ToolError::Transient(e.to_string()) }
    })?;
    let status = response.status();
    let body = read_limited(response, FETCH_MAX_BYTES).await?;
    if status.is_server_error() || status.as_u16() == 429 {
        return Err(ToolError::Transient(format!("HTTP {status}")));
    }
    Ok(format!("HTTP {status}\n\n{body}"))
}

async fn read_limited(mut response: reqwest::Response, limit: usize) -> Result<String, ToolError> {
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(|e| ToolError::Transient(e.to_string()))? {
        body.extend_from_slice(&chunk);
        if body.len() > limit {
            body.truncate(limit);
            let mut text = String::from_utf8_lossy(&body).into_owned();
            text.push_str(&format!("\n[cut at {} KiB]", limit / 1024));
            return Ok(text);
        }
    }
    Ok(String::from_utf8_lossy(&body).into_owned())
}

/// The signature header of an HTTP tool's request: `sha256=` and the hex HMAC-SHA256 of
/// `{timestamp}.{body}` under the deployment's secret. Endpoints recompute it to check.
pub fn sign(secret: &str, timestamp: i64, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("HMAC takes any key");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

pub const SIGNATURE_HEADER: &str = "X-Soma-Signature";
pub const TIMESTAMP_HEADER: &str = "X-Soma-Timestamp";

async fn run_http(
    settings: &ToolSettings,
    http: &reqwest::Client,
    tool: &CatalogTool,
    inputs: &Value,
    idempotency_key: &str,
    timeout: Duration,
) -> Result<String, ToolError> {
    let endpoint = tool.endpoint.as_deref().ok_or_else(|| ToolError::Permanent("the tool has no endpoint".into()))?;
    let body = serde_json::to_vec(inputs).map_err(|e| ToolError::Permanent(e.to_string()))?;
    let timestamp = chrono::Utc::now().timestamp();
    let response = http
        .post(endpoint)
        .timeout(timeout)
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .header("Idempotency-Key", idempotency_key)
        .header(TIMESTAMP_HEADER, timestamp)
        .header(SIGNATURE_HEADER, sign(&settings.hmac_secret, timestamp, &body))
        .body(body)
        .send()
        .await
        .map_err(|e| ToolError::Transient(e.to_string()))?;
    let status = response.status();
    let text = read_limited(response, MAX_OUTPUT_BYTES).await?;
    if status.is_success() {
        Ok(text)
    } else if status.is_server_error() || status.as_u16() == 429 || status.as_u16() == 408 {
        Err(ToolError::Transient(format!("HTTP {status}: {}", text.chars().take(300).collect::<String>())))
    } else {
        Err(ToolError::Permanent(format!("the tool refused: HTTP {status}: {}", text.chars().take(300).collect::<String>())))
    }
}

async fn run_mcp(settings: &ToolSettings, tool: &CatalogTool, inputs: &Value) -> Result<String, ToolError> {
    use rmcp::ServiceExt;
    use rmcp::model::CallToolRequestParams;
    use rmcp::transport::StreamableHttpClientTransport;

    let server = tool.endpoint.as_deref().unwrap_or_default();
    let url = settings
        .mcp_servers
        .get(server)
        .ok_or_else(|| ToolError::Permanent(format!("the MCP server {server} is not configured")))?;
    let remote = tool.remote_name.clone().unwrap_or_default();
    let transport = StreamableHttpClientTransport::from_uri(url.as_str());
    let client = ().serve(transport).await.map_err(|e| ToolError::Transient(format!("MCP server {server}: {e}")))?;
    let arguments = inputs.as_object().cloned().unwrap_or_default();
    let result = client.call_tool(CallToolRequestParams::new(remote).with_arguments(arguments)).await;
    let _ = client.cancel().await;
    let result = result.map_err(|e| ToolError::Transient(format!("MCP server {server}: {e}")))?;
    let text: Vec<String> = result.content.iter().filter_map(|c| c.as_text().map(|t| t.text.clone())).collect();
    let text = text.join("\n");
    if result.is_error == Some(true) { Err(ToolError::Permanent(text)) } else { Ok(text) }
}

/// The tools of every configured MCP server, as catalog entries named `{server}__{tool}`, per
/// server (or why it could not be listed).
pub async fn mcp_catalog(settings: &ToolSettings) -> Vec<(String, Result<Vec<CatalogTool>, String>)> {
    use rmcp::ServiceExt;
    use rmcp::transport::StreamableHttpClientTransport;

    let mut listings = Vec::new();
    for (server, url) in &settings.mcp_servers {
        let listed = async {
            let client = ().serve(StreamableHttpClientTransport::from_uri(url.as_str())).await?;
            let tools = client.list_all_tools().await;
            let _ = client.cancel().await;
            anyhow::Ok(tools?)
        }
        .await;
        let listing = listed
            .map(|tools| {
                tools
                    .into_iter()
                    .map(|tool| {
                        let mut entry = CatalogTool::builtin(
                            &format!("{server}__{}", tool.name),
                            tool.description.as_deref().unwrap_or(""),
                            Value::Object((*tool.input_schema).clone()),
                        );
                        entry.kind = ToolKind::Mcp;
                        entry.endpoint = Some(server.clone());
                        entry.remote_name = Some(tool.name.to_string());
                        entry
                    })
                    .collect()
            })
            .map_err(|err| {
                tracing::warn!(%server, %url, error = %err, "could not list the MCP server's tools");
                format!("{err:#}")
            });
        listings.push((server.clone(), listing));
    }
    listings
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_calculator_does_arithmetic_and_nothing_else() {
        assert_eq!(calculate("17*23").unwrap(), "391");
        assert_eq!(calculate("2^10 + sqrt(16)").unwrap(), "1028");
        assert_eq!(calculate("1/4").unwrap(), "0.25");
        assert!(calculate("x + 1").is_err());
        assert!(calculate("1/0").is_err());
        assert!(calculate("system(\"ls\")").is_err());
    }

    #[test]
    fn the_allowlist_is_exact_and_http_only() {
        let allow = vec!["example.com".to_string()];
        assert!(host_allowed(&allow, &url::Url::parse("https://example.com/a").unwrap()));
        assert!(!host_allowed(&allow, &url::Url::parse("https://evil.example.com/").unwrap()));
        assert!(!host_allowed(&allow, &url::Url::parse("file:///etc/passwd").unwrap()));
    }
}
