//! What an operator filters and reads workflows by in the Temporal UI and `temporal workflow
//! list`: the search attributes `TenantId`, `SessionId`, `SomaKind` (registered by the api and
//! the worker at start) and a memo with the request ID and a one-line summary.

use temporalio_common::search_attributes::{SearchAttributeKey, SearchAttributeUpdate, SearchAttributes};
use temporalio_common::MemoValues;
use uuid::Uuid;

use soma_contract::WorkKind;
use soma_contract::refs::search_attributes as names;

const TENANT_ID: SearchAttributeKey<String> = SearchAttributeKey::keyword(names::TENANT_ID);
const SESSION_ID: SearchAttributeKey<String> = SearchAttributeKey::keyword(names::SESSION_ID);
const SOMA_KIND: SearchAttributeKey<String> = SearchAttributeKey::keyword(names::SOMA_KIND);

/// Characters of a summary (the UI shows one line).
const SUMMARY_CHARS: usize = 80;

/// The search attributes of a workflow doing `kind` for a tenant (and a session, if any).
pub fn search_attributes(kind: WorkKind, tenant_id: &str, session_id: Option<Uuid>) -> SearchAttributes {
    let mut updates = vec![SOMA_KIND.value_set(kind.as_str().to_string()), TENANT_ID.value_set(tenant_id.to_string())];
    if let Some(session_id) = session_id {
        updates.push(SESSION_ID.value_set(session_id.to_string()));
    }
    SearchAttributes::new(updates)
}

/// Only `SomaKind`: for work that belongs to no tenant (the periodic jobs).
pub fn kind_only(kind: WorkKind) -> Vec<SearchAttributeUpdate> {
    vec![SOMA_KIND.value_set(kind.as_str().to_string())]
}

/// The memo: the request that caused the work and what it is about, in one short line (the
/// first words of a message, a tool's name, a file's name).
pub fn memo(request_id: &str, summary: &str) -> MemoValues {
    let line = summary.split_whitespace().collect::<Vec<_>>().join(" ");
    let mut short: String = line.chars().take(SUMMARY_CHARS).collect();
    if short.len() < line.len() {
        short.push('…');
    }
    let mut memo = MemoValues::new();
    memo.insert("request_id", request_id.to_string());
    memo.insert("summary", short);
    memo
}
