//! The policy gate: Rego policies evaluated in-process (`regorus`, the files of a policy
//! directory such as `ops/policy/`) or by an external OPA server (`POST {url}/v1/data/soma/allow`),
//! chosen by config. The input is the platform's OPA document `{tenant, persona_id, action,
//! resource, context}` and the decision `data.soma.allow`, so its policies load unchanged.
//! Fail closed: an undefined decision, an evaluation error or an unreachable OPA is a denial.

use std::path::Path;
use std::sync::Mutex;
use std::time::Duration;

use serde::Serialize;
use serde_json::Value;

/// The actions gated.
pub const CONVERSATION_SEND: &str = "conversation.send";
pub const TOOL_EXECUTE: &str = "tool.execute";
pub const MEMORY_WRITE: &str = "memory.write";

/// The document a policy decides on.
#[derive(Debug, Clone, Serialize)]
pub struct PolicyInput<'a> {
    pub tenant: &'a str,
    pub persona_id: Option<&'a str>,
    pub action: &'a str,
    pub resource: &'a str,
    pub context: Value,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    Allow,
    /// Why, in words a user can read.
    Deny(String),
}

pub enum Policy {
    /// Rego files evaluated here.
    Embedded(Mutex<regorus::Engine>),
    /// An OPA server.
    Opa { url: String, http: reqwest::Client },
}

impl Policy {
    /// Loads every `.rego` file of `dir` (Rego v1 syntax, or v0 with `import rego.v1`).
    pub fn from_dir(dir: &Path) -> anyhow::Result<Policy> {
        let mut engine = regorus::Engine::new();
        let mut files: Vec<_> = std::fs::read_dir(dir)
            .map_err(|e| anyhow::anyhow!("policy directory {}: {e}", dir.display()))?
            .filter_map(Result::ok)
            .map(|entry| entry.path())
            .filter(|path| path.extension().is_some_and(|ext| ext == "rego"))
            .collect();
        files.sort();
        anyhow::ensure!(!files.is_empty(), "no .rego files in the policy directory {}", dir.display());
        for file in files {
            let text = std::fs::read_to_string(&file)?;
            engine
                .add_policy(file.display().to_string(), text)
                .map_err(|e| anyhow::anyhow!("policy {}: {e}", file.display()))?;
        }
        Ok(Policy::Embedded(Mutex::new(engine)))
    }

    /// Policies from Rego text (tests).
    pub fn from_rego(name: &str, rego: &str) -> anyhow::Result<Policy> {
        let mut engine = regorus::Engine::new();
        engine.add_policy(name.to_string(), rego.to_string())?;
        Ok(Policy::Embedded(Mutex::new(engine)))
    }

    /// Decisions from the OPA server at `url`.
    pub fn opa(url: &str) -> Policy {
        let http = reqwest::Client::builder().timeout(Duration::from_secs(5)).build().expect("reqwest client builds");
        Policy::Opa { url: url.trim_end_matches('/').to_string(), http }
    }

    /// The decision on `input`; never an error (fail closed).
    pub async fn decide(&self, input: &PolicyInput<'_>) -> Decision {
        let outcome = match self {
            Policy::Embedded(engine) => evaluate(engine, input),
            Policy::Opa { url, http } => ask_opa(http, url, input).await,
        };
        match outcome {
            Ok((true, _)) => Decision::Allow,
            Ok((false, reason)) => Decision::Deny(
                reason.unwrap_or_else(|| format!("{} on {} is not allowed by policy", input.action, input.resource)),
            ),
            Err(err) => {
                tracing::warn!(error = %err, action = input.action, "policy evaluation failed: denying");
                Decision::Deny(format!("the policy could not be evaluated ({err}); denied"))
            }
        }
    }
}

/// `(allow, reason)` from the embedded engine; `data.soma.reason` is optional.
fn evaluate(engine: &Mutex<regorus::Engine>, input: &PolicyInput<'_>) -> anyhow::Result<(bool, Option<String>)> {
    let mut engine = engine.lock().map_err(|_| anyhow::anyhow!("policy engine poisoned"))?;
    let document: regorus::Value = serde_json::from_value(serde_json::to_value(input)?)?;
    engine.set_input(document);
    let allow = match engine.eval_rule("data.soma.allow".to_string())? {
        regorus::Value::Bool(allow) => allow,
        regorus::Value::Undefined => false,
        other => anyhow::bail!("data.soma.allow is not a boolean: {other}"),
    };
    let reason = match engine.eval_rule("data.soma.reason".to_string()) {
        Ok(regorus::Value::String(reason)) => Some(reason.to_string()),
        _ => None,
    };
    Ok((allow, reason))
}

/// OPA's data API: `{"input": …}` → `{"result": true|false}` (no result: undefined, a denial).
async fn ask_opa(http: &reqwest::Client, url: &str, input: &PolicyInput<'_>) -> anyhow::Result<(bool, Option<String>)> {
    let response = http
        .post(format!("{url}/v1/data/soma/allow"))
        .json(&serde_json::json!({ "input": input }))
        .send()
        .await?
        .error_for_status()?;
    let body: Value = response.json().await?;
    match body.get("result") {
        Some(Value::Bool(allow)) => Ok((*allow, None)),
        None => Ok((false, None)),
        Some(other) => anyhow::bail!("OPA answered a non-boolean decision: {other}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn input<'a>(action: &'a str, resource: &'a str) -> PolicyInput<'a> {
        PolicyInput { tenant: "acme", persona_id: None, action, resource, context: Value::Null }
    }

    fn project_policy() -> Policy {
        Policy::from_dir(&Path::new(env!("CARGO_MANIFEST_DIR")).join("../ops/policy")).unwrap()
    }

    #[tokio::test]
    async fn the_shipped_policy_allows_chat_and_tools_but_blocked_ones() {
        let policy = project_policy();
        assert_eq!(policy.decide(&input(CONVERSATION_SEND, "s")).await, Decision::Allow);
        assert_eq!(policy.decide(&input(TOOL_EXECUTE, "calculator")).await, Decision::Allow);
        let Decision::Deny(reason) = policy.decide(&input(TOOL_EXECUTE, "forbidden_tool")).await else {
            panic!("a blocked tool is denied")
        };
        assert!(reason.contains("blocked by policy"), "{reason}");
        assert!(matches!(policy.decide(&input("memory.delete", "x")).await, Decision::Deny(_)));
    }

    #[tokio::test]
    async fn an_undefined_or_broken_decision_denies() {
        let undefined = Policy::from_rego("p.rego", "package soma\nimport rego.v1\nx := 1").unwrap();
        assert!(matches!(undefined.decide(&input(CONVERSATION_SEND, "s")).await, Decision::Deny(_)));
        let not_bool = Policy::from_rego("p.rego", "package soma\nimport rego.v1\nallow := \"yes\"").unwrap();
        let Decision::Deny(reason) = not_bool.decide(&input(CONVERSATION_SEND, "s")).await else { panic!() };
        assert!(reason.contains("could not be evaluated"), "{reason}");
        let unreachable = Policy::opa("http://127.0.0.1:9");
        assert!(matches!(unreachable.decide(&input(CONVERSATION_SEND, "s")).await, Decision::Deny(_)));
    }
}
